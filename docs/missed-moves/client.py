import socket, sys, time
rounds = int(sys.argv[1]); per = 2
ports = []
for r in range(rounds):
    cs = [socket.create_connection(("127.0.0.1", 9003)) for _ in range(per)]
    for c in cs:
        ports.append(c.getsockname()[1]); c.close()
    time.sleep(0.005)
print(" ".join(map(str, ports)))

import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9003)); s.listen(4096)
held = []
print("listening", flush=True)
while True:
    c, _ = s.accept(); held.append(c)

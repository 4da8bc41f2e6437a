//! The peer programs the tests drive: this same test binary, started inside a test's
//! namespace with `PORTX_TEST_PEER=<role>`, so clients and servers are real processes
//! with their own pids. Each prints `ready`, waits for `go` on stdin, acts, reports on
//! stdout, and exits when stdin closes (or when its role is done).

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub const ROLE_ENV: &str = "PORTX_TEST_PEER";

/// Upper bound on connections any role opens.
const MAX_CONNECTIONS: usize = 20_000;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_for_go() {
    say("ready");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn wait_for_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or_else(|| {
        eprintln!("peer: missing argument {i}");
        std::process::exit(2)
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| {
        eprintln!("peer: bad address {s}: {e}");
        std::process::exit(2)
    })
}

/// Runs the role named in the environment; returns false when not a peer.
pub fn run_if_peer() -> bool {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return false;
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    wait_for_go();
    match role.as_str() {
        // Listens on ADDR, then connects to it until connect() fails or MAX
        // connections, holding every connection open until stdin closes.
        "exhaust" => {
            let target = addr(arg(&args, 0));
            let max: usize = arg(&args, 1).parse().unwrap_or(64).min(MAX_CONNECTIONS);
            let _listener = TcpListener::bind(target).expect("listen");
            let mut held = Vec::new();
            for _ in 0..max {
                match TcpStream::connect(target) {
                    Ok(s) => {
                        say(&format!("port {}", s.local_addr().expect("local").port()));
                        held.push(s);
                    }
                    Err(e) => {
                        say(&format!("error {}", errno(&e)));
                        break;
                    }
                }
            }
            say("done");
            wait_for_eof();
        }
        // connect()s B times blocking, then N times non-blocking, to ADDR where nothing
        // listens (IPv4); says `done R S`: R blocking calls refused, S non-blocking
        // ones that returned EINPROGRESS and were then refused.
        "refused" => {
            let target = addr(arg(&args, 0));
            let blocking: usize = arg(&args, 1).parse().unwrap_or(0).min(MAX_CONNECTIONS);
            let nonblocking: usize = arg(&args, 2).parse().unwrap_or(0).min(MAX_CONNECTIONS);
            let refused = (0..blocking)
                .filter(|_| {
                    TcpStream::connect(target).is_err_and(|e| errno(&e) == libc::ECONNREFUSED)
                })
                .count();
            let later = (0..nonblocking)
                .filter(|_| nonblocking_refused(target))
                .count();
            say(&format!("done {refused} {later}"));
        }
        // Listens on OK, then connect()s one socket to REFUSED (nothing listens) and,
        // refused, the same socket again to OK; says `refused`, then `port N` of the
        // second attempt (IPv4).
        "reconnect" => {
            let ok = addr(arg(&args, 0));
            let refused = addr(arg(&args, 1));
            let _listener = TcpListener::bind(ok).expect("listen");
            match reconnect(refused, ok) {
                Some(port) => {
                    say("refused");
                    say(&format!("port {port}"));
                }
                None => say("error"),
            }
            wait_for_eof();
        }
        // `refused_then_full OK REFUSED`: listens on OK; connects one socket to REFUSED
        // (nothing listens there: refused, its port released), then others to OK,
        // holding each, until connect() fails; then the first socket to OK again. Says
        // `refused`, `held N` and `error E` of that last connect() (IPv4).
        "refused_then_full" => {
            let ok = addr(arg(&args, 0));
            let refused = addr(arg(&args, 1));
            let _listener = TcpListener::bind(ok).expect("listen");
            let (SocketAddr::V4(ok_v4), SocketAddr::V4(refused_v4)) = (ok, refused) else {
                eprintln!("peer: refused_then_full takes IPv4 addresses");
                std::process::exit(2)
            };
            // SAFETY: socket() has no memory arguments; the fd is this role's.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "socket");
            if connect_v4(fd, refused_v4) != Err(libc::ECONNREFUSED) {
                say("error");
                return true;
            }
            say("refused");
            let held: Vec<TcpStream> = std::iter::from_fn(|| TcpStream::connect(ok).ok())
                .take(64)
                .collect();
            say(&format!("held {}", held.len()));
            let again = connect_v4(fd, ok_v4).err().unwrap_or(0);
            say(&format!("error {again}"));
            wait_for_eof();
            // SAFETY: closing this role's own socket.
            unsafe { libc::close(fd) };
        }
        // `elsewhere ADDR NETNS`: in its namespace, listens on ADDR, makes a socket it
        // does not connect yet, and says `listening`; on the next line on stdin, moves
        // to the namespace of the file NETNS and says `moved`, so that only its sockets
        // keep the first one alive; on the next, connects that socket to ADDR (in the
        // socket's own namespace) and says `port N` (IPv4).
        "elsewhere" => {
            let target = addr(arg(&args, 0));
            let _listener = TcpListener::bind(target).expect("listen");
            let SocketAddr::V4(v4) = target else {
                eprintln!("peer: elsewhere takes an IPv4 address");
                std::process::exit(2)
            };
            // SAFETY: socket() has no memory arguments; the fd is this role's.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "socket");
            say("listening");
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let host = std::fs::File::open(arg(&args, 1)).expect("open the other netns");
            // SAFETY: setns() on an open namespace file.
            let moved =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&host), libc::CLONE_NEWNET) };
            assert_eq!(moved, 0, "setns");
            say("moved");
            line.clear();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let port = connect_v4(fd, v4).ok().and_then(|()| local_port(fd));
            match port {
                Some(p) => say(&format!("port {p}")),
                None => say("error"),
            }
            wait_for_eof();
            // SAFETY: closing this role's own socket.
            unsafe { libc::close(fd) };
        }
        // bind()s ADDR and reports the result.
        "bind" => {
            match TcpListener::bind(addr(arg(&args, 0))) {
                Ok(l) => say(&format!("bound {}", l.local_addr().expect("local").port())),
                Err(e) => say(&format!("error {}", errno(&e))),
            }
            wait_for_eof();
        }
        // Accepts one connection on ADDR, reads it to EOF, then closes (passive close).
        "server" => {
            let listener = TcpListener::bind(addr(arg(&args, 0))).expect("listen");
            say("listening");
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = Vec::new();
            conn.read_to_end(&mut buf).expect("read");
            drop(conn);
            drop(listener);
            say("closed");
        }
        // Connects to ADDR, writes, and closes first (active close).
        "client" => {
            let mut s = TcpStream::connect(addr(arg(&args, 0))).expect("connect");
            say(&format!("port {}", s.local_addr().expect("local").port()));
            s.write_all(b"hello").expect("write");
            drop(s);
            say("closed");
        }
        // N short connections to a listener of its own on ADDR: connect, accept,
        // client closes, server closes.
        "burst" => {
            let target = addr(arg(&args, 0));
            let n: usize = arg(&args, 1).parse().unwrap_or(0).min(MAX_CONNECTIONS);
            let listener = TcpListener::bind(target).expect("listen");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut done = 0;
            while done < n && std::time::Instant::now() < deadline {
                let c = TcpStream::connect(target).expect("connect");
                let (mut s, _) = listener.accept().expect("accept");
                // The client closes first and the server only after reading EOF, so
                // the client ends in TIME_WAIT (not a simultaneous close via CLOSING).
                drop(c);
                let _ = s.read(&mut [0u8; 1]);
                drop(s);
                done += 1;
            }
            say(&format!("done {done}"));
        }
        // N short connections to a listener of its own on ADDR, its two ends on two
        // threads (so on both CPUs, as in a real client and server): the client
        // sends a byte, reads it back and closes first; the server then reads to EOF
        // and closes, and the client's socket goes to TIME_WAIT on the server's CPU.
        // Where the range is full of TIME_WAIT too young to reuse, it waits.
        "churn" => {
            let target = addr(arg(&args, 0));
            let n: usize = arg(&args, 1).parse().unwrap_or(0).min(MAX_CONNECTIONS);
            let listener = TcpListener::bind(target).expect("listen");
            std::thread::spawn(move || {
                for conn in listener.incoming().take(n) {
                    let Ok(mut conn) = conn else { break };
                    let mut b = [0u8; 1];
                    if conn.read_exact(&mut b).is_ok() {
                        let _ = conn.write_all(&b);
                    }
                    let _ = conn.read_to_end(&mut Vec::new());
                }
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut done = 0;
            while done < n && Instant::now() < deadline {
                let mut c = match TcpStream::connect(target) {
                    Ok(c) => c,
                    // Every port of the range in TIME_WAIT too young to reuse: back off.
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("connect: {e}"),
                };
                c.write_all(&[1]).expect("write");
                let _ = c.read_exact(&mut [0u8; 1]);
                drop(c);
                done += 1;
            }
            say(&format!("done {done}"));
        }
        // Serves every ADDR: accepts connections, reads each to EOF, then closes it
        // (so clients that close first end in TIME_WAIT). Runs until stdin closes.
        "serve" => serve_each(&args, read_to_eof),
        // `serve` on one ADDR, listening with a backlog of 0 (`listen(fd, 0)`), which
        // its accepted sockets inherit.
        "serve-backlog0" => {
            let listener = listen_with_backlog(addr(arg(&args, 0)), 0);
            serve_on(listener, read_to_eof);
            say("listening");
            wait_for_eof();
        }
        // Accepts connections on ADDR and keeps them open, unread, until stdin closes:
        // its clients' active closes end as orphans in FIN_WAIT2.
        "sink" => {
            let listener = TcpListener::bind(addr(arg(&args, 0))).expect("listen");
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for conn in listener.incoming().take(MAX_CONNECTIONS) {
                    let Ok(conn) = conn else { break };
                    held.push(conn);
                }
            });
            say("listening");
            wait_for_eof();
        }
        // Opens COUNT connections to ADDR and closes the first CLOSE of them (active
        // close), holding the rest until stdin closes.
        "hold" => {
            let target = addr(arg(&args, 0));
            let count: usize = arg(&args, 1).parse().unwrap_or(0).min(MAX_CONNECTIONS);
            let close: usize = arg(&args, 2).parse().unwrap_or(0);
            let mut held: Vec<TcpStream> = (0..count)
                .map(|_| TcpStream::connect(target).expect("connect"))
                .collect();
            // Names the local ports it closed: a later connect may legitimately take
            // one over from TIME_WAIT (tcp_tw_reuse), so tests check them against ss.
            let closed: Vec<String> = held
                .drain(..close.min(count))
                .filter_map(|s| s.local_addr().ok())
                .map(|a| a.port().to_string())
                .collect();
            say(&format!("done {}", closed.join(",")));
            wait_for_eof();
        }
        // Serves every ADDR: echoes what each connection sends until it reads EOF, then
        // closes (so a client that closes first ends in TIME_WAIT). Until stdin closes.
        "echo" => serve_each(&args, |mut conn| {
            let _ = conn.set_nodelay(true);
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }),
        // `paced ADDR N MS`: listens on ADDR (its side of each connection held until
        // the client closes), then connects to it every MS milliseconds, holding each,
        // until stdin closes or after N (fewer if its descriptors would run out); says
        // `at S E` for each connect(): when it was called and when it returned
        // (CLOCK_REALTIME, nanoseconds since the epoch), then `done`.
        "paced" => {
            let target = addr(arg(&args, 0));
            let n: usize = arg(&args, 1).parse().unwrap_or(0).min(MAX_CONNECTIONS);
            let pace = Duration::from_millis(arg(&args, 2).parse().unwrap_or(5));
            // Two descriptors per connection: the client's and the accepted one.
            let n = n.min(raise_fd_limit().saturating_sub(64) / 2);
            static STOP: AtomicBool = AtomicBool::new(false);
            std::thread::spawn(|| {
                wait_for_eof();
                STOP.store(true, Ordering::Relaxed);
            });
            serve_on(TcpListener::bind(target).expect("listen"), read_to_eof);
            let mut held = Vec::with_capacity(n);
            let start = Instant::now();
            for i in 1..=n {
                if STOP.load(Ordering::Relaxed) {
                    break;
                }
                let now = || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                };
                let called = now();
                held.push(TcpStream::connect(target).expect("connect"));
                say(&format!("at {called} {}", now()));
                // On a schedule: a slow connect() does not shift the ones after it.
                let next = start + pace * u32::try_from(i).unwrap_or(u32::MAX);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            say("done");
        }
        "requests" => requests(&args),
        other => {
            eprintln!("peer: unknown role {other}");
            std::process::exit(2);
        }
    }
    true
}

/// Listens on every address in `addrs`, runs `handle` on a thread of its own for each
/// connection, says `listening`, and returns when stdin closes.
fn serve_each(addrs: &[String], handle: fn(TcpStream)) {
    for a in addrs {
        serve_on(TcpListener::bind(addr(a)).expect("listen"), handle);
    }
    say("listening");
    wait_for_eof();
}

/// Reads a connection to its end, then drops it (closes).
fn read_to_eof(mut conn: TcpStream) {
    let _ = conn.read_to_end(&mut Vec::new());
}

/// Raises this process's soft limit on open descriptors to its hard limit; returns the
/// limit now in force.
fn raise_fd_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            ..lim
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            lim = raised;
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Accepts connections on `listener` in a thread of its own, each handled in another.
fn serve_on(listener: TcpListener, handle: fn(TcpStream)) {
    std::thread::spawn(move || {
        for conn in listener.incoming().take(MAX_CONNECTIONS) {
            let Ok(conn) = conn else { break };
            std::thread::spawn(move || handle(conn));
        }
    });
}

/// A listener on the IPv4 `at` with the given backlog (std's `bind` always asks 128).
fn listen_with_backlog(at: SocketAddr, backlog: i32) -> TcpListener {
    let SocketAddr::V4(v4) = at else {
        panic!("listen_with_backlog: IPv4 only, got {at}")
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it hands it
    // to TcpListener.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sa = sockaddr_in(v4);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert!(
            libc::bind(fd, (&raw const sa).cast(), len) == 0,
            "bind {at}: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            libc::listen(fd, backlog) == 0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        std::os::fd::FromRawFd::from_raw_fd(fd)
    }
}

/// `requests ADDR RATE SECS WORKERS MODE`: RATE one-byte requests a second in all
/// (each waits for its echo), spread over WORKERS threads, for SECS or until a
/// connect() fails. MODE `close`: a connection per request, closed by the client
/// first; `keepalive`: one connection per worker for all its requests; `leak`: a
/// connection per request, never closed. Reports `done requests=N connects=N
/// elapsed_ms=N errno=E error_ms=N` (errno and error_ms 0 without a failure), then
/// holds what it kept open until stdin closes.
fn requests(args: &[String]) {
    let target = addr(arg(args, 0));
    let num = |i: usize| -> f64 {
        arg(args, i).parse().unwrap_or_else(|e| {
            eprintln!("peer: bad number {}: {e}", arg(args, i));
            std::process::exit(2)
        })
    };
    let (rate, secs, workers) = (num(1), num(2), num(3).max(1.0) as usize);
    let mode = arg(args, 4).to_owned();
    let start = Instant::now();
    let run_for = Duration::from_secs_f64(secs);
    let stop = AtomicBool::new(false);
    let (requests, connects) = (AtomicU64::new(0), AtomicU64::new(0));
    // The first failure: (errno, ms after start).
    let failure: Mutex<Option<(i32, u128)>> = Mutex::new(None);
    let fail = |e: std::io::Error| {
        failure
            .lock()
            .unwrap()
            .get_or_insert((errno(&e), start.elapsed().as_millis()));
        stop.store(true, Ordering::Relaxed);
    };
    let kept: Vec<TcpStream> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (mode, stop, requests, connects, fail) =
                    (&mode, &stop, &requests, &connects, &fail);
                scope.spawn(move || {
                    let mut kept = Vec::new();
                    let mut conn: Option<TcpStream> = None;
                    // This worker's share of the rate, its start staggered among the others.
                    let every = workers as f64 / rate;
                    for i in 0..MAX_CONNECTIONS {
                        let due = start
                            + Duration::from_secs_f64(
                                every * (i as f64 + w as f64 / workers as f64),
                            );
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        if stop.load(Ordering::Relaxed) || start.elapsed() >= run_for {
                            break;
                        }
                        let mut s = match conn.take() {
                            Some(s) => s,
                            None => match TcpStream::connect(target) {
                                Ok(s) => {
                                    connects.fetch_add(1, Ordering::Relaxed);
                                    s
                                }
                                Err(e) => {
                                    fail(e);
                                    break;
                                }
                            },
                        };
                        let _ = s.set_nodelay(true);
                        let mut echo = [0u8; 1];
                        if let Err(e) = s.write_all(b"q").and_then(|()| s.read_exact(&mut echo)) {
                            fail(e);
                            break;
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                        match mode.as_str() {
                            "keepalive" => conn = Some(s),
                            "leak" => kept.push(s),
                            // Dropped: the client's close comes first.
                            _ => {}
                        }
                    }
                    kept.extend(conn);
                    kept
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    let (errno, error_ms) = failure.lock().unwrap().unwrap_or((0, 0));
    say(&format!(
        "done requests={} connects={} elapsed_ms={} errno={errno} error_ms={error_ms}",
        requests.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed),
        start.elapsed().as_millis()
    ));
    wait_for_eof();
    drop(kept);
}

/// `v4` as the kernel takes it.
fn sockaddr_in(v4: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// connect() of the raw socket `fd` to `to`: the errno on failure.
fn connect_v4(fd: libc::c_int, to: std::net::SocketAddrV4) -> Result<(), i32> {
    let sin = sockaddr_in(to);
    // SAFETY: connect() with a pointer to a local that outlives the call.
    let ret = unsafe {
        libc::connect(
            fd,
            std::ptr::from_ref(&sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

/// The local port of the IPv4 socket `fd` (getsockname).
fn local_port(fd: libc::c_int) -> Option<u16> {
    let mut local = sockaddr_in(std::net::SocketAddrV4::new([0, 0, 0, 0].into(), 0));
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockname() into a local of the size it is told.
    let ret = unsafe { libc::getsockname(fd, std::ptr::from_mut(&mut local).cast(), &mut len) };
    (ret == 0).then(|| u16::from_be(local.sin_port))
}

/// One blocking socket connect()ed to `refused` (IPv4), which must refuse it, then
/// to `ok`: the local port the second attempt got.
fn reconnect(refused: SocketAddr, ok: SocketAddr) -> Option<u16> {
    let (SocketAddr::V4(refused), SocketAddr::V4(ok)) = (refused, ok) else {
        return None;
    };
    // SAFETY: socket() has no memory arguments; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let port = (connect_v4(fd, refused) == Err(libc::ECONNREFUSED) && connect_v4(fd, ok).is_ok())
        .then(|| local_port(fd))
        .flatten();
    // SAFETY: closing this function's own socket.
    unsafe { libc::close(fd) };
    port
}

/// One non-blocking connect() to `target` (IPv4): whether it returned EINPROGRESS and
/// the socket then reported ECONNREFUSED (SO_ERROR, after waiting up to a second).
fn nonblocking_refused(target: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = target else {
        return false;
    };
    // SAFETY: plain syscalls on a socket this function owns and closes; the pointers
    // are to locals that outlive the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return false;
        }
        let in_progress = connect_v4(fd, v4) == Err(libc::EINPROGRESS);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        let refused = in_progress
            && libc::poll(&mut pfd, 1, 1000) == 1
            && libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                std::ptr::from_mut(&mut err).cast(),
                &mut len,
            ) == 0
            && err == libc::ECONNREFUSED;
        libc::close(fd);
        refused
    }
}

//! What tracing costs a connect storm, and how fast an exhaustion is reported: each
//! against a baseline in the same run (no tracer; bpftrace as the peer; `ss` polled
//! once a second, the usual way people watch for this today).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{Figure, bench_ns, in_netns, median, report};

/// Byte a client sends to stop a server thread.
const STOP: u8 = 0xff;

/// Port of worker `w`'s server: one destination per worker, so no destination runs
/// short of source ports however long the storm.
fn server_port(w: usize) -> u16 {
    9000 + w as u16
}

/// `total` short connections from `workers` client threads to servers in `ns`:
/// connect, one byte each way, the client closes first. Connections per second.
fn storm(ns: &str, total: usize, workers: usize) -> f64 {
    in_netns(ns, || {
        // Threads spawned from here inherit this thread's namespace.
        let servers: Vec<_> = (0..workers)
            .map(|w| {
                let l = TcpListener::bind(("127.0.0.1", server_port(w))).expect("listen");
                thread::spawn(move || {
                    while let Ok((mut s, _)) = l.accept() {
                        let mut b = [0u8];
                        if s.read_exact(&mut b).is_err() || b[0] == STOP {
                            break;
                        }
                        let _ = s.write_all(&b);
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest);
                    }
                })
            })
            .collect();
        let start = Instant::now();
        let clients: Vec<_> = (0..workers)
            .map(|w| {
                thread::spawn(move || {
                    for _ in 0..total / workers {
                        let mut s =
                            TcpStream::connect(("127.0.0.1", server_port(w))).expect("connect");
                        let mut b = [1u8];
                        s.write_all(&b).expect("write");
                        s.read_exact(&mut b).expect("read");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client");
        }
        let rate = (total / workers * workers) as f64 / start.elapsed().as_secs_f64();
        for w in 0..servers.len() {
            let _ = TcpStream::connect(("127.0.0.1", server_port(w)))
                .and_then(|mut s| s.write_all(&[STOP]));
        }
        for s in servers {
            let _ = s.join();
        }
        rate
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tracer {
    None,
    Trace,
    Top,
    /// bpftrace printing a line per event, as `portx trace` does: the peer.
    BpftracePrint,
    /// bpftrace counting in kernel maps, printing nothing per event: a lower bound on
    /// what any tracer of these tracepoints costs.
    BpftraceCount,
    /// bpftrace counting calls on one syscall tracepoint, nothing else. Enabling any
    /// syscall tracepoint sends every syscall of every task through the slow entry
    /// path, so this is what seeing connect()/bind() results costs on a kernel that
    /// does not allow fexit or kprobes (this one), before any tracing work.
    /// https://elixir.bootlin.com/linux/v6.12/source/kernel/tracepoint.c (syscall_regfunc)
    BpftraceSyscallFloor,
    /// bpftrace attaching a program that does nothing to the state-change tracepoint:
    /// what the kernel's dispatch and `kernel.bpf_stats_enabled`'s own clock reads cost
    /// per run on this machine, the floor under any program there. Measured for its BPF
    /// time only, not in the timed storms.
    BpftraceEmptyState,
    /// `portx trace --errors`: the kernel drops every other event before the ring
    /// buffer, as an SRE would run it on a busy host during an incident.
    TraceErrors,
    /// `portx record -o FILE`: every event framed, compressed and written to disk.
    Record,
    /// `portx serve` on a free loopback port, its `/metrics` scraped every second
    /// during the storm.
    Serve,
}

/// The port `portx serve` listens on in the storm (picked at its start).
static SERVE_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A free loopback port: bound, read and released.
fn free_port() -> Option<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

/// GET /metrics from `portx serve`: the body and the time to the last byte.
fn get_metrics(port: u16) -> Option<(String, Duration)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let took = t.elapsed();
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| (body.to_owned(), took))
}

/// `portx_events_dropped_total` in a scrape's body.
fn dropped_in(body: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix("portx_events_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrapes `/metrics` once a second until `stop` is set; the latencies, in ms.
fn scraper(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<Vec<f64>> {
    thread::spawn(move || {
        let mut lat = Vec::new();
        let mut next = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if Instant::now() >= next {
                if let Some((_, took)) = get_metrics(port) {
                    lat.push(took.as_secs_f64() * 1e3);
                }
                next += Duration::from_secs(1);
            }
            thread::sleep(Duration::from_millis(10));
        }
        lat
    })
}

/// Where the storm's recording goes (removed after each storm).
fn record_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("portx-bench-storm-{}.portx", std::process::id()))
}

impl Tracer {
    fn is_bpftrace(self) -> bool {
        matches!(
            self,
            Tracer::BpftracePrint
                | Tracer::BpftraceCount
                | Tracer::BpftraceSyscallFloor
                | Tracer::BpftraceEmptyState
        )
    }

    fn name(self) -> &'static str {
        match self {
            Tracer::None => "none",
            Tracer::Trace => "trace",
            Tracer::Top => "top",
            Tracer::BpftracePrint => "bpftrace-print",
            Tracer::BpftraceCount => "bpftrace-count",
            Tracer::BpftraceSyscallFloor => "bpftrace-syscall",
            Tracer::BpftraceEmptyState => "bpftrace-empty",
            Tracer::TraceErrors => "trace-errors",
            Tracer::Record => "record",
            Tracer::Serve => "serve",
        }
    }
}

/// The equivalent of `portx trace` in bpftrace: every state change with its owner
/// and 4-tuple, and every connect()/bind() result, one line each.
const BPFTRACE_PRINT: &str = "tracepoint:sock:inet_sock_set_state { \
      printf(\"%llu %d %d %s %d %s:%d %s:%d %d %d\\n\", nsecs, pid, tid, comm, args->family, \
      ntop(args->saddr), args->sport, ntop(args->daddr), args->dport, args->oldstate, args->newstate); } \
    tracepoint:syscalls:sys_enter_connect { @a[tid] = args->uservaddr; } \
    tracepoint:syscalls:sys_enter_bind { @a[tid] = args->umyaddr; } \
    tracepoint:syscalls:sys_exit_connect, tracepoint:syscalls:sys_exit_bind /@a[tid]/ { \
      printf(\"%llu %d %s %d\\n\", nsecs, pid, comm, args->ret); delete(@a[tid]); }";

/// The same tracepoints, counted in kernel maps.
const BPFTRACE_COUNT: &str = "tracepoint:sock:inet_sock_set_state { @s[args->oldstate, args->newstate] = count(); } \
    tracepoint:syscalls:sys_enter_connect, tracepoint:syscalls:sys_enter_bind { @e = count(); } \
    tracepoint:syscalls:sys_exit_connect, tracepoint:syscalls:sys_exit_bind { @x[args->ret] = count(); }";

/// One counter on one syscall tracepoint.
const BPFTRACE_SYSCALL_FLOOR: &str = "tracepoint:syscalls:sys_enter_connect { @ = count(); }";

/// A program with an empty body on the state-change tracepoint.
const BPFTRACE_EMPTY_STATE: &str = "tracepoint:sock:inet_sock_set_state { }";

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// `portx record`: events it wrote, from its closing line.
    written: Option<u64>,
}

/// Lines of a pipe, on a thread; after a line containing `then_discard` (if given),
/// the rest is read in bulk and thrown away, as a tracer's output to /dev/null.
fn lines(
    pipe: impl std::io::Read + Send + 'static,
    then_discard: Option<&'static str>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, pipe);
        let mut l = String::new();
        while r.read_line(&mut l).is_ok_and(|n| n > 0) {
            let last = then_discard.is_some_and(|m| l.contains(m));
            if tx.send(l.trim_end().to_owned()).is_err() {
                break;
            }
            if last {
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                break;
            }
            l.clear();
        }
    });
    rx
}

fn start(t: Tracer) -> Option<Running> {
    let portx = env!("CARGO_BIN_EXE_portx");
    let (mut cmd, ready, from_stdout) = match t {
        Tracer::None => return None,
        Tracer::Trace | Tracer::TraceErrors => {
            let mut c = Command::new(portx);
            c.args(["trace", "--json"]);
            if t == Tracer::TraceErrors {
                c.arg("--errors");
            }
            (c, "portx: tracing", false)
        }
        Tracer::Record => {
            let mut c = Command::new(portx);
            let _ = std::fs::remove_file(record_path());
            c.arg("record").arg("-o").arg(record_path());
            (c, "portx: baseline taken", false)
        }
        Tracer::Serve => {
            let mut c = Command::new(portx);
            let port = free_port()?;
            SERVE_PORT.store(port, std::sync::atomic::Ordering::Relaxed);
            c.args(["serve", "-v", "--listen", &format!("127.0.0.1:{port}")]);
            (c, "portx: baseline taken", false)
        }
        Tracer::Top => {
            let mut c = Command::new(portx);
            // Headless: stdout is not a terminal, and nothing is printed before the
            // (long) interval, so this measures the model keeping up.
            c.args(["top", "-v", "--interval", "3600"]);
            (c, "portx: baseline taken", false)
        }
        Tracer::BpftracePrint
        | Tracer::BpftraceCount
        | Tracer::BpftraceSyscallFloor
        | Tracer::BpftraceEmptyState => {
            let mut c = Command::new("bpftrace");
            c.args([
                "-e",
                match t {
                    Tracer::BpftracePrint => BPFTRACE_PRINT,
                    Tracer::BpftraceCount => BPFTRACE_COUNT,
                    Tracer::BpftraceEmptyState => BPFTRACE_EMPTY_STATE,
                    _ => BPFTRACE_SYSCALL_FLOOR,
                },
            ]);
            (c, "Attaching", true)
        }
    };
    let mut child = if from_stdout {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null())
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped())
    }
    .spawn()
    .ok()?;
    let rx = if from_stdout {
        lines(child.stdout.take()?, Some(ready))
    } else {
        lines(child.stderr.take()?, None)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.contains(ready) => {
                return Some(Running {
                    child,
                    lines: rx,
                    written: None,
                });
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    None
}

/// A process's resource use, from /proc.
struct Usage {
    /// CPU seconds, user and system.
    cpu: f64,
    /// Peak resident set (VmHWM), KiB.
    peak_rss: u64,
    /// Anonymous resident memory (RssAnon), KiB: heap and stacks, not mapped files
    /// or BPF maps.
    anon_rss: u64,
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm: utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    // By position: the first field after the comm is the (non-numeric) state.
    let field = |i: usize| -> u64 {
        after
            .split_whitespace()
            .nth(i)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    // The scheduler's run time of every thread, in nanoseconds: utime and stime
    // count clock ticks (10 ms), too coarse for a storm of a few seconds.
    let sched_ns: Option<u64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .filter(|&ns| ns > 0);
    Usage {
        cpu: sched_ns.map_or((field(11) + field(12)) as f64 / hz, |ns| ns as f64 / 1e9),
        peak_rss: kib("VmHWM:"),
        anon_rss: kib("RssAnon:"),
    }
}

/// Run time and run count of every BPF program a process holds, from the kernel's
/// own accounting (`run_time_ns`, `run_cnt` in each program fd's fdinfo, kept while
/// `kernel.bpf_stats_enabled` is 1).
fn bpf_prog_stats(pid: u32) -> Vec<(u64, u64)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .map(|info| {
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            (field("run_time_ns:"), field("run_cnt:"))
        })
        .collect()
}

/// Ports of the recycling storm's range: about what a client that exhausts a widened
/// range (as `range-too-small` advises) keeps in TIME_WAIT, and twice Linux's default
/// range, so that the TIME_WAIT table outgrows the caches as on such a host.
const RECYCLED_PORTS: usize = 60_000;

/// Waits for a tracer to read what a storm that just ended left in its per-CPU batches
/// and ring: it drains every 10 to 40 ms, so its CPU read at once would leave out the
/// last events' share (a tenth of `top`'s at 40 ms, with its ring count short by as
/// much).
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// The CPU per 1000 connections of process `pid` (a tracer already running) in a
/// storm of `n` connections in a namespace of about `n` ports, each port last used by a
/// connection of an earlier storm of `n` that is now in TIME_WAIT and over a second
/// old, so that loopback's `tcp_tw_reuse` (2) takes it over: the TIME_WAIT model then
/// removes an entry per connection, as on a host whose client has used its range.
fn recycling_storm(rep: usize, n: usize, workers: usize, pid: u32) -> Option<f64> {
    // A few ports over `n`: the connections that stop the storm's servers.
    let range = format!("5000 {}", 5000 + n + 2 * workers - 1);
    let ns = bench_ns(&format!("stormtw{rep}"), &range)?;
    storm(&ns.0, n, workers);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = usage(pid);
    storm(&ns.0, n, workers);
    settle();
    let after = usage(pid);
    Some((after.cpu - before.cpu) * 1e3 / (n as f64 / 1e3))
}

/// Sets `kernel.bpf_stats_enabled` to 1 while it lives and back to what it was after.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Option<Self> {
        let was = std::fs::read_to_string(BPF_STATS).ok()?;
        std::fs::write(BPF_STATS, "1").ok()?;
        Some(Self(was))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.0.trim());
    }
}

/// What portx's BPF programs cost a storm under `portx trace`: their CPU per 1000
/// connections, and the state-change program's time per run (it runs about ten times
/// per connection, more than any other, which is how it is told apart). The kernel's
/// accounting reads the clock twice per program run, so this is a storm of its own,
/// not one of the timed ones. Also the ring's events, bytes and records per connection, when
/// portx said them.
fn bpf_cost(tracer: Tracer, total: usize, workers: usize) -> Option<BpfCost> {
    let ns = bench_ns("stormbpf", "10000 60999")?;
    let _stats = BpfStats::enable()?;
    let running = start(tracer)?;
    // bpftrace says "Attaching" before it loads its programs: wait until it holds
    // some, and as many as 100 ms before (a bounded wait).
    let mut before = bpf_prog_stats(running.child.id());
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(100));
        let now = bpf_prog_stats(running.child.id());
        let steady = !now.is_empty() && now.len() == before.len();
        before = now;
        if steady {
            break;
        }
    }
    storm(&ns.0, total, workers);
    settle();
    let after = bpf_prog_stats(running.child.id());
    let ring = stop(running).ring;
    // The storm's connections plus the few that stop its servers.
    let conns = (total / workers * workers + workers) as f64;
    let ring = ring.map(|(e, b, r)| (e as f64 / conns, b as f64 / conns, r as f64 / conns));
    if before.len() != after.len() || after.is_empty() {
        return None;
    }
    let delta: Vec<(u64, u64)> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
        .collect();
    let total_ns: u64 = delta.iter().map(|d| d.0).sum();
    let (state_ns, state_runs) = delta.iter().copied().max_by_key(|d| d.1)?;
    if state_runs == 0 {
        return None;
    }
    Some((
        total_ns as f64 / 1e6 / (total as f64 / 1e3),
        state_ns as f64 / state_runs as f64,
        ring,
    ))
}

/// A figure with no baseline or target: a median and its spread.
fn report_plain(figure: &str, (value, spread): (f64, f64), unit: &str) {
    report(Figure {
        figure,
        value,
        unit,
        baseline: None,
        target: "reported",
        pass: None,
        spread,
        paired_ratio: None,
    });
}

/// Whether `PORTX_BENCH_TRACER` (a comma-separated list of names, when set) takes `t`.
fn selected(only: Option<&str>, t: Tracer) -> bool {
    only.is_none_or(|o| o.split(',').any(|n| n == t.name()))
}

/// `bpf_cost` over `reps` storms: one storm's figure moves by tens of percent on these
/// machines, so the figures are their median, with its spread.
fn bpf_costs(tracer: Tracer, reps: usize, total: usize, workers: usize) -> Vec<BpfCost> {
    (0..reps)
        .filter_map(|_| bpf_cost(tracer, total, workers))
        .collect()
}

/// CPU per 1000 connections, state-program time per run, ring events, bytes and
/// records per connection.
type BpfCost = (f64, f64, Option<(f64, f64, f64)>);

/// What a portx command said on its closing lines.
struct Stopped {
    /// Events the kernel dropped.
    dropped: Option<u64>,
    /// `record`: events written.
    written: Option<u64>,
    /// Events, bytes and records read from the ring buffer: "E events (B bytes) read
    /// from the ring in R records: TALLY" (top, serve), or "N events seen" (trace, whose
    /// records are all one `Event`).
    ring: Option<(u64, u64, u64)>,
}

/// Stops a tracer with SIGINT and reads what it said (`Stopped`).
fn stop(mut r: Running) -> Stopped {
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGINT) };
    let _ = r.child.wait();
    let mut dropped = None;
    let (mut events, mut records, mut bytes, mut seen) = (None, None, None, None);
    let lines = std::mem::replace(&mut r.lines, mpsc::channel().1);
    while let Ok(l) = lines.recv_timeout(Duration::from_millis(500)) {
        // "portx: N events seen, M shown, D dropped" or "portx: D events dropped, ..."
        if let Some(rest) = l.strip_prefix("portx: ") {
            let words: Vec<&str> = rest
                .split([' ', ',', ';', ':', '(', ')'])
                .filter(|w| !w.is_empty())
                .collect();
            let number_before = |i: usize| words.get(i.checked_sub(1)?)?.parse::<u64>().ok();
            for (i, w) in words.iter().enumerate() {
                if w.starts_with("written") && i > 0 {
                    r.written = words[i - 1].parse().ok();
                }
                if w.starts_with("dropped")
                    && i > 0
                    && let Ok(n) = words[i - 1].parse()
                {
                    // "... D dropped"; for "D events dropped" the number is read at
                    // "events" below, and "events" must not clear it.
                    dropped = Some(n);
                } else if *w == "events" && words.get(i + 1) == Some(&"dropped") {
                    dropped = words.get(i.wrapping_sub(1)).and_then(|n| n.parse().ok());
                } else if *w == "events" && words.get(i + 1) == Some(&"seen") {
                    seen = seen.or(number_before(i));
                } else if *w == "events" && words.get(i + 2) == Some(&"bytes") {
                    events = events.or(number_before(i));
                } else if *w == "records" {
                    records = records.or(number_before(i));
                } else if *w == "bytes" {
                    bytes = bytes.or(number_before(i));
                }
            }
        }
    }
    let ring = match (events, bytes, records) {
        (Some(e), Some(b), Some(r)) => Some((e, b, r)),
        _ => seen.map(|n: u64| (n, n * size_of::<portx_common::Event>() as u64, n)),
    };
    Stopped {
        dropped,
        written: r.written,
        ring,
    }
}

pub fn bench_storm(quick: bool) {
    // Storms of a second or more, so what is measured is the steady state, not the
    // tracer's first moments.
    let (total, reps, workers) = if quick {
        (20_000, 3, 4)
    } else {
        (40_000, 5, 4)
    };
    let bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let conds = [
        Tracer::None,
        Tracer::Trace,
        Tracer::Top,
        Tracer::BpftracePrint,
        Tracer::BpftraceCount,
        Tracer::BpftraceSyscallFloor,
        Tracer::TraceErrors,
        Tracer::Record,
        Tracer::Serve,
    ];
    // `portx serve`'s scrape latencies: idle (before each storm), during the storms.
    let (mut idle_scrapes, mut storm_scrapes) = (Vec::new(), Vec::new());
    // `portx record`'s bytes on disk per event written, per storm.
    let mut record_bytes: Vec<f64> = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    // Each traced storm's rate over the untraced one of the same repeat (run first).
    let mut paired: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    // Each tracer's own CPU per 1000 connections, start-up excluded.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    // top's CPU in a second storm under the same process: its tables already grown and
    // its buffers faulted in, nearer what a process attached for weeks pays.
    let mut top_warm_cpu: Vec<f64> = Vec::new();
    // And in a storm whose every port was last used by one in TIME_WAIT (the steady
    // state of a client that exhausts its range).
    let mut top_recycled_cpu: Vec<f64> = Vec::new();
    let mut trace_rss = (0, 0);
    let mut dropped = 0u64;
    // Which tracers dropped, to name them in the figure.
    let mut droppers: Vec<String> = Vec::new();
    // For profiling some conditions: PORTX_BENCH_TRACER=none,trace,top,bpftrace-print,...
    let only = std::env::var("PORTX_BENCH_TRACER").ok();
    for rep in 0..reps {
        for (i, &c) in conds.iter().enumerate() {
            if c.is_bpftrace() && !bpftrace {
                continue;
            }
            if !selected(only.as_deref(), c) {
                continue;
            }
            let Some(ns) = bench_ns(&format!("storm{rep}{i}"), "10000 60999") else {
                eprintln!("skipping the connect storm - cannot make a namespace");
                return;
            };
            let running = start(c);
            if c != Tracer::None && running.is_none() {
                eprintln!("skipping {c:?} in the connect storm - it did not start");
                continue;
            }
            let serve_port = SERVE_PORT.load(std::sync::atomic::Ordering::Relaxed);
            if c == Tracer::Serve {
                for _ in 0..5 {
                    if let Some((_, t)) = get_metrics(serve_port) {
                        idle_scrapes.push(t.as_secs_f64() * 1e3);
                    }
                }
            }
            let stop_scraper = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scraping = (c == Tracer::Serve).then(|| scraper(serve_port, stop_scraper.clone()));
            let before = running.as_ref().map(|r| usage(r.child.id()));
            let rate = storm(&ns.0, total, workers);
            rates[i].push(rate);
            if i > 0 && rates[0].len() == rep + 1 {
                paired[i].push(rate / rates[0][rep]);
            }
            if let (Some(r), Some(before)) = (running, before) {
                settle();
                let after = usage(r.child.id());
                // serve: the scrapes during the storm, then one more for the drop count.
                let mut scraped_drops = None;
                if let Some(h) = scraping {
                    stop_scraper.store(true, std::sync::atomic::Ordering::Relaxed);
                    storm_scrapes.extend(h.join().unwrap_or_default());
                    scraped_drops = get_metrics(serve_port).and_then(|(b, _)| dropped_in(&b));
                    if scraped_drops.is_none() {
                        eprintln!("skipping serve's drop count in repeat {rep} - no final scrape");
                    }
                }
                cpu[i].push((after.cpu - before.cpu) * 1e3 / (total as f64 / 1e3));
                if c == Tracer::Top {
                    storm(&ns.0, total, workers);
                    settle();
                    let again = usage(r.child.id());
                    top_warm_cpu.push((again.cpu - after.cpu) * 1e3 / (total as f64 / 1e3));
                    if let Some(cpu) = recycling_storm(rep, RECYCLED_PORTS, workers, r.child.id()) {
                        top_recycled_cpu.push(cpu);
                    }
                }
                if c == Tracer::Trace {
                    trace_rss = (
                        trace_rss.0.max(after.peak_rss),
                        trace_rss.1.max(after.anon_rss),
                    );
                }
                let Stopped {
                    dropped: d,
                    written,
                    ..
                } = stop(r);
                let d = match (d, scraped_drops) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if matches!(
                    c,
                    Tracer::Trace
                        | Tracer::Top
                        | Tracer::TraceErrors
                        | Tracer::Record
                        | Tracer::Serve
                ) {
                    dropped += d.unwrap_or(0);
                    if let Some(n) = d.filter(|&n| n > 0) {
                        droppers.push(format!("{} {n} in repeat {rep}", c.name()));
                    }
                }
                if c == Tracer::Record {
                    let size = std::fs::metadata(record_path()).map_or(0, |m| m.len());
                    if let Some(n) = written.filter(|&n| n > 0) {
                        record_bytes.push(size as f64 / n as f64);
                    }
                    let _ = std::fs::remove_file(record_path());
                }
            }
        }
    }
    let Some(base) = (!rates[0].is_empty()).then(|| median(rates[0].clone())) else {
        return;
    };
    report(Figure {
        figure: "connect storm, untraced",
        value: base.0,
        unit: "conn/s",
        baseline: None,
        target: "reported",
        pass: None,
        spread: base.1,
        paired_ratio: None,
    });
    let mut ratios = [f64::NAN; 9];
    for (i, name, target) in [
        (1, "connect storm with portx trace --json", Some(0.97)),
        (2, "connect storm with portx top (headless)", Some(0.97)),
        (
            3,
            "connect storm with bpftrace printing each event (peer)",
            None,
        ),
        (4, "connect storm with bpftrace counting in maps", None),
        (
            5,
            "connect storm with bpftrace counting one syscall tracepoint (floor for syscall tracepoints)",
            None,
        ),
        (
            6,
            "connect storm with portx trace --json --errors (other events dropped in the kernel)",
            None,
        ),
        (7, "connect storm with portx record -o FILE", None),
        (
            8,
            "connect storm with portx serve, /metrics scraped every second",
            Some(0.97),
        ),
    ] {
        if paired[i].is_empty() {
            continue;
        }
        let (v, _) = median(rates[i].clone());
        let (ratio, spread) = median(paired[i].clone());
        ratios[i] = ratio;
        report(Figure {
            figure: name,
            value: v,
            unit: "conn/s",
            baseline: Some((base.0, "untraced")),
            target: if target.is_some() {
                "ratio >= 0.97"
            } else {
                "reported"
            },
            pass: target.map(|t| ratios[i] >= t),
            spread,
            paired_ratio: Some(ratio),
        });
    }
    // The peer does what `portx trace` does: a line per event. Counting in maps
    // prints nothing per event; it is there as the floor, not as the target.
    for (i, peer, name, target) in [
        (
            1,
            3,
            "portx trace ratio vs bpftrace printing each event",
            Some("at least bpftrace's"),
        ),
        (
            2,
            4,
            "portx top ratio vs bpftrace counting in maps",
            Some("at least bpftrace's"),
        ),
        // Judged by CPU below (steadier on two noisy cores); the ratios for the record.
        (7, 1, "portx record ratio vs portx trace --json's", None),
    ] {
        if ratios[peer].is_nan() || ratios[i].is_nan() {
            continue;
        }
        report(Figure {
            figure: name,
            value: ratios[i],
            unit: "",
            baseline: Some((
                ratios[peer],
                if peer == 1 {
                    "trace's ratio"
                } else {
                    "bpftrace's ratio"
                },
            )),
            target: target.unwrap_or("reported"),
            pass: target.map(|_| ratios[i] >= ratios[peer]),
            spread: 0.0,
            paired_ratio: None,
        });
    }
    for (values, name) in [
        (
            &cpu[1],
            "portx trace CPU per 1000 connections (own process)",
        ),
        (&cpu[2], "portx top CPU per 1000 connections (own process)"),
        (
            &top_warm_cpu,
            "portx top CPU per 1000 connections (own process), a second storm under the same process",
        ),
        (
            &top_recycled_cpu,
            "portx top CPU per 1000 connections (own process), every port taken over from TIME_WAIT",
        ),
        (
            &cpu[6],
            "portx trace --errors CPU per 1000 connections (own process)",
        ),
        (
            &cpu[3],
            "bpftrace printing, CPU per 1000 connections (own process)",
        ),
        (
            &cpu[7],
            "portx record CPU per 1000 connections (own process)",
        ),
        (
            &cpu[8],
            "portx serve CPU per 1000 connections (own process, scrapes included)",
        ),
    ] {
        if values.is_empty() {
            continue;
        }
        let (v, spread) = median(values.clone());
        report(Figure {
            figure: name,
            value: v,
            unit: "ms",
            baseline: None,
            target: "reported",
            pass: None,
            spread,
            paired_ratio: None,
        });
    }
    // The machine's CPU per 1000 untraced connections, all cores busy.
    let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine_per_1000 = cores * 1e6 / base.0;
    // top's BPF + process per 1000 connections, for the floors below.
    let mut top_total = None;
    for (tracer, i, programs, state, share, ring_names) in [
        (
            Tracer::Trace,
            1,
            "portx trace BPF programs, CPU per 1000 connections (kernel.bpf_stats_enabled)",
            "portx state-change program, time per run (ten runs per connection)",
            "portx trace CPU (BPF programs + process) against the machine's per connection",
            (
                "portx trace: events per connection through the ring",
                "portx trace: ring bytes per connection",
                "portx trace: ring records (reservations) per connection",
            ),
        ),
        (
            Tracer::Top,
            2,
            "portx top (accounting path) BPF programs, CPU per 1000 connections",
            "portx state-change program under top, time per run",
            "portx top CPU (BPF programs + process) against the machine's per connection",
            (
                "portx top (accounting path): events per connection through the ring",
                "portx top (accounting path): ring bytes per connection",
                "portx top (accounting path): ring records (reservations) per connection",
            ),
        ),
        (
            Tracer::TraceErrors,
            6,
            "portx trace --errors BPF programs, CPU per 1000 connections",
            "portx state-change program under --errors, time per run",
            "portx trace --errors CPU (BPF programs + process) against the machine's per connection",
            (
                "portx trace --errors: events per connection through the ring",
                "portx trace --errors: ring bytes per connection",
                "portx trace --errors: ring records (reservations) per connection",
            ),
        ),
    ] {
        if !selected(only.as_deref(), tracer) {
            continue;
        }
        let costs = bpf_costs(tracer, reps, total, workers);
        if costs.is_empty() {
            continue;
        }
        let of = |f: fn(&BpfCost) -> f64| median(costs.iter().map(f).collect());
        let per_1000 = of(|c| c.0);
        let mut rows = vec![(programs, per_1000, "ms"), (state, of(|c| c.1), "ns")];
        // The ring counts come from portx's closing line, when it printed one.
        let rings: Vec<(f64, f64, f64)> = costs.iter().filter_map(|c| c.2).collect();
        if !rings.is_empty() {
            rows.extend([
                (
                    ring_names.0,
                    median(rings.iter().map(|r| r.0).collect()),
                    "",
                ),
                (
                    ring_names.1,
                    median(rings.iter().map(|r| r.1).collect()),
                    "bytes",
                ),
                (
                    ring_names.2,
                    median(rings.iter().map(|r| r.2).collect()),
                    "",
                ),
            ]);
        }
        let per_1000 = per_1000.0;
        for (figure, value, unit) in rows {
            report_plain(figure, value, unit);
        }
        // What the throughput ratio should show, from CPU accounting alone, which
        // is steadier than throughput on a noisy machine: with every core busy, each
        // CPU-second portx takes is one the storm does not get.
        if !cpu[i].is_empty() {
            let own = median(cpu[i].clone()).0;
            // The always-on path's goal: BPF + process at most 1.5 us per connection.
            let top = tracer == Tracer::Top;
            report(Figure {
                figure: share,
                value: per_1000 + own,
                unit: "ms per 1000 conns",
                baseline: Some((machine_per_1000, "machine CPU per 1000 untraced conns")),
                target: if top {
                    "<= 1.5 ms per 1000 conns"
                } else {
                    "reported"
                },
                pass: top.then_some(per_1000 + own <= 1.5),
                spread: 0.0,
                paired_ratio: None,
            });
            if top {
                top_total = Some(per_1000 + own);
            }
        }
    }
    // The 1.5 us target is absolute, and these machines differ threefold in the
    // kernel's speed: the same accounting for bpftrace's programs on the same
    // tracepoint says how much of it the machine's dispatch alone takes (an empty
    // program, ten runs per connection) and what merely counting costs.
    for (tracer, programs, per_run, against, baseline_name) in [
        (
            Tracer::BpftraceEmptyState,
            "floor: an empty program on sock:inet_sock_set_state (bpftrace), BPF CPU per 1000 connections",
            "floor: the empty program's time per run",
            "portx top CPU (BPF programs + process) against the empty program's",
            "the empty program's BPF CPU",
        ),
        (
            Tracer::BpftraceCount,
            "bpftrace counting in maps, BPF programs, CPU per 1000 connections",
            "bpftrace counting's state-change program, time per run",
            "portx top CPU (BPF programs + process) against bpftrace counting's BPF CPU",
            "bpftrace counting's BPF CPU",
        ),
    ] {
        if !bpftrace || !selected(only.as_deref(), tracer) {
            continue;
        }
        let costs = bpf_costs(tracer, reps, total, workers);
        if costs.is_empty() {
            continue;
        }
        let per_1000 = median(costs.iter().map(|c| c.0).collect());
        report_plain(programs, per_1000, "ms");
        report_plain(per_run, median(costs.iter().map(|c| c.1).collect()), "ns");
        let per_1000 = per_1000.0;
        if let Some(top_total) = top_total {
            report(Figure {
                figure: against,
                value: top_total,
                unit: "ms per 1000 conns",
                baseline: Some((per_1000, baseline_name)),
                target: "reported",
                pass: None,
                spread: 0.0,
                paired_ratio: None,
            });
        }
    }
    if trace_rss.0 > 0 {
        for (figure, kib) in [
            (
                "portx trace peak RSS (the ring buffer, mapped twice, is 32 MiB of it)",
                trace_rss.0,
            ),
            (
                "portx trace anonymous RSS (heap, stacks) after a storm",
                trace_rss.1,
            ),
        ] {
            report(Figure {
                figure,
                value: kib as f64 / 1024.0,
                unit: "MiB",
                baseline: None,
                target: "reported",
                pass: None,
                spread: 0.0,
                paired_ratio: None,
            });
        }
    }
    // record must cost no more than trace --json to /dev/null: by CPU, the steady
    // figure, and by throughput ratio as reported above.
    if !cpu[7].is_empty() && !cpu[1].is_empty() {
        let (rec, spread) = median(cpu[7].clone());
        let (trace, _) = median(cpu[1].clone());
        report(Figure {
            figure: "portx record CPU per 1000 connections vs portx trace --json > /dev/null",
            value: rec,
            unit: "ms",
            baseline: Some((trace, "portx trace --json")),
            target: "at most trace's",
            pass: Some(rec <= trace),
            spread,
            paired_ratio: None,
        });
    }
    if !storm_scrapes.is_empty() {
        let n = storm_scrapes.len();
        let p99 = percentile(&mut storm_scrapes, 0.99);
        let idle = (!idle_scrapes.is_empty()).then(|| percentile(&mut idle_scrapes, 0.99));
        report(Figure {
            figure: &format!("portx serve /metrics latency p99 during the storms ({n} scrapes)"),
            value: p99,
            unit: "ms",
            baseline: idle.map(|i| (i, "p99 idle, before each storm")),
            target: "< 1000 ms (one scrape interval)",
            pass: Some(p99 < 1000.0),
            spread: 0.0,
            paired_ratio: None,
        });
    }
    if !record_bytes.is_empty() {
        let (b, spread) = median(record_bytes);
        report(Figure {
            figure: "portx record bytes on disk per event in the storm",
            value: b,
            unit: "B",
            baseline: None,
            target: "<= 16",
            pass: Some(b <= 16.0),
            spread,
            paired_ratio: None,
        });
    }
    report(Figure {
        figure: &if droppers.is_empty() {
            "events dropped during the storms (trace, top, trace --errors, record, serve)"
                .to_owned()
        } else {
            format!(
                "events dropped during the storms (trace, top, trace --errors, record, serve): {}",
                droppers.join(", ")
            )
        },
        value: dropped as f64,
        unit: "events",
        baseline: None,
        target: "0",
        pass: Some(dropped == 0),
        spread: 0.0,
        paired_ratio: None,
    });
}

/// Closes with a RST (SO_LINGER 0), so the port does not stay in TIME_WAIT.
fn reset(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn bench_latency(quick: bool) {
    let (trials, ss_trials) = if quick { (100, 3) } else { (400, 8) };
    let Some(ns) = bench_ns("latency", "20000 20001") else {
        eprintln!("skipping detection latency - cannot make a namespace");
        return;
    };
    let name = ns.0.clone();
    let Some(mut child) = Command::new(env!("CARGO_BIN_EXE_portx"))
        .args(["trace", "--json", "--errors", "--netns", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
    else {
        return;
    };
    let err = lines(child.stderr.take().expect("piped"), None);
    let out = child.stdout.take().expect("piped");
    // Each printed line, timestamped as it arrives.
    let (tx, printed) = mpsc::channel::<Instant>();
    thread::spawn(move || {
        for _ in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let ready = (0..30).any(|_| {
        err.recv_timeout(Duration::from_secs(1))
            .is_ok_and(|l| l.starts_with("portx: tracing"))
    });
    if !ready {
        let _ = child.kill();
        eprintln!("skipping detection latency - portx did not start");
        return;
    }
    let inner_name = name.clone();
    let (portx_lat, ss_lat) = in_netns(&name, move || {
        let listener = TcpListener::bind("127.0.0.1:9000").expect("listen");
        // Two ports in the range: hold both, and every further connect() fails.
        let mut held: Vec<_> = (0..2)
            .map(|_| {
                let c = TcpStream::connect("127.0.0.1:9000").expect("connect");
                let (s, _) = listener.accept().expect("accept");
                (c, s)
            })
            .collect();
        let mut portx_lat = Vec::new();
        for _ in 0..trials {
            thread::sleep(Duration::from_millis(5));
            let t0 = Instant::now();
            let r = TcpStream::connect("127.0.0.1:9000");
            assert!(r.is_err(), "the range should be exhausted");
            if let Ok(t1) = printed.recv_timeout(Duration::from_secs(2)) {
                portx_lat.push(t1.saturating_duration_since(t0).as_secs_f64() * 1e3);
            }
        }
        // Polling ss once a second: the time from the range filling up to the first
        // poll that shows it. One connection is released (RST) and taken again per trial.
        // Release one of the two ports (RST: no TIME_WAIT), keep the other.
        let (c, _s) = held.remove(0);
        reset(c);
        let mut ss_lat = Vec::new();
        let (poll_tx, polls) = mpsc::channel::<(Instant, usize)>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let ns_name = inner_name;
        let poller = thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns_name,
                        "ss",
                        "-tanH",
                        "state",
                        "established",
                        "( dport = :9000 )",
                    ])
                    .output();
                let n = out
                    .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
                    .unwrap_or(0);
                let _ = poll_tx.send((Instant::now(), n));
                thread::sleep(Duration::from_secs(1));
            }
        });
        for i in 0..ss_trials {
            // Start at different points of the poll period.
            thread::sleep(Duration::from_millis(1000 + (i as u64 * 370) % 1000));
            while polls.try_recv().is_ok() {}
            let t0 = Instant::now();
            let c = TcpStream::connect("127.0.0.1:9000").expect("connect");
            let (s, _) = listener.accept().expect("accept");
            let deadline = t0 + Duration::from_secs(5);
            let seen = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match polls.recv_timeout(left) {
                    Ok((t, n)) if n >= 2 && t > t0 => break Some(t),
                    Ok(_) if Instant::now() < deadline => {}
                    _ => break None,
                }
            };
            if let Some(t) = seen {
                ss_lat.push(t.saturating_duration_since(t0).as_secs_f64() * 1e3);
            }
            reset(c);
            drop(s);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = poller.join();
        drop(held);
        (portx_lat, ss_lat)
    });
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    if portx_lat.is_empty() || ss_lat.is_empty() {
        eprintln!("skipping detection latency - no measurements");
        return;
    }
    let (mut p, mut s) = (portx_lat, ss_lat);
    let n = p.len();
    let (p50, p99) = (percentile(&mut p, 0.5), percentile(&mut p, 0.99));
    let (s50, s99) = (percentile(&mut s, 0.5), percentile(&mut s, 0.99));
    report(Figure {
        figure: &format!("detection latency p50 ({n} EADDRNOTAVAIL, portx trace)"),
        value: p50,
        unit: "ms",
        baseline: Some((s50, "ss -tan polled at 1 Hz")),
        target: "reported",
        pass: None,
        spread: 0.0,
        paired_ratio: None,
    });
    report(Figure {
        figure: "detection latency p99 (portx trace)",
        value: p99,
        unit: "ms",
        baseline: Some((s99, "ss -tan polled at 1 Hz")),
        target: "< 5 ms",
        pass: Some(p99 < 5.0),
        spread: 0.0,
        paired_ratio: None,
    });
}

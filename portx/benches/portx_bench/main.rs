//! `cargo xtask bench` runs this. Each figure is measured against a baseline taken in
//! the same run on the same machine, several times, reporting the median and spread.
//! Output: one JSON object per figure on stdout (xtask renders the table).
//!
//! Not a test: nothing here asserts; targets are reported as pass/fail.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicIsize, Ordering},
    time::Instant,
};

mod capture;
mod names;
mod serve;
mod storm;

use portx::{
    events::{Comm, Family, Kind, TcpState, TraceEvent},
    kernel::sockdiag::{self, NetnsProbe, NetnsRef},
    model::{Model, NetnsConfig, View},
};
use rustc_hash::FxHashMap;
use serde_json::json;

/// Counts live heap bytes, to measure the model's memory per socket.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NS: u32 = 4026532000;

/// One row of the table.
struct Figure<'a> {
    figure: &'a str,
    value: f64,
    unit: &'a str,
    /// Value and name of the baseline measured in the same run.
    baseline: Option<(f64, &'a str)>,
    target: &'a str,
    pass: Option<bool>,
    /// (max - min) / median of the repeats, in percent.
    spread: f64,
    /// The ratio as the median of per-repeat ratios, each against the baseline
    /// measured just before it: steadier than the ratio of the medians when the
    /// machine's speed drifts during the run. `spread` is then that of the ratios.
    paired_ratio: Option<f64>,
}

fn report(f: Figure<'_>) {
    let Figure {
        figure,
        value,
        unit,
        baseline,
        target,
        pass,
        spread,
        paired_ratio,
    } = f;
    let (b, bname) = baseline.unwrap_or((f64::NAN, ""));
    println!(
        "{}",
        json!({
            "figure": figure, "value": value, "unit": unit,
            "baseline": if b.is_nan() { serde_json::Value::Null } else { json!(b) },
            "baseline_name": bname,
            "ratio": match paired_ratio {
                Some(r) => json!(r),
                None if b.is_nan() || b == 0.0 => serde_json::Value::Null,
                None => json!(value / b),
            },
            "target": target, "pass": pass, "spread_pct": spread,
        })
    );
}

/// Median and spread ((max-min)/median, in percent) of repeated measurements.
fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v[v.len() / 2];
    let spread = if m > 0.0 {
        (v[v.len() - 1] - v[0]) / m * 100.0
    } else {
        0.0
    };
    (m, spread)
}

/// An event of connection `i` (socket address, owner and timestamp derived from `i`)
/// toward `daddr:5432`, shaped as the BPF side reports it.
fn conn_event(
    i: u64,
    ts_ns: u64,
    kind: Kind,
    sport: u16,
    daddr: Ipv4Addr,
    states: Option<(TcpState, TcpState)>,
    comm: Comm,
) -> TraceEvent {
    let pid = 1000 + (i % 16) as u32;
    TraceEvent {
        kind,
        ts_ns,
        pid,
        tid: pid,
        comm,
        cgroup_id: 1,
        netns: NS,
        sock: 0xffff_8880_0000_0000 + i * 64,
        family: Family::Ipv4,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport,
        daddr: IpAddr::V4(daddr),
        dport: 5432,
        old_state: states.map(|s| s.0),
        new_state: states.map(|s| s.1),
        errno: None,
        bound_port: None,
    }
}

/// The events of `n` short connections (open, allocate, active close) spread over 64
/// destinations and 16 processes, as the BPF side reports them.
fn connection_events(n: u64) -> Vec<TraceEvent> {
    let mut out = Vec::with_capacity(n as usize * 6);
    let comms: Vec<Comm> = (0..16)
        .map(|i| Comm::from(format!("worker{i}").as_str()))
        .collect();
    for i in 0..n {
        let sport = 1024 + (i % 64000) as u16;
        let ts = i * 10_000; // 100k connections per second of event time
        let daddr = Ipv4Addr::new(10, 0, (i % 64) as u8, 1);
        let ev = |k: u64, kind: Kind, sport: u16, states: Option<(TcpState, TcpState)>| {
            conn_event(
                i,
                ts + k,
                kind,
                sport,
                daddr,
                states,
                comms[(i % 16) as usize],
            )
        };
        use TcpState::*;
        out.push(ev(0, Kind::State, 0, Some((Close, SynSent))));
        out.push(ev(1, Kind::State, sport, Some((SynSent, Established))));
        out.push(ev(2, Kind::Connect, sport, None));
        out.push(ev(3, Kind::State, sport, Some((Established, FinWait1))));
        out.push(ev(4, Kind::State, sport, Some((FinWait1, FinWait2))));
        out.push(ev(5, Kind::State, sport, Some((FinWait2, Close))));
    }
    out
}

fn model() -> Model {
    let mut m = Model::new();
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: None,
            port_range: (1024, 65535),
            reserved: vec![],
            ..Default::default()
        },
    );
    m
}

fn bench_ingest(quick: bool) {
    let events = connection_events(if quick { 50_000 } else { 200_000 });
    let runs = if quick { 3 } else { 7 };
    let mut model_rates = Vec::new();
    let mut base_rates = Vec::new();
    for _ in 0..runs {
        let mut m = model();
        let t = Instant::now();
        for e in &events {
            m.apply(e);
        }
        black_box(m.snapshot(View::default()));
        model_rates.push(events.len() as f64 / t.elapsed().as_secs_f64());
        // Baseline: the least a socket table can do with the same events, a plain hash
        // map insert on open and remove on close.
        let mut table: FxHashMap<u64, [u8; 56]> = FxHashMap::default();
        let t = Instant::now();
        for e in &events {
            match (e.kind, e.new_state) {
                (Kind::State, Some(TcpState::Close)) => {
                    table.remove(&e.sock);
                }
                (Kind::State, _) => {
                    table.insert(e.sock, [e.sport as u8; 56]);
                }
                _ => {}
            }
        }
        black_box(&table);
        base_rates.push(events.len() as f64 / t.elapsed().as_secs_f64());
    }
    let (rate, spread) = median(model_rates);
    let (base, _) = median(base_rates);
    report(Figure {
        figure: "model ingest rate (1 core)",
        value: rate,
        unit: "events/s",
        baseline: Some((base, "plain hash map insert/remove")),
        target: ">= 5000000 events/s",
        pass: Some(rate >= 5e6),
        spread,
        paired_ratio: None,
    });

    // What `top` and `serve` get: the events the accounting path sends (four per
    // connection), the model's share of their per-connection process cost.
    let conns = events.len() as f64 / 6.0;
    let accounting: Vec<TraceEvent> = events
        .iter()
        .filter(|e| match (e.kind, e.old_state, e.new_state) {
            (Kind::State, Some(o), Some(n)) => {
                !portx_common::accounting_leaves_out(o as u8, n as u8, || false)
            }
            _ => false,
        })
        .cloned()
        .collect();
    let mut per_conn = Vec::new();
    for _ in 0..runs {
        let mut m = model();
        let t = Instant::now();
        for e in &accounting {
            m.apply(e);
        }
        let took = t.elapsed();
        black_box(m.snapshot(View::default()));
        per_conn.push(took.as_nanos() as f64 / conns);
    }
    let (ns, spread) = median(per_conn);
    report(Figure {
        figure: &format!(
            "model CPU per connection, accounting path ({:.0} events each)",
            accounting.len() as f64 / conns
        ),
        value: ns,
        unit: "ns",
        baseline: None,
        target: "reported",
        pass: None,
        spread,
        paired_ratio: None,
    });
}

fn bench_memory(n: u64) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut m = model();
    for i in 0..n {
        let sport = 1024 + (i % 64000) as u16;
        // Enough destinations that no 4-tuple repeats.
        let daddr = Ipv4Addr::from(0x0a00_0000 + (i / 64000) as u32);
        let mk = |old, new, sport| {
            conn_event(
                i,
                i,
                Kind::State,
                sport,
                daddr,
                Some((old, new)),
                "worker".into(),
            )
        };
        m.apply(&mk(TcpState::Close, TcpState::SynSent, 0));
        m.apply(&mk(TcpState::SynSent, TcpState::Established, sport));
    }
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64;
    let per = bytes / m.socket_count() as f64;
    report(Figure {
        figure: &format!("model memory per socket at {}k sockets", n / 1000),
        value: per,
        unit: "bytes",
        baseline: Some((
            size_of::<portx_common::Event>() as f64,
            "one raw event record",
        )),
        target: "<= 128 bytes",
        pass: Some(per <= 128.0),
        spread: 0.0,
        paired_ratio: None,
    });
    drop(m);
}

/// What the model keeps of `n` processes that each made one connection and exited,
/// once their TIME_WAIT entries have expired (a cron job, `curl` in a loop, a
/// weeks-long `serve`): it should be bounded, not one owner per process.
fn bench_churn_memory(n: u64) {
    // Process `i`'s connection at `ts`, as the accounting path reports it.
    fn one(m: &mut Model, i: u64, ts: u64) {
        let ev = |ts, old, new, sport| {
            let daddr = Ipv4Addr::new(10, 1, 0, 1);
            let comm = "cronjob".into();
            let mut e = conn_event(i, ts, Kind::State, sport, daddr, Some((old, new)), comm);
            // A new process each time.
            e.pid = 100_000 + i as u32;
            e.tid = e.pid;
            e
        };
        let sport = 1024 + (i % 60_000) as u16;
        m.apply(&ev(ts, TcpState::Close, TcpState::SynSent, 0));
        m.apply(&ev(ts + 1, TcpState::SynSent, TcpState::Established, sport));
        m.apply(&ev(
            ts + 2,
            TcpState::Established,
            TcpState::FinWait1,
            sport,
        ));
        m.apply(&ev(ts + 3, TcpState::FinWait2, TcpState::Close, sport));
    }
    let mut m = model();
    let mut ts = 1_000_000_000u64;
    // 10 ms apart: 6,000 TIME_WAIT entries live at most. The first 20,000 (200 s)
    // bring the tables to that steady state; what the next `n` add is measured.
    let warm = 20_000;
    for i in 0..warm {
        one(&mut m, i, ts);
        ts += 10_000_000;
    }
    let before = LIVE.load(Ordering::Relaxed);
    for i in warm..warm + n {
        one(&mut m, i, ts);
        ts += 10_000_000;
    }
    m.tick(ts + portx::model::TIME_WAIT_NS);
    let _ = m.snapshot(View::default());
    let kept = LIVE.load(Ordering::Relaxed).saturating_sub(before) as f64;
    let per = kept / n as f64;
    report(Figure {
        figure: &format!(
            "model memory kept per finished one-connection process ({}k processes, TIME_WAIT expired)",
            n / 1000
        ),
        value: per,
        unit: "bytes",
        baseline: None,
        target: "<= 1 byte (bounded, not per process)",
        pass: Some(per <= 1.0),
        spread: 0.0,
        paired_ratio: None,
    });
}

/// A namespace the bench made, removed on drop.
struct BenchNs(String);

impl Drop for BenchNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A namespace for one run, with loopback up and its own port range.
pub(crate) fn bench_ns(tag: &str, range: &str) -> Option<BenchNs> {
    let name = format!("portx-bench-{tag}-{}", std::process::id());
    let added = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .is_ok_and(|s| s.success());
    if !added {
        return None;
    }
    let ns = BenchNs(name);
    let ok = sh(&ns.0, "ip link set lo up")
        && sh(
            &ns.0,
            &format!("echo '{range}' > /proc/sys/net/ipv4/ip_local_port_range"),
        );
    ok.then_some(ns)
}

fn sh(ns: &str, script: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `f` on a thread that has joined namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
            // SAFETY: setns on this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            f()
        })
        .join()
        .expect("thread")
    })
}

/// /proc/net/tcp{,6} read and parsed into 4-tuples and states: the usual way.
fn parse_proc_net_tcp() -> usize {
    let mut n = 0;
    // /proc/net follows the main thread's namespace; thread-self follows ours.
    for path in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let mut text = String::new();
        if std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_err()
        {
            continue;
        }
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(_), Some(local), Some(remote), Some(state)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let port = |s: &str| {
                s.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            let addr = |s: &str| {
                s.split(':')
                    .next()
                    .and_then(|a| u128::from_str_radix(a, 16).ok())
            };
            black_box((
                addr(local),
                port(local),
                addr(remote),
                port(remote),
                u8::from_str_radix(state, 16).ok(),
            ));
            n += 1;
        }
    }
    n
}

fn bench_baseline(n: usize, quick: bool) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the baseline dump figure - needs root (it makes a network namespace)");
        return;
    }
    let Some(ns) = bench_ns("baseline", "1024 65535") else {
        eprintln!("skipping the baseline dump figure - cannot make a namespace");
        return;
    };
    if !sh(
        &ns.0,
        &format!("echo {} > /proc/sys/net/ipv4/tcp_max_tw_buckets", n * 2),
    ) {
        eprintln!("skipping the baseline dump figure - cannot configure the namespace");
        return;
    }
    // n TIME_WAIT sockets: connect, accept, client closes first. Spread over ten
    // listeners: connect()'s port search slows down as one destination's ports fill
    // with TIME_WAIT, and creation must stay well under TIME_WAIT's 60 s.
    let made = in_netns(&ns.0, || {
        // All listeners first: with the range covering 1024-65535, connections to one
        // would otherwise take another's port as a source port (the very outage portx
        // explains).
        let listeners: Vec<TcpListener> = (9001u16..=9010)
            .map(|p| TcpListener::bind(("127.0.0.1", p)).expect("listen"))
            .collect();
        let mut made = 0;
        let deadline = Instant::now() + std::time::Duration::from_secs(50);
        'all: for (i, l) in listeners.iter().enumerate() {
            let port = 9001 + i as u16;
            while made < (i + 1) * n / listeners.len() {
                if Instant::now() > deadline {
                    break 'all;
                }
                let Ok(c) = TcpStream::connect(("127.0.0.1", port)) else {
                    break 'all;
                };
                let (s, _) = l.accept().expect("accept");
                drop(c);
                drop(s);
                made += 1;
            }
        }
        made
    });
    // Let the last closes finish their handshakes.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let runs = if quick { 3 } else { 5 };
    let path = format!("/run/netns/{}", ns.0);
    let inode = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
        .unwrap_or(0);
    let probe = match NetnsProbe::open(&NetnsRef {
        inode,
        name: Some(ns.0.clone()),
        path: path.into(),
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping the baseline dump figure - {e:#}");
            return;
        }
    };
    let mut diag = Vec::new();
    let mut dumped = 0;
    for _ in 0..runs {
        let t = Instant::now();
        dumped = probe
            .dump_tcp(sockdiag::ALL_STATES)
            .map(|v| v.len())
            .unwrap_or(0);
        diag.push(t.elapsed().as_secs_f64());
    }
    let mut proc = Vec::new();
    let mut parsed = 0;
    for _ in 0..runs {
        let t = Instant::now();
        parsed = in_netns(&ns.0, parse_proc_net_tcp);
        proc.push(t.elapsed().as_secs_f64());
    }
    let mut ss = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns.0, "ss", "-tan"])
            .output();
        ss.push(t.elapsed().as_secs_f64());
    }
    let (d, spread) = median(diag);
    let (p, _) = median(proc);
    let (s, _) = median(ss);
    eprintln!(
        "baseline dump: {made} connections made, sock_diag listed {dumped}, /proc/net/tcp {parsed}"
    );
    let label = format!("baseline dump at {}k sockets (sock_diag)", dumped / 1000);
    report(Figure {
        figure: &label,
        value: d * 1e3,
        unit: "ms",
        baseline: Some((p * 1e3, "parsing /proc/net/tcp{,6}")),
        target: "/proc/net/tcp >= 5x slower",
        pass: Some(p >= 5.0 * d),
        spread,
        paired_ratio: None,
    });
    report(Figure {
        figure: &format!("{label} vs ss -tan"),
        value: d * 1e3,
        unit: "ms",
        baseline: Some((s * 1e3, "ss -tan (process)")),
        target: "reported",
        pass: None,
        spread,
        paired_ratio: None,
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; ignore it.
    let quick = args.iter().any(|a| a == "--quick");
    // `--only PART[,PART]`: run some parts (ingest, memory, baseline, storm, latency,
    // capture, serve, names).
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let part = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == name));
    if part("ingest") {
        bench_ingest(quick);
    }
    if part("memory") {
        bench_churn_memory(if quick { 100_000 } else { 500_000 });
        bench_memory(100_000);
        if !quick {
            bench_memory(1_000_000);
        }
    }
    if part("baseline") {
        bench_baseline(if quick { 20_000 } else { 100_000 }, quick);
    }
    if part("storm") {
        storm::bench_storm(quick);
    }
    if part("latency") {
        storm::bench_latency(quick);
    }
    if part("capture") {
        capture::bench_capture(quick);
    }
    if part("serve") {
        serve::bench_scrape(quick);
        serve::bench_churn(quick);
    }
    if part("names") {
        names::bench_names(quick);
    }
}

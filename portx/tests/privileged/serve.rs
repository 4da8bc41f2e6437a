//! `portx serve` end to end: a real Prometheus scraping it while a test namespace runs
//! out of ports, bad HTTP clients, and the capabilities left after start-up.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::support::{Netns, Peer, TempDir, wait};

/// Polls `f` until it gives `Some`, at most `limit`.
fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("{what}: not within {limit:?} (last error: {last})")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request written as given; the status code and body of the answer
/// (0 when the server closed without one).
fn raw(port: u16, request: &[u8], timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // The server may close before reading it all (oversized headers).
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn get(port: u16, path: &str) -> Result<(u16, String)> {
    raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
}

/// A sample's value in a metrics text: the line starting with `series` (name and
/// labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A running `portx serve`.
struct Serve {
    child: Child,
    port: u16,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    fn start(args: &[&str]) -> Result<Self> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_portx"))
            .args(["serve", "-v", "--listen", &listen])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portx serve")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let s = Self {
            child,
            port,
            stderr: rx,
        };
        poll("portx serve healthy", wait(), || {
            if let Some(st) = s.pid_status()? {
                bail!("portx serve exited early: {st}");
            }
            Ok((get(port, "/healthz").map(|r| r.0).unwrap_or(0) == 200).then_some(()))
        })
        .map_err(|e| anyhow::anyhow!("{e:#}; stderr: {}", s.stderr_lines().join(" | ")))?;
        Ok(s)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn pid_status(&self) -> Result<Option<String>> {
        let st = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        Ok((st.is_empty() || st.contains(") Z ")).then(|| "gone".to_owned()))
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    fn metrics(&self) -> Result<String> {
        let (status, body) = get(self.port, "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    /// `VmRSS` in KiB.
    fn rss_kib(&self) -> Result<u64> {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        st.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")
    }

    /// Stops it with SIGTERM, which must be a clean exit.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + wait();
        loop {
            if let Some(st) = self.child.try_wait()? {
                ensure!(st.success(), "portx serve exited with {st} on SIGTERM");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "portx serve ignored SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tool` on PATH, installing Debian's `prometheus` package (which has both) when not.
fn ensure_prometheus() -> Result<()> {
    let have = |t: &str| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("prometheus") && have("promtool") {
        return Ok(());
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        ensure!(install(), "apt-get install -y prometheus failed");
    }
    ensure!(
        have("prometheus") && have("promtool"),
        "prometheus still missing"
    );
    Ok(())
}

fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Our own Prometheus (not the package's service), storage in a temp dir.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

/// `deploy/prometheus/alerts.yml`.
const SHIPPED_RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/alerts.yml"
);

impl Prometheus {
    fn start(target_port: u16) -> Result<Self> {
        let dir = TempDir::new("prom")?;
        let port = free_port()?;
        std::fs::write(
            dir.0.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nscrape_configs:\n- job_name: portx\n  sample_limit: 12000\n  static_configs:\n  - targets: [\"127.0.0.1:{target_port}\"]\n",
                // The rules portx ships, as a user deploys them.
                SHIPPED_RULES
            ),
        )?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus")?;
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// HTTP/1.0 GET, so the answer is not chunked (Prometheus chunks 1.1 answers).
fn get10(port: u16, path: &str) -> Result<(u16, String)> {
    raw(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
}

pub fn prometheus_sees_exhaustion() -> Result<()> {
    if std::env::var_os("PORTX_IN_VM").is_some() {
        eprintln!("skipping test - no Prometheus inside the VM (the host run has it)");
        return Ok(());
    }
    ensure_prometheus()?;
    let ns = Netns::new(Some((3306, 3309)))?;
    let serve = Serve::start(&[])?;
    // promtool on a real scrape.
    let first = serve.metrics()?;
    promtool_check(&first)?;
    // The exporter's own blind spots are exported from the start, read from the kernel.
    for blind in [
        "portx_events_dropped_total",
        "portx_program_runs_skipped_total",
    ] {
        ensure!(
            sample(&first, blind).is_some(),
            "no {blind} in the scrape:\n{first}"
        );
    }
    let prom = Prometheus::start(serve.port)?;
    // HTTP/1.0: Prometheus then answers without chunked encoding.
    let q = |query: &str| -> Result<Vec<f64>> {
        let (status, body) = get10(prom.port, &format!("/api/v1/query?query={}", encode(query)))?;
        ensure!(status == 200, "prometheus: {status} {body}");
        let v: Value = serde_json::from_str(&body).context("prometheus answer is not JSON")?;
        Ok(v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default())
    };
    let long = Duration::from_secs(30);
    poll("prometheus: up == 1", long, || {
        Ok((q("up{job=\"portx\"}")? == vec![1.0]).then_some(()))
    })?;
    let inode = ns.inode;
    let errors = format!("portx_connect_errors_total{{netns=\"{inode}\",errno=\"EADDRNOTAVAIL\"}}");
    let before = q(&errors)?.first().copied().unwrap_or(0.0);

    let mut peer = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9000", "64"])?;
    peer.go()?;
    let failed = peer.expect("error")?;
    ensure!(
        failed == libc::EADDRNOTAVAIL.to_string(),
        "peer ended with {failed}"
    );
    let dest = format!(
        "portx_ephemeral_ports_used{{netns=\"{inode}\",saddr=\"127.0.0.1\",daddr=\"127.0.0.1\",dport=\"9000\"}}"
    );
    poll(
        "prometheus: 4 ports used toward 127.0.0.1:9000",
        long,
        || Ok((q(&dest)? == vec![4.0]).then_some(())),
    )?;
    poll("prometheus: capacity 4", long, || {
        Ok((q(&format!(
            "portx_ephemeral_port_capacity{{netns=\"{inode}\"}}"
        ))? == vec![4.0])
        .then_some(()))
    })?;
    poll("prometheus: EADDRNOTAVAIL counted", long, || {
        Ok(q(&errors)?
            .first()
            .is_some_and(|v| *v > before)
            .then_some(()))
    })?;
    // The shipped rules: the critical utilisation alert (for: 5m) and the
    // EADDRNOTAVAIL one are pending or firing for this namespace.
    let inode_s = inode.to_string();
    poll(
        "prometheus: the shipped exhaustion alerts are pending",
        long,
        || {
            let (status, body) = get10(prom.port, "/api/v1/alerts")?;
            ensure!(status == 200, "alerts: {status}");
            let v: Value = serde_json::from_str(&body)?;
            Ok(v["data"]["alerts"]
                .as_array()
                .is_some_and(|a| {
                    [
                        "PortxEphemeralPortsCritical",
                        "PortxConnectAddressNotAvailable",
                    ]
                    .iter()
                    .all(|name| {
                        a.iter().any(|al| {
                            al["labels"]["alertname"] == *name
                                && al["labels"]["netns"].as_str() == Some(inode_s.as_str())
                                && (al["state"] == "pending" || al["state"] == "firing")
                        })
                    })
                })
                .then_some(()))
        },
    )?;
    peer.finish()?;
    drop(prom);
    serve.stop()
}

pub fn bad_clients_are_bounded() -> Result<()> {
    let ns = Netns::new(Some((20000, 29999)))?;
    let serve = Serve::start(&["--netns", &ns.name])?;
    let port = serve.port;
    let connects = format!("portx_connects_total{{netns=\"{}\"}}", ns.inode);
    let rss_before = serve.rss_kib()?;
    let mut round = 0u16;
    // After each bad client: /metrics answers and the counters still move.
    let mut still_works = |what: &str| -> Result<()> {
        round += 1;
        let before = sample(&serve.metrics()?, &connects).unwrap_or(0.0);
        let target = format!("127.0.0.1:{}", 9000 + round);
        let mut peer = Peer::spawn(&ns, "exhaust", &[&target, "2"])?;
        peer.go()?;
        peer.expect("done")?;
        poll(&format!("connects counted after {what}"), wait(), || {
            Ok((sample(&serve.metrics()?, &connects).unwrap_or(0.0) >= before + 2.0).then_some(()))
        })?;
        peer.finish()
    };

    let (st, _) = raw(port, b"BLAH\r\n\r\n", Duration::from_secs(10))?;
    ensure!(st == 400, "malformed request line: {st}");
    still_works("a malformed request")?;

    ensure!(get(port, "/nope")?.0 == 404, "unknown path");
    let (st, _) = raw(
        port,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        Duration::from_secs(10),
    )?;
    ensure!(st == 405, "POST: {st}");
    let (st, body) = raw(
        port,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )?;
    ensure!(st == 200 && body.is_empty(), "HEAD: {st} {body:?}");
    still_works("404 and 405")?;

    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        big.extend_from_slice(format!("X-Padding-{i}: {}\r\n", "a".repeat(64)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let (st, _) = raw(port, &big, Duration::from_secs(10))?;
    ensure!(st == 431 || st == 0, "oversized headers answered {st}");
    still_works("oversized headers")?;

    // A client that never finishes its request is cut off within the 5 s timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", port))?;
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")?;
    slow.set_read_timeout(Some(Duration::from_secs(15)))?;
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = slow.read_to_end(&mut sink);
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(10),
        "slow client held for {took:?}"
    );
    still_works("a slow client")?;

    // 200 scrapes at once: each answered, or refused cleanly; none hangs.
    let handles: Vec<_> = (0..200)
        .map(|_| {
            thread::spawn(move || {
                raw(
                    port,
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(20),
                )
            })
        })
        .collect();
    let started = Instant::now();
    let mut answered = 0;
    for h in handles {
        match h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?
        {
            Ok((200, body)) if body.contains("portx_build_info") => answered += 1,
            Ok((200, body)) => bail!("a 200 without metrics: {body:.200}"),
            Ok((0 | 503, _)) | Err(_) => {}
            Ok((st, _)) => bail!("a concurrent scrape answered {st}"),
        }
    }
    ensure!(
        started.elapsed() < Duration::from_secs(25),
        "concurrent scrapes hung"
    );
    ensure!(answered > 0, "no concurrent scrape answered");
    still_works("200 concurrent scrapes")?;

    let rss_after = serve.rss_kib()?;
    ensure!(
        rss_after < rss_before + 50 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    eprintln!(
        "serve bad input: {answered}/200 concurrent scrapes answered; RSS {rss_before} -> {rss_after} KiB"
    );
    serve.stop()
}

/// `CapEff` and `CapPrm` of every thread of `pid`.
fn thread_caps(pid: u32) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let st = std::fs::read_to_string(t?.path().join("status"))?;
        let field = |name: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(u64::MAX)
        };
        out.push((field("CapEff:"), field("CapPrm:")));
    }
    Ok(out)
}

pub fn capabilities_dropped_after_start() -> Result<()> {
    // Discovery needs CAP_SYS_ADMIN (21), CAP_SYS_PTRACE (19), CAP_DAC_READ_SEARCH (2).
    let discovery: u64 = (1 << 21) | (1 << 19) | (1 << 2);
    let serve = Serve::start(&[])?;
    let caps = thread_caps(serve.pid())?;
    ensure!(
        caps.iter().all(|&(e, p)| e == discovery && p == discovery),
        "threads' (CapEff, CapPrm): {caps:x?}, want {discovery:x}"
    );
    // A namespace made after start is discovered with those, and shows up.
    let ns = Netns::new(Some((20000, 20003)))?;
    let mut peer = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9000", "3"])?;
    peer.go()?;
    peer.expect("done")?;
    let used = format!(
        "portx_ephemeral_ports_used{{netns=\"{}\",saddr=\"127.0.0.1\",daddr=\"127.0.0.1\",dport=\"9000\"}}",
        ns.inode
    );
    let last = std::cell::RefCell::new(String::new());
    poll(
        "a new namespace's connections in the metrics",
        wait(),
        || {
            *last.borrow_mut() = serve.metrics()?;
            // The namespace is found from its first events, and its dump races
            // them: each socket still counts once.
            let text = last.borrow();
            let connects = format!("portx_connects_total{{netns=\"{}\"}}", ns.inode);
            Ok(
                (sample(&text, &connects) == Some(3.0) && sample(&text, &used) == Some(3.0))
                    .then_some(()),
            )
        },
    )
    .with_context(|| {
        let last = last.borrow();
        let ours: Vec<&str> = last
            .lines()
            .filter(|l| l.contains(&ns.inode.to_string()) && !l.contains("errno"))
            .collect();
        format!("its series: {ours:?}; stderr: {:?}", serve.stderr_lines())
    })?;
    peer.finish()?;
    let lines = serve.stderr_lines();
    ensure!(
        lines
            .iter()
            .any(|l| l.contains("capabilities: kept only 3")),
        "-v does not say what was kept: {lines:?}"
    );
    serve.stop()?;

    // One namespace: no discovery, so nothing (or only CAP_BPF, on old kernels) stays.
    let serve = Serve::start(&["--netns", &ns.name])?;
    let caps = thread_caps(serve.pid())?;
    ensure!(
        caps.iter().all(|&(e, p)| e == p && e & !(1 << 39) == 0),
        "with --netns: (CapEff, CapPrm) {caps:x?}"
    );
    let mut peer = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9001", "2"])?;
    peer.go()?;
    peer.expect("done")?;
    let used = used.replace("9000", "9001");
    poll("connections in the metrics with --netns", wait(), || {
        Ok((sample(&serve.metrics()?, &used) == Some(2.0)).then_some(()))
    })?;
    peer.finish()?;
    serve.stop()
}

/// Refused connect()s count once each in `portx_connects_total`, blocking or not: a
/// non-blocking one returns EINPROGRESS, so its socket's move out of SYN_SENT is all
/// the kernel says of it; a blocking one makes the same move and then fails, and only
/// that failure is a `portx_connect_errors_total{errno="ECONNREFUSED"}`.
pub fn refused_connects_count_once() -> Result<()> {
    const BLOCKING: u64 = 3;
    const NONBLOCKING: u64 = 4;
    let ns = Netns::new(Some((20000, 29999)))?;
    let serve = Serve::start(&["--netns", &ns.name])?;
    let connects = format!("portx_connects_total{{netns=\"{}\"}}", ns.inode);
    let refused = format!(
        "portx_connect_errors_total{{netns=\"{}\",errno=\"ECONNREFUSED\"}}",
        ns.inode
    );
    // Nothing listens on 127.0.0.1:9 in a new namespace.
    let mut peer = Peer::spawn(
        &ns,
        "refused",
        &[
            "127.0.0.1:9",
            &BLOCKING.to_string(),
            &NONBLOCKING.to_string(),
        ],
    )?;
    peer.go()?;
    ensure!(
        peer.expect("done")? == format!("{BLOCKING} {NONBLOCKING}"),
        "the peer's connects were not all refused"
    );
    let counted = |text: &str| (sample(text, &connects), sample(text, &refused));
    let want = (Some((BLOCKING + NONBLOCKING) as f64), Some(BLOCKING as f64));
    let last = std::cell::RefCell::new(String::new());
    poll("the refused connects in the metrics", wait(), || {
        *last.borrow_mut() = serve.metrics()?;
        Ok((counted(&last.borrow()) == want).then_some(()))
    })
    .with_context(|| format!("(connects, refused): {:?}", counted(&last.borrow())))?;
    // And no more later (the ring drains every 10 ms; a scrape a second on).
    thread::sleep(Duration::from_secs(1));
    let later = counted(&serve.metrics()?);
    ensure!(
        later == want,
        "(connects, refused) then {later:?}, want {want:?}"
    );
    peer.finish()?;
    serve.stop()
}

pub fn bad_listen_and_port_in_use_are_one_line() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_portx"))
        .args(["serve", "--listen", &addr])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "port in use: exited 0");
    ensure!(
        err.lines().count() == 1 && err.contains("cannot listen on") && err.contains(&addr),
        "port in use: {err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portx"))
        .args(["serve", "--listen", "localhost"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(64),
        "bad --listen: {:?}",
        out.status
    );
    ensure!(err.contains("is not ADDR:PORT"), "bad --listen: {err}");
    Ok(())
}

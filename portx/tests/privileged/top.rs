//! `portx top` against the kernel's own view (`ss`, used only as the test's oracle).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::support::{Netns, Peer, wait};

/// `ss` state names to portx's.
fn state_name(ss: &str) -> String {
    match ss {
        "ESTAB" => "ESTABLISHED".into(),
        "FIN-WAIT-1" => "FIN_WAIT1".into(),
        "FIN-WAIT-2" => "FIN_WAIT2".into(),
        "SYN-RECV" => "SYN_RECV".into(),
        other => other.replace('-', "_"),
    }
}

/// One line of `ss -tanpH`.
pub struct SsSocket {
    state: String,
    lport: u16,
    pport: u16,
    pid: Option<u32>,
}

/// How many of `kernel`'s sockets are in `state` toward peer port `pport`.
pub fn count_toward(kernel: &[SsSocket], state: &str, pport: u16) -> usize {
    kernel
        .iter()
        .filter(|s| s.state == state && s.pport == pport)
        .count()
}

/// The sockets in `ns`, as two reads of `ss` in a row agree (at most five reads). A
/// sock_diag dump that spans several messages resumes by its place in a hash chain,
/// and may skip a socket when the chain changed meanwhile; one read in CI lacked a
/// TIME_WAIT socket that portx, the connections made and later reads all had.
fn ss(ns: &Netns) -> Result<Vec<SsSocket>> {
    let mut last = ss_lines(ns)?;
    for _ in 0..4 {
        let again = ss_lines(ns)?;
        if again == last {
            break;
        }
        last = again;
    }
    Ok(parse_ss(&last))
}

/// One read of `ss`, for a wait that reads again anyway.
fn ss_once(ns: &Netns) -> Result<Vec<SsSocket>> {
    Ok(parse_ss(&ss_lines(ns)?))
}

/// `ss -tanpH`'s lines in `ns`, sorted.
fn ss_lines(ns: &Netns) -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ss", "-tanpH"])
        .output()
        .context("running ss")?;
    ensure!(out.status.success(), "ss failed");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort_unstable();
    Ok(lines)
}

fn parse_ss(lines: &[String]) -> Vec<SsSocket> {
    let port = |s: &str| {
        s.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| SsSocket {
                state: state_name(f[0]),
                lport: port(f[3]),
                pport: port(f[4]),
                pid: l
                    .split("pid=")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|p| p.parse().ok()),
            })
        })
        .collect()
}

/// Waits until no socket in `ns` is between ESTABLISHED and TIME_WAIT, so counts are
/// stable for the comparison.
fn settle(ns: &Netns) -> Result<()> {
    let deadline = Instant::now() + wait();
    while Instant::now() < deadline {
        let busy = ss_once(ns)?.iter().any(|s| {
            [
                "FIN_WAIT1",
                "FIN_WAIT2",
                "CLOSE_WAIT",
                "LAST_ACK",
                "CLOSING",
                "SYN_SENT",
            ]
            .contains(&s.state.as_str())
        });
        if !busy {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("sockets did not settle")
}

/// A started `portx top`: the process, its stderr lines after start-up, and the
/// lines it wrote until then.
type Started = (std::process::Child, Receiver<String>, Vec<String>);

/// Starts `portx top --json ARGS` and waits until its baseline is taken.
fn start_top(args: &[&str], env: &[(&str, &str)]) -> Result<Started> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portx"))
        .args(["top", "--json"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut startup = Vec::new();
    loop {
        let line = rx
            .recv_timeout(wait())
            .context("portx top did not take its baseline")?;
        if line.starts_with("portx: error") {
            // The whole message: a verifier log's reason is at its end.
            let mut lines = vec![line];
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
                lines.push(l);
            }
            let keep = lines.len().saturating_sub(40);
            bail!("{}\n{}", lines[0], lines[keep.max(1)..].join("\n"));
        }
        let done = line.starts_with("portx: baseline taken");
        startup.push(line);
        if done {
            return Ok((child, rx, startup));
        }
    }
}

/// Stderr lines still to come, for a failure's message (the reader thread has seen
/// the pipe close by now, or does so shortly).
fn rest_of(stderr: &Receiver<String>) -> String {
    std::iter::from_fn(|| stderr.recv_timeout(Duration::from_secs(1)).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running `portx top --once --json`.
pub struct TopOnce {
    child: std::process::Child,
    /// Its stderr lines after start-up, shown if it fails.
    stderr: Receiver<String>,
}

impl TopOnce {
    /// Starts it and waits until its baseline is taken.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with(args, &[])
    }

    /// As `start`, with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let (child, stderr, _) = start_top(&[&["--once"], args].concat(), env)?;
        Ok(Self { child, stderr })
    }

    pub fn snapshot(self) -> Result<Value> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "portx top exited with {}; stderr:\n{}",
                out.status,
                rest_of(&self.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("portx top printed invalid JSON")
    }
}

/// A snapshot `portx top --json` printed, with when it arrived.
pub type Snapshot = (Instant, Value);

/// A running `portx top --json` printing a snapshot every interval, each kept with
/// when it arrived.
pub struct TopStream {
    child: std::process::Child,
    stderr: Receiver<String>,
    snapshots: Receiver<(Instant, Result<Value, String>)>,
    /// What it wrote on stderr while starting (`-v`: the attach points).
    pub startup: Vec<String>,
}

impl TopStream {
    /// Starts it and waits until its baseline is taken.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with(args, &[])
    }

    /// As `start`, with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let (mut child, stderr, startup) = start_top(args, env)?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, snapshots) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let snap = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"));
                if tx.send((Instant::now(), snap)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stderr,
            snapshots,
            startup,
        })
    }

    /// The next snapshot it prints, within [`wait`].
    pub fn next_snapshot(&self) -> Result<Value> {
        let (_, snap) = self
            .snapshots
            .recv_timeout(wait())
            .context("portx top printed no snapshot")?;
        snap.map_err(|e| anyhow::anyhow!("portx top printed invalid JSON: {e}"))
    }

    /// Stops it as Ctrl-C does and returns every snapshot it printed, and the lines it
    /// wrote on stderr after start-up.
    pub fn stop(mut self) -> Result<(Vec<Snapshot>, Vec<String>)> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + wait();
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("portx top did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        ensure!(
            status.success(),
            "portx top exited with {status}; stderr:\n{}",
            rest_of(&self.stderr)
        );
        let snapshots =
            std::iter::from_fn(|| self.snapshots.recv_timeout(Duration::from_secs(2)).ok())
                .map(|(at, snap)| {
                    snap.map(|s| (at, s))
                        .map_err(|e| anyhow::anyhow!("portx top printed invalid JSON: {e}"))
                })
                .collect::<Result<_>>()?;
        let stderr =
            std::iter::from_fn(|| self.stderr.recv_timeout(Duration::from_secs(1)).ok()).collect();
        Ok((snapshots, stderr))
    }
}

impl Drop for TopStream {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn netns_entry<'a>(snap: &'a Value, ns: &Netns) -> Result<&'a Value> {
    snap["netns"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["inode"] == ns.inode))
        .with_context(|| format!("namespace {} missing from {snap}", ns.inode))
}

/// Ports `ns` uses toward 127.0.0.1:`dport` in `snap` (0 while it shows no such
/// destination).
fn used_toward(snap: &Value, ns: &Netns, dport: u16) -> u64 {
    netns_entry(snap, ns)
        .ok()
        .and_then(|n| dest(n, dport).ok())
        .and_then(|d| d["used"].as_u64())
        .unwrap_or(0)
}

pub fn dest(ns_entry: &Value, dport: u16) -> Result<&Value> {
    dest_at(ns_entry, "127.0.0.1", dport)
}

fn dest_at<'a>(ns_entry: &'a Value, daddr: &str, dport: u16) -> Result<&'a Value> {
    ns_entry["destinations"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|d| d["dport"] == dport && d["daddr"] == daddr)
        })
        .with_context(|| format!("no destination {daddr} :{dport} in {ns_entry}"))
}

fn states(d: &Value) -> BTreeMap<String, u64> {
    d["states"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn process_ports(ns_entry: &Value, pid: u32) -> u64 {
    ns_entry["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["pid"] == pid))
        .map_or(0, |p| p["ports"].as_u64().unwrap_or(0))
}

/// Two destinations, three client processes, some connections closed actively.
/// With `started_before`, portx starts after the sockets exist (baseline path). With
/// `v6`, over ::1 (the accounting path's IPv6 records, with and without an owner).
pub fn agrees_with_ss(started_before: bool, v6: bool) -> Result<()> {
    let ns = Netns::new(Some((20000, 29999)))?;
    let ip = if v6 { "::1" } else { "127.0.0.1" };
    let (d1, d2) = (crate::loopback(v6, 9001), crate::loopback(v6, 9002));
    let mut server = Peer::spawn(&ns, "serve", &[&d1, &d2])?;
    server.go()?;
    server.expect("listening")?;
    // (destination, connections, closed by the client)
    let plan = [
        (d1.as_str(), 10, 4),
        (d2.as_str(), 6, 2),
        (d1.as_str(), 5, 0),
    ];
    let mut clients = plan
        .iter()
        .map(|(d, n, c)| Peer::spawn(&ns, "hold", &[d, &n.to_string(), &c.to_string()]))
        .collect::<Result<Vec<_>>>()?;
    // Each client's closed local ports.
    let run = |clients: &mut Vec<Peer>| -> Result<Vec<Vec<u16>>> {
        let mut closed = Vec::new();
        for c in clients.iter_mut() {
            c.go()?;
            let ports = c.expect("done")?;
            closed.push(ports.split(',').filter_map(|p| p.parse().ok()).collect());
        }
        settle(&ns)?;
        Ok(closed)
    };
    let (top, closed) = if started_before {
        let closed = run(&mut clients)?;
        (
            TopOnce::start(&["--netns", &ns.name, "--interval", "1"])?,
            closed,
        )
    } else {
        let top = TopOnce::start(&["--netns", &ns.name, "--interval", "4"])?;
        let closed = run(&mut clients)?;
        (top, closed)
    };
    let snap = top.snapshot()?;
    let kernel = ss(&ns)?;
    for c in clients.iter_mut() {
        c.finish()?;
    }
    server.finish()?;

    let entry = netns_entry(&snap, &ns)?;
    ensure!(
        entry["port_range"] == serde_json::json!([20000, 29999]),
        "{entry}"
    );
    for dport in [9001u16, 9002] {
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for s in kernel
            .iter()
            .filter(|s| s.pport == dport && s.lport != 9001 && s.lport != 9002)
        {
            *want.entry(s.state.clone()).or_default() += 1;
        }
        let d = dest_at(entry, ip, dport)?;
        ensure!(
            states(d) == want,
            "destination :{dport}: portx {:?}, ss {want:?}",
            states(d)
        );
        ensure!(d["used"].as_u64() == Some(want.values().sum()), "used: {d}");
        ensure!(d["capacity"] == 10000, "capacity: {d}");
    }
    // Per process: live sockets as ss attributes them, plus (when portx saw them
    // close) the TIME_WAITs each process left behind that the kernel still holds.
    for ((peer, (to, _, n_closed)), closed) in clients.iter().zip(plan).zip(&closed) {
        ensure!(closed.len() == n_closed, "peer closed {closed:?}");
        let live = kernel
            .iter()
            .filter(|s| s.pid == Some(peer.pid) && s.lport != 9001 && s.lport != 9002)
            .count() as u64;
        // Toward this peer's destination only: a source port is unique per
        // destination, not per host, so another client's TIME_WAIT toward the other
        // destination may hold the same one.
        let dport: u16 = to.rsplit(':').next().unwrap_or("").parse()?;
        let timewait = kernel
            .iter()
            .filter(|s| s.state == "TIME_WAIT" && s.pport == dport && closed.contains(&s.lport))
            .count() as u64;
        let want = live + if started_before { 0 } else { timewait };
        let got = process_ports(entry, peer.pid);
        ensure!(
            got == want,
            "pid {}: portx {got} ports, expected {want} ({live} live, {timewait} of \
             {closed:?} in TIME_WAIT); snapshot {entry}",
            peer.pid
        );
    }
    ensure!(snap["dropped_events"] == 0, "{snap}");
    Ok(())
}

/// A printed snapshot counts every connection made before its `time`, those still in
/// a per-CPU batch or in the ring when it is printed included. A running drain leaves
/// the last 10 to 40 ms behind, and a snapshot used to count only what it had handed
/// out. A client connects every 2 ms while `top --once` prints. `env`: with
/// `PORTX_BATCH=off`, events go to the ring one by one.
pub fn once_counts_up_to_its_time(env: &[(&str, &str)]) -> Result<()> {
    let ns = Netns::new(None)?;
    let mut client = Peer::spawn(&ns, "paced", &["127.0.0.1:9000", "5000", "2"])?;
    let top = TopOnce::start_with(&["--netns", &ns.name, "--interval", "1"], env)?;
    client.go()?;
    let snap = top.snapshot()?;
    // The client stops when its stdin closes; its lines wait in the pipe's reader.
    client.finish()?;
    // (called, returned) of each connect().
    let connected = client
        .until_done::<String>("at ")?
        .iter()
        .map(|l| -> Result<(i128, i128)> {
            let (called, returned) = l.split_once(' ').context("at S E")?;
            Ok((called.parse()?, returned.parse()?))
        })
        .collect::<Result<Vec<_>>>()?;

    let time = snap["time"]
        .as_str()
        .with_context(|| format!("no time in {snap}"))?;
    // The connect() times written as the snapshot's is (portx's own RFC 3339, UTC, to
    // the millisecond): strings of one width, so they compare as the times do.
    let stamp = portx::views::time::rfc3339;
    let (first, last) = (
        stamp(connected[0].1),
        stamp(connected[connected.len() - 1].1),
    );
    ensure!(
        first.as_str() < time && time < last.as_str(),
        "the snapshot's time {time} is not between the first and last connect() \
         ({first} and {last}): it was not printed while the client connected"
    );
    // The time has milliseconds; a connection is stamped before connect() returns.
    let before = connected
        .iter()
        .filter(|&&(_, returned)| stamp(returned + 2_000_000).as_str() < time)
        .count() as u64;
    // Every connection counted had been asked for by the time (its move to SYN_SENT
    // is stamped inside the call), give or take a millisecond for the two clocks. Not
    // when it returned: in an emulated VM a connect() under way at the print has
    // returned over half a second after it.
    let begun = connected
        .iter()
        .filter(|&&(called, _)| stamp(called - 1_000_000).as_str() <= time)
        .count() as u64;
    let d = dest(netns_entry(&snap, &ns)?, 9000)?;
    let got: u64 = states(d).values().sum();
    ensure!(
        got >= before,
        "portx counted {got} connections toward :9000 at {time}, but {before} had \
         returned from connect() by then: {d}"
    );
    ensure!(
        got <= begun,
        "portx counted {got} connections at {time}, more than the {begun} connect() \
         calls made by then"
    );
    ensure!(snap["dropped_events"] == 0, "{snap}");
    Ok(())
}

/// The exhaustion scenario reaches 100% and names the failing process.
pub fn exhaustion_reaches_full() -> Result<()> {
    let ns = Netns::new(Some((20000, 20003)))?;
    let mut peer = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9000", "64"])?;
    let top = TopOnce::start(&["--netns", &ns.name, "--interval", "3"])?;
    peer.go()?;
    let mut ports = 0;
    loop {
        let l = peer.line()?;
        if l.starts_with("port ") {
            ports += 1;
        } else if l == "done" {
            break;
        }
    }
    let snap = top.snapshot()?;
    peer.finish()?;
    let entry = netns_entry(&snap, &ns)?;
    let d = dest(entry, 9000)?;
    ensure!(ports == 4, "an even range of 4 gives 4 ports, got {ports}");
    ensure!(d["used"] == 4 && d["capacity"] == 4, "{d}");
    ensure!(d["owners"][0]["pid"] == peer.pid, "{d}");
    let f = snap["failures"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["event"] == "connect_error"))
        .context("no failure")?;
    ensure!(f["error"] == "EADDRNOTAVAIL" && f["pid"] == peer.pid, "{f}");
    ensure!(f["holder"]["pid"] == peer.pid, "{f}");
    ensure!(
        f["explanation"]
            .as_str()
            .unwrap_or("")
            .starts_with("no free source port toward 127.0.0.1:9000: 4 of 4"),
        "{f}"
    );
    Ok(())
}

/// Lets a `bind` peer go and checks that its bind() failed with EADDRINUSE.
fn bind_fails_in_use(server: &mut Peer) -> Result<()> {
    server.go()?;
    ensure!(
        server.line()? == format!("error {}", libc::EADDRINUSE),
        "bind did not fail with EADDRINUSE"
    );
    Ok(())
}

/// `server`'s failed bind() of 3306 in `snap`, checked to name as the holder
/// `holder`'s connection from 3306 to 127.0.0.1:9000, an ephemeral port.
fn bind_failure_held_by<'a>(snap: &'a Value, server: &Peer, holder: &Peer) -> Result<&'a Value> {
    let f = snap["failures"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["event"] == "bind_error"))
        .with_context(|| format!("no bind failure in {snap}"))?;
    ensure!(f["pid"] == server.pid && f["sport"] == 3306, "{f}");
    let h = &f["holder"];
    ensure!(
        h["pid"] == holder.pid && h["sport"] == 3306 && h["dport"] == 9000,
        "{f}"
    );
    ensure!(h["ephemeral"] == true && h["state"] == "ESTABLISHED", "{f}");
    Ok(f)
}

/// The MySQL-on-3306 outage: the failure names the process whose ephemeral port it is.
pub fn bind_conflict_names_holder() -> Result<()> {
    // An even-sized range: the kernel then hands out every port, 3306 included (on
    // an odd one it guarantees one less, and 3306 may be the one left out).
    let ns = Netns::new(Some((3306, 3309)))?;
    let mut holder = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9000", "64"])?;
    let mut server = Peer::spawn(&ns, "bind", &["0.0.0.0:3306"])?;
    let top = TopOnce::start(&["--netns", &ns.name, "--interval", "3"])?;
    holder.go()?;
    while holder.line()? != "done" {}
    bind_fails_in_use(&mut server)?;
    let snap = top.snapshot()?;
    server.finish()?;
    holder.finish()?;
    let f = bind_failure_held_by(&snap, &server, &holder)?;
    ensure!(
        f["explanation"]
            .as_str()
            .unwrap_or("")
            .contains("ip_local_reserved_ports=3306"),
        "{f}"
    );
    Ok(())
}

/// An `exhaust` peer in `ns` connecting to its own listener on 127.0.0.1:9000 until
/// connect() fails (64 at most), holding what it got: the peer and its local ports.
fn exhaust(ns: &Netns) -> Result<(Peer, Vec<u16>)> {
    let mut peer = Peer::spawn(ns, "exhaust", &["127.0.0.1:9000", "64"])?;
    peer.go()?;
    let ports = peer.until_done("port ")?;
    Ok((peer, ports))
}

/// The same outage after a restart, with mysqld's connections open when `top`
/// started: the clients close first (so the accounting path sends nothing of mysqld's
/// accepted sockets closing), mysqld stops, a client takes 3306 from the range and
/// the new listener's bind() fails. The holder named is that client, not a baseline
/// socket of the old mysqld: the drift check found the accepted connections gone,
/// and the listener's close found the baseline listener by address and port.
pub fn bind_conflict_after_restart_names_holder() -> Result<()> {
    let ns = Netns::new(Some((3306, 3309)))?;
    let mut mysqld = Peer::spawn(&ns, "serve", &["0.0.0.0:3306"])?;
    mysqld.go()?;
    mysqld.expect("listening")?;
    // Three connections from the rest of the range (the listener keeps 3306 out).
    let mut clients = Peer::spawn(&ns, "hold", &["127.0.0.1:3306", "3", "0"])?;
    clients.go()?;
    clients.expect("done")?;
    let top = TopOnce::start(&[
        "--netns",
        &ns.name,
        "--interval",
        "8",
        "--drift-interval",
        "0.5",
    ])?;
    clients.finish()?;
    mysqld.finish()?;
    let deadline = Instant::now() + wait();
    while ss_once(&ns)?.iter().any(|s| s.lport == 3306) {
        ensure!(Instant::now() < deadline, "mysqld's sockets did not close");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two drift checks.
    std::thread::sleep(Duration::from_millis(1200));
    let (mut holder, ports) = exhaust(&ns)?;
    ensure!(ports.contains(&3306), "the client got ports {ports:?}");
    let mut restarted = Peer::spawn(&ns, "bind", &["0.0.0.0:3306"])?;
    bind_fails_in_use(&mut restarted)?;
    let snap = top.snapshot()?;
    restarted.finish()?;
    holder.finish()?;
    ensure!(snap["drift"]["baseline_gone"] == 3, "{}", snap["drift"]);
    bind_failure_held_by(&snap, &restarted, &holder)?;
    Ok(())
}

/// A `server` peer of kind `kind` listening on `listen` in `ns`, and a `hold` peer
/// that opened `n` connections to `target` and closed the first `close` of them (the
/// rest held), both running.
fn serve_and_hold(
    ns: &Netns,
    kind: &str,
    listen: &str,
    target: &str,
    n: usize,
    close: usize,
) -> Result<(Peer, Peer)> {
    let mut server = Peer::spawn(ns, kind, &[listen])?;
    server.go()?;
    server.expect("listening")?;
    let mut clients = Peer::spawn(ns, "hold", &[target, &n.to_string(), &close.to_string()])?;
    clients.go()?;
    ensure!(clients.line()?.starts_with("done"), "hold did not finish");
    Ok((server, clients))
}

/// A listener with a backlog of 0 on a port inside the range. The accounting path
/// tells an accepted socket apart in the kernel by the backlog it inherits, so this
/// listener's children reach the model, first at SYN_RECV -> ESTABLISHED: they hold
/// the listener's port, not one of the range, and are not counted.
pub fn backlog0_children_not_counted() -> Result<()> {
    let ns = Netns::new(Some((3306, 3309)))?;
    let top = TopOnce::start(&["--netns", &ns.name, "--interval", "3"])?;
    let (mut server, mut clients) = serve_and_hold(
        &ns,
        "serve-backlog0",
        "0.0.0.0:3307",
        "127.0.0.1:3307",
        2,
        0,
    )?;
    let snap = top.snapshot()?;
    clients.finish()?;
    server.finish()?;
    let entry = netns_entry(&snap, &ns)?;
    let d = dest(entry, 3307)?;
    ensure!(
        d["used"] == 2 && d["owners"][0]["pid"] == clients.pid,
        "{d}"
    );
    let dests = entry["destinations"].as_array().map_or(0, Vec::len);
    ensure!(
        dests == 1,
        "only the clients' destination is counted: {entry}"
    );
    ensure!(process_ports(entry, server.pid) == 0, "{entry}");
    Ok(())
}

/// Whether process `pid` holds open an `ip_local_port_range` file that reads `range`:
/// the prober's handle on a namespace with that range, which keeps it alive.
fn holds_port_range_file(pid: u32, range: &str) -> Result<bool> {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let path = fd?.path();
        let is_range =
            std::fs::read_link(&path).is_ok_and(|l| l.ends_with("net/ipv4/ip_local_port_range"));
        if is_range && std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == range) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A namespace deleted while `top` runs (a container that stopped): the prober lets
/// go of its handles, which kept it alive, and it leaves the snapshot.
pub fn forgets_deleted_namespaces() -> Result<()> {
    let top = TopStream::start(&["--interval", "0.5", "--drift-interval", "0.5"])?;
    let ns = Netns::new(Some((40100, 40199)))?;
    let inode = ns.inode;
    // A process in it makes a connection: its events name the namespace, and the
    // prober opens it.
    let (mut server, mut client) =
        serve_and_hold(&ns, "serve", "127.0.0.1:9000", "127.0.0.1:9000", 1, 0)?;
    let listed = |snap: &Value| {
        snap["netns"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["inode"] == inode))
    };
    let deadline = Instant::now() + wait();
    while !listed(&top.next_snapshot()?) {
        ensure!(Instant::now() < deadline, "netns {inode} was never listed");
    }
    let pid = top.child.id();
    ensure!(
        holds_port_range_file(pid, "40100\t40199")?,
        "the prober has no handle on netns {inode}"
    );
    client.finish()?;
    server.finish()?;
    drop(ns);
    let deadline = Instant::now() + wait();
    while listed(&top.next_snapshot()?) {
        ensure!(
            Instant::now() < deadline,
            "netns {inode} is still listed after it was deleted"
        );
    }
    ensure!(
        !holds_port_range_file(pid, "40100\t40199")?,
        "the prober still holds deleted netns {inode}"
    );
    top.stop()?;
    Ok(())
}

/// A namespace with no process in it and no name, kept alive by the sockets a process
/// made in it before it moved elsewhere: `top` keeps it (its sockets' events still
/// come, and name a process of another namespace, which cannot lead back to it), and
/// lets go of it once those sockets are closed.
pub fn keeps_namespaces_held_by_sockets() -> Result<()> {
    let top = TopStream::start(&["--interval", "0.5", "--drift-interval", "0.5"])?;
    let ns = Netns::new(Some((40200, 40299)))?;
    let inode = ns.inode;
    // It moves to the test's own namespace.
    let host = format!("/proc/{}/ns/net", std::process::id());
    let mut peer = Peer::spawn(&ns, "elsewhere", &["127.0.0.1:7000", &host])?;
    let netns_of = |snap: &Value| -> Option<Value> {
        snap["netns"]
            .as_array()?
            .iter()
            .find(|n| n["inode"] == inode)
            .cloned()
    };
    // Its listen() names the namespace, and the prober opens it through the peer.
    peer.go()?;
    peer.expect("listening")?;
    let deadline = Instant::now() + wait();
    while netns_of(&top.next_snapshot()?).is_none() {
        ensure!(Instant::now() < deadline, "netns {inode} was never listed");
    }
    peer.go()?;
    peer.expect("moved")?;
    drop(ns);
    // Unreachable for two sweeps in a row is what lets a namespace go: wait for
    // several (one per drift interval).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        ensure!(
            netns_of(&top.next_snapshot()?).is_some(),
            "netns {inode} was let go of while sockets in it were open"
        );
    }
    ensure!(
        holds_port_range_file(top.child.id(), "40200\t40299")?,
        "the prober let go of netns {inode}"
    );
    peer.go()?;
    let port: u64 = peer.expect("port")?.parse()?;
    let counted = |snap: &Value| {
        netns_of(snap).is_some_and(|n| {
            n["destinations"].as_array().is_some_and(|ds| {
                ds.iter().any(|d| {
                    d["dport"] == 7000
                        && d["used"] == 1
                        && d["owners"][0]["pid"] == u64::from(peer.pid)
                })
            })
        })
    };
    let deadline = Instant::now() + wait();
    while !counted(&top.next_snapshot()?) {
        ensure!(
            Instant::now() < deadline,
            "port {port} toward 127.0.0.1:7000 never counted in netns {inode}"
        );
    }
    peer.finish()?;
    let deadline = Instant::now() + wait();
    while netns_of(&top.next_snapshot()?).is_some() {
        ensure!(
            Instant::now() < deadline,
            "netns {inode} still listed after its last socket closed"
        );
    }
    top.stop()?;
    Ok(())
}

/// `--netns`: the prober opens that namespace alone (the kernel filter sends no other
/// namespace's events), holding no handle on the others and checking none of them.
pub fn netns_flag_opens_that_namespace_alone() -> Result<()> {
    let shown = Netns::new(Some((40300, 40399)))?;
    let other = Netns::new(Some((40400, 40499)))?;
    let top = TopStream::start(&["--netns", &shown.name, "--interval", "0.5"])?;
    let snap = top.next_snapshot()?;
    let listed: Vec<&Value> = snap["netns"].as_array().into_iter().flatten().collect();
    ensure!(
        listed.len() == 1 && listed[0]["inode"] == shown.inode,
        "{snap}"
    );
    let pid = top.child.id();
    ensure!(
        holds_port_range_file(pid, "40300\t40399")?,
        "no handle on the namespace shown"
    );
    ensure!(
        !holds_port_range_file(pid, "40400\t40499")?,
        "a handle on namespace {} besides the one shown",
        other.inode
    );
    top.stop()?;
    Ok(())
}

/// The capacity rule against the kernel: connects until EADDRNOTAVAIL.
pub fn capacity_matches_kernel() -> Result<()> {
    use portx::model::capacity::capacity;
    /// (range, reserved ports, whether the count is exact)
    type Case = ((u16, u16), Option<(u16, u16)>, bool);
    // Even windows are exact; an odd range may give one more.
    let cases: [Case; 5] = [
        ((20000, 20003), None, true),
        ((20000, 20005), None, true),
        ((20000, 20005), Some((20002, 20002)), true),
        ((20000, 20004), None, false),
        ((20001, 20005), None, false),
    ];
    for ((lo, hi), reserved, exact) in cases {
        let ns = Netns::new(Some((lo, hi)))?;
        if let Some((a, b)) = reserved {
            ns.sysctl("net/ipv4/ip_local_reserved_ports", &format!("{a}-{b}"))?;
        }
        let (mut peer, got) = exhaust(&ns)?;
        peer.finish()?;
        let res: Vec<(u16, u16)> = reserved.into_iter().collect();
        let cap = capacity(lo, hi, &res) as usize;
        let ok = if exact {
            got.len() == cap
        } else {
            (cap..=cap + 1).contains(&got.len())
        };
        ensure!(
            ok,
            "range {lo}-{hi} reserved {reserved:?}: kernel gave {} ports {got:?}, model says {cap}",
            got.len()
        );
        if let Some((a, _)) = reserved {
            ensure!(!got.contains(&a), "kernel handed out reserved port {a}");
        }
    }
    Ok(())
}

/// A `server_role` peer on `addr` in `ns`, and a client that opens `count` connections
/// to it and closes them all first, under `top --once` with a drift check every 0.5 s:
/// top's snapshot after 4 s, and the kernel's sockets then (the namespace settled
/// first where the server closes too).
pub fn closes_under_drift_checks(
    ns: &Netns,
    server_role: &str,
    addr: &str,
    count: usize,
) -> Result<(Value, Vec<SsSocket>)> {
    let top = TopOnce::start(&[
        "--netns",
        &ns.name,
        "--interval",
        "4",
        "--drift-interval",
        "0.5",
    ])?;
    let (mut server, mut client) = serve_and_hold(ns, server_role, addr, addr, count, count)?;
    if server_role != "sink" {
        settle(ns)?;
    }
    let snap = top.snapshot()?;
    let kernel = ss(ns)?;
    client.finish()?;
    server.finish()?;
    Ok((snap, kernel))
}

/// The TIME_WAIT model disagrees with the kernel when the kernel refuses timewait
/// sockets (`tcp_max_tw_buckets` reached): the drift check corrects it and says so.
pub fn drift_check_corrects_timewait() -> Result<()> {
    let ns = Netns::new(Some((20000, 29999)))?;
    ns.sysctl("net/ipv4/tcp_max_tw_buckets", "2")?;
    let (snap, kernel) = closes_under_drift_checks(&ns, "serve", "127.0.0.1:9001", 5)?;
    let kernel_tw = kernel.iter().filter(|s| s.state == "TIME_WAIT").count() as u64;
    // The kernel's limit is a racy count (inet_twsk_alloc reads tw_refcount while
    // other timewait sockets come and go), so it may keep one more or one fewer than
    // 2 (1, and once 0, were seen on 6.1 under emulation); what matters is that it
    // refused some and the model follows it.
    ensure!(
        kernel_tw < 5,
        "the kernel kept {kernel_tw} TIME_WAIT sockets of 5 with tcp_max_tw_buckets=2"
    );
    let d = dest(netns_entry(&snap, &ns)?, 9001)?;
    ensure!(
        states(d).get("TIME_WAIT") == Some(&kernel_tw),
        "model after drift check: {d}"
    );
    let drift = &snap["drift"];
    ensure!(drift["checks"].as_u64() >= Some(1), "{drift}");
    // The check removed what the kernel refused. Where portx sees timewait sockets
    // die (fentry inet_twsk_kill, on the 6.12 VM), one the kernel kept and then freed
    // leaves the model through that event instead (seen once: removed 3 with one
    // TIME_WAIT left in the kernel and in the model), so the count is a bound.
    let removed = drift["removed"].as_u64().unwrap_or(0);
    ensure!(
        (1..=5 - kernel_tw).contains(&removed) && drift["added"] == 0,
        "{drift}"
    );
    Ok(())
}

/// Clients that close first toward a server that never closes: the kernel keeps each
/// port in a timewait socket in FIN_WAIT2 (for `tcp_fin_timeout`, 60 s), which the
/// drift check must keep counted with TIME_WAIT, not remove as gone, and which
/// connect() may not take over even where it would take TIME_WAIT ports.
pub fn drift_check_keeps_fin_wait2_timewait() -> Result<()> {
    let ns = Netns::new(Some((20000, 29999)))?;
    // Where TIME_WAIT would be taken over (tw_reuse 1), these may not be.
    ns.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
    let (snap, kernel) = closes_under_drift_checks(&ns, "sink", "127.0.0.1:9002", 3)?;
    let fin_wait2 = count_toward(&kernel, "FIN_WAIT2", 9002);
    ensure!(
        fin_wait2 == 3,
        "the kernel has {fin_wait2} of 3 in FIN_WAIT2"
    );
    // Several checks ran (one per drift interval); `removed` is not asserted: it
    // counts every watched namespace's corrections, the host's included.
    let drift = &snap["drift"];
    ensure!(drift["checks"].as_u64() >= Some(3), "{drift}");
    // Shown in FIN_WAIT2, as ss shows them, and still used.
    let d = dest(netns_entry(&snap, &ns)?, 9002)?;
    let st = states(d);
    ensure!(
        d["used"] == 3
            && st.get("FIN_WAIT2") == Some(&3)
            && !st.contains_key("TIME_WAIT")
            && d["reusable"] == 0,
        "model after the drift checks: {d}"
    );
    Ok(())
}

/// Drift checks every 20 ms while clients keep closing toward a server that never
/// closes: a check waits for the events stamped before its dump, so it does not find
/// timewait sockets the model has not been told of (`added` stays near 0), and no snapshot
/// counts more ports than the clients closed. Applied before a close still in a
/// per-CPU batch, a check added most of these ports itself (44 of 50 batched, 38
/// unbatched, when measured), and until the close came the port counted twice, beside
/// the live socket (likely the 16 ports used for 8 that CI saw in `check --watch`).
/// `env` picks the event path (batched or not).
pub fn drift_check_waits_for_earlier_events(env: &[(&str, &str)]) -> Result<()> {
    const ROUNDS: usize = 25;
    const PER_ROUND: usize = 2;
    let ns = Netns::new(Some((20000, 20999)))?;
    let top = TopStream::start_with(
        &[
            "--netns",
            &ns.name,
            "--interval",
            "0.02",
            "--drift-interval",
            "0.02",
        ],
        env,
    )?;
    let mut server = Peer::spawn(&ns, "sink", &["127.0.0.1:9003"])?;
    server.go()?;
    server.expect("listening")?;
    let used = |snap: &Value| used_toward(snap, &ns, 9003);
    let mut closed = 0;
    for round in 0..ROUNDS {
        let n = PER_ROUND.to_string();
        let mut clients = Peer::spawn(&ns, "hold", &["127.0.0.1:9003", &n, &n])?;
        clients.go()?;
        ensure!(clients.line()?.starts_with("done"), "hold did not finish");
        clients.finish()?;
        closed += PER_ROUND as u64;
        // Snapshots and drift checks while the closes make their way.
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            let snap = top.next_snapshot()?;
            let u = used(&snap);
            ensure!(
                u <= closed,
                "round {round}: {u} ports used toward :9003, {closed} closed: {}",
                netns_entry(&snap, &ns)?
            );
        }
    }
    let deadline = Instant::now() + wait();
    let snap = loop {
        let snap = top.next_snapshot()?;
        if used(&snap) == closed {
            break snap;
        }
        ensure!(
            Instant::now() < deadline,
            "{} ports used toward :9003, {closed} closed",
            used(&snap)
        );
    };
    // Only sockets whose close never came may be added. Now and then a round's client
    // sockets reach TIME_WAIT without portx seeing their moves out of FIN_WAIT1: 7
    // runs in about 90 here, two sockets of one round in each of the three traced. The
    // tracepoint runs no program for those moves (docs/missed-moves.md shows it with
    // bpftrace alone). The model holds such a socket as live until checks a second
    // apart find its timewait socket, or a new one takes its address
    // (`closes_missed`), and the check then rightly adds its timewait socket. Before
    // the check waited for the events, it added 38-44 of these 50 ports.
    let drift = &snap["drift"];
    ensure!(
        drift["checks"].as_u64() >= Some(ROUNDS as u64)
            && drift["added"]
                .as_u64()
                .zip(drift["closes_missed"].as_u64())
                .is_some_and(|(added, missed)| added <= missed)
            && drift["removed"] == 0,
        "the drift checks corrected what the events were bringing: {drift}"
    );
    server.finish()?;
    top.stop()?;
    Ok(())
}

/// The kernel frees a timewait socket when its timer fires, up to a timer-wheel bucket
/// after its expiry (256 ms for a 5 s timeout at HZ=250), and until then a dump lists it
/// with no time left. Here clients close toward a server that never closes, in a
/// namespace with `tcp_fin_timeout` 5: their orphaned FIN_WAIT2 sockets become timewait
/// sockets that expire 5 s later. With drift checks every 20 ms, the model takes the
/// kernel's expiry, lets them go at it, and does not add them back while the kernel
/// still lists them. Before, 20 of 20 were added back in 2 runs of 3; with a 60 s
/// TIME_WAIT (freed up to 2 s late) and the default 10 s checks, about one socket in
/// ten would be, so `added` grew for as long as portx ran.
pub fn drift_check_leaves_timewait_past_its_expiry() -> Result<()> {
    const N: u64 = 20;
    let ns = Netns::new(Some((20000, 29999)))?;
    ns.sysctl("net/ipv4/tcp_fin_timeout", "5")?;
    let top = TopStream::start(&[
        "--netns",
        &ns.name,
        "--interval",
        "0.1",
        "--drift-interval",
        "0.02",
    ])?;
    let mut server = Peer::spawn(&ns, "sink", &["127.0.0.1:9004"])?;
    server.go()?;
    server.expect("listening")?;
    let mut clients = Peer::spawn(&ns, "hold", &["127.0.0.1:9004", "20", "20"])?;
    clients.go()?;
    ensure!(clients.line()?.starts_with("done"), "hold did not finish");
    clients.finish()?;
    let used = |snap: &Value| used_toward(snap, &ns, 9004);
    // Counted, then let go at their expiry.
    let deadline = Instant::now() + wait();
    let mut seen_all = false;
    loop {
        let snap = top.next_snapshot()?;
        seen_all |= used(&snap) == N;
        if seen_all && used(&snap) == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{} ports used toward :9004 (all {N} seen: {seen_all})",
            used(&snap)
        );
    }
    // Until the kernel has freed them all, and a while after.
    let deadline = Instant::now() + wait();
    while count_toward(&ss_once(&ns)?, "FIN_WAIT2", 9004) > 0 {
        ensure!(
            Instant::now() < deadline,
            "the kernel kept its timewait sockets"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let snap = top.next_snapshot()?;
    let drift = &snap["drift"];
    ensure!(
        used(&snap) == 0 && drift["added"] == 0 && drift["checks"].as_u64() >= Some(20),
        "{} ports used, drift {drift}",
        used(&snap)
    );
    server.finish()?;
    top.stop()?;
    Ok(())
}

/// Drift checks every 20 ms through a storm of short connections find nothing to
/// correct: two clients on two CPUs, each with its server, every client closing first
/// and so ending in TIME_WAIT, on a range half the size of their connections, so that
/// new connections take over TIME_WAIT 4-tuples. A dump reads the table while that
/// happens (it lists a timewait socket a connection then takes over), and the kernel
/// lists a timewait socket before it reports the close that made it; either way the
/// model holds the 4-tuple as a live socket, and an entry added for it counted the
/// port twice. Before the fix, 53-89 entries were added in every run on the host; now
/// at most a few corrections of 40,000 connections remain (see below).
pub fn drift_checks_during_a_storm_correct_nothing() -> Result<()> {
    // Per client; fewer under TCG, where every connection costs a hundred times more.
    let in_vm = std::env::var_os("PORTX_IN_VM").is_some();
    let n: u64 = if in_vm { 1_000 } else { 20_000 };
    const PORTS: [u16; 2] = [9000, 9001];
    // Half as many ports as each client's connections: clients take over TIME_WAIT
    // 4-tuples (tcp_tw_reuse, on loopback by default).
    let ns = Netns::new(Some((20000, 20000 + n as u16 / 2 - 1)))?;
    let top = TopStream::start(&[
        "--netns",
        &ns.name,
        "--interval",
        "0.5",
        "--drift-interval",
        "0.02",
    ])?;
    // Two clients and their servers at once: a close on each CPU while a dump runs.
    let mut peers = PORTS
        .iter()
        .map(|p| Peer::spawn(&ns, "churn", &[&format!("127.0.0.1:{p}"), &n.to_string()]))
        .collect::<Result<Vec<_>>>()?;
    for p in &mut peers {
        p.go()?;
    }
    for p in &mut peers {
        let done: u64 = p.expect("done")?.parse()?;
        ensure!(done == n, "a client made only {done} connections of {n}");
    }
    for p in &mut peers {
        p.finish()?;
    }
    let used = |snap: &Value| -> u64 { PORTS.iter().map(|&p| used_toward(snap, &ns, p)).sum() };
    settle(&ns)?;
    let kernel = ss(&ns)?;
    let all: u64 = PORTS
        .iter()
        .map(|&p| count_toward(&kernel, "TIME_WAIT", p) as u64)
        .sum();
    let deadline = Instant::now() + wait();
    let snap = loop {
        let snap = top.next_snapshot()?;
        if used(&snap) == all {
            break snap;
        }
        ensure!(
            Instant::now() < deadline,
            "{} ports used, the kernel has {all} in TIME_WAIT; drift {}",
            used(&snap),
            snap["drift"]
        );
    };
    // A reuse leaves a window of microseconds where neither rule applies: the kernel
    // has freed the timewait socket and not yet reported the new connection's port (a
    // dump then misses an entry the model holds; with `TimewaitEnd`, as in the VMs, the
    // model has let it go already). Seen once in 4 host runs of 176 checks: one
    // removed, one added. And a socket whose close never came (`closes_missed`, see
    // `drift_check_waits_for_earlier_events`) leaves a timewait socket the check
    // rightly adds. Before these rules: 53-89 added in every run.
    let drift = &snap["drift"];
    let corrected = drift["added"]
        .as_u64()
        .unwrap_or(u64::MAX)
        .saturating_add(drift["removed"].as_u64().unwrap_or(u64::MAX));
    let missed = drift["closes_missed"].as_u64().unwrap_or(0);
    // Under TCG one clean CI run (6.12, 2026-12-04) saw 7 added in 93 checks of these
    // 2,000 connections, before `closes_missed` was counted; two runs since, 0 and 0.
    // Cause not found: the VMs allow more, and the host's bound still catches the
    // 53-89 of the old rules. `used` above must match the kernel either way.
    let allowed = if in_vm { 10 } else { 4 };
    ensure!(
        drift["checks"].as_u64() >= Some(10) && corrected <= allowed + missed,
        "the drift checks corrected what the events brought: {drift}"
    );
    top.stop()?;
    Ok(())
}

/// The accounting path (what `top` and `serve` load) sends what the model counts and
/// nothing else: of a loopback connection's ten state changes and its connect(), the
/// client's four that change its accounting (CLOSE -> SYN_SENT names the owner,
/// SYN_SENT -> ESTABLISHED the port, ESTABLISHED -> FIN_WAIT1 the close, FIN_WAIT2 ->
/// CLOSE the TIME_WAIT); none of the accepted socket's, no move between two closing
/// states, no connect event. Counted, by kind and by move, from top's `-v` closing
/// line (so a count that is off says which event it was), with its model's answer
/// checked too. `env` picks the attach path; `connect` is how top's `-v` must
/// say connect() is served.
pub fn accounting_path_sends_what_the_model_counts(
    env: &[(&str, &str)],
    paths: &[&str],
) -> Result<()> {
    let batched = !env.contains(&("PORTX_BATCH", "off"));
    const N: u64 = 40;
    let ns = Netns::new(None)?;
    let mut peer = Peer::spawn(&ns, "burst", &["127.0.0.1:9000", &N.to_string()])?;
    let top = TopStream::start_with(&["--netns", &ns.name, "-v", "--interval", "1"], env)?;
    let startup = top.startup.clone();
    peer.go()?;
    ensure!(
        peer.line()? == format!("done {N}"),
        "the burst did not finish"
    );
    // The listener closes as the peer exits.
    peer.finish()?;
    // Two drains of the ring (every 10 ms) and a print (every second) later.
    std::thread::sleep(Duration::from_millis(1500));
    let (snaps, stderr) = top.stop()?;
    // "E events (B bytes) read from the ring in R records"
    let closing = stderr
        .iter()
        .find(|l| l.contains(" read from the ring in "))
        .with_context(|| format!("no ring count in top's closing lines: {stderr:?}"))?;
    let number_before = |word: &str| -> Result<u64> {
        let (before, _) = closing
            .split_once(word)
            .with_context(|| format!("no `{word}` in {closing:?}"))?;
        Ok(before.rsplit(' ').next().unwrap_or("").parse()?)
    };
    let (events, records) = (number_before(" events (")?, number_before(" records")?);
    // The listener's bind, CLOSE -> LISTEN and LISTEN -> CLOSE.
    let want = 4 * N + 3;
    ensure!(
        events == want,
        "{events} events from the ring for {N} connections, want {want} (4 each and the listener's 3); stderr: {stderr:?}"
    );
    // Which ones, by kind and move (`-v`'s tally, in state order).
    let tally = closing.rsplit_once(" records: ").map_or("", |(_, t)| t);
    let want_tally = format!(
        "{} state (ESTABLISHED>FIN_WAIT1 {N}, SYN_SENT>ESTABLISHED {N}, FIN_WAIT2>CLOSE {N}, CLOSE>SYN_SENT {N}, CLOSE>LISTEN 1, LISTEN>CLOSE 1), 1 bind",
        4 * N + 2
    );
    ensure!(
        tally == want_tally,
        "events by kind and move: {tally}\nwant: {want_tally}"
    );
    // One by one, a record per event; batched, fewer.
    ensure!(
        if batched {
            records < events
        } else {
            records == events
        },
        "{records} ring records for {events} events (batched: {batched})"
    );
    let (_, last) = snaps.last().context("top printed no snapshot")?;
    let d = dest(netns_entry(last, &ns)?, 9000)?;
    ensure!(
        d["used"] == N && states(d).get("TIME_WAIT") == Some(&N),
        "every connection left its TIME_WAIT: {d}"
    );
    ensure!(last["dropped_events"] == 0, "{last}");
    // Skipped runs are in the snapshot too, as many as the closing line says at most
    // (read later, from the same per-program counters).
    let skipped = number_before(" program runs skipped")?;
    ensure!(
        last["skipped_runs"].as_u64().is_some_and(|s| s <= skipped),
        "snapshot skipped_runs {} against {skipped} at the end",
        last["skipped_runs"]
    );
    for path in paths {
        ensure!(
            startup.iter().any(|l| l.contains(path)),
            "top -v did not say `{path}`: {startup:?}"
        );
    }
    Ok(())
}

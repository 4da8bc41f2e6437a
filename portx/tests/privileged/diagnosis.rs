//! Diagnoses against real clients: loopback traffic in a namespace made for the test
//! (its own port range and `tcp_tw_reuse`), an echo server and a `requests` client
//! (peer.rs), and what `portx top --json` says of them.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::{
    support::{Netns, Peer},
    top::{TopOnce, TopStream, closes_under_drift_checks, count_toward, dest, netns_entry},
};

const SERVER: &str = "127.0.0.1:9100";
const SERVER_PORT: u16 = 9100;

/// A namespace with `range` and `tcp_tw_reuse`, and an echo server on [`SERVER`].
fn serving(range: (u16, u16), tw_reuse: &str) -> Result<(Netns, Peer)> {
    let ns = Netns::new(Some(range))?;
    ns.sysctl("net/ipv4/tcp_tw_reuse", tw_reuse)?;
    let mut server = Peer::spawn(&ns, "echo", &[SERVER])?;
    server.go()?;
    server.expect("listening")?;
    Ok((ns, server))
}

/// A `requests` client run to its end in a namespace of its own, and what
/// `portx top --once` said of it after `interval` seconds.
struct Run {
    ns: Netns,
    client: Peer,
    done: Done,
    snap: Value,
}

/// Runs `requests SERVER ARGS...` (see peer.rs) against an echo server in a namespace
/// with `range` and `tcp_tw_reuse`, watched by `portx top --once --interval INTERVAL`.
fn run_once(range: (u16, u16), tw_reuse: &str, args: &[&str], interval: &str) -> Result<Run> {
    let (ns, mut server) = serving(range, tw_reuse)?;
    let mut client = Peer::spawn(&ns, "requests", &[&[SERVER], args].concat())?;
    let top = TopOnce::start(&["--netns", &ns.name, "--interval", interval])?;
    client.go()?;
    let snap = top.snapshot()?;
    let done = Done::read(&mut client)?;
    client.finish()?;
    server.finish()?;
    Ok(Run {
        ns,
        client,
        done,
        snap,
    })
}

/// What a `requests` client reported when it stopped.
#[derive(Debug)]
struct Done {
    requests: u64,
    connects: u64,
    elapsed_ms: u64,
    /// Of the first failure, 0 without one.
    errno: i32,
    error_ms: u64,
}

impl Done {
    fn read(client: &mut Peer) -> Result<Self> {
        let line = client.expect("done")?;
        let field = |key: &str| -> Result<i64> {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("no {key} in {line:?}"))?
                .parse()
                .with_context(|| format!("{key} in {line:?}"))
        };
        Ok(Self {
            requests: field("requests")?.try_into()?,
            connects: field("connects")?.try_into()?,
            elapsed_ms: field("elapsed_ms")?.try_into()?,
            errno: field("errno")?.try_into()?,
            error_ms: field("error_ms")?.try_into()?,
        })
    }

    /// Requests per second it achieved.
    fn rate(&self) -> f64 {
        self.requests as f64 / (self.elapsed_ms.max(1) as f64 / 1000.0)
    }
}

/// The snapshot's diagnoses about `ns`.
fn diagnoses<'a>(snap: &'a Value, ns: &Netns) -> Vec<&'a Value> {
    snap["diagnoses"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["netns"] == ns.inode).collect())
        .unwrap_or_default()
}

fn find<'a>(snap: &'a Value, ns: &Netns, id: &str) -> Option<&'a Value> {
    diagnoses(snap, ns).into_iter().find(|d| d["id"] == id)
}

/// The client figures of `pid` toward the server.
fn client_of<'a>(snap: &'a Value, ns: &Netns, pid: u32) -> Result<&'a Value> {
    let d = dest(netns_entry(snap, ns)?, SERVER_PORT)?;
    d["owners"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["pid"] == pid))
        .map(|o| &o["client"])
        .with_context(|| format!("pid {pid} not an owner of {d}"))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A connection per request, closed by the client, on a small range without
/// `tcp_tw_reuse`: TIME_WAIT soon holds most of its ports.
pub fn short_lived_connections() -> Result<()> {
    // 80/s for 9 s: 720 of 1000 ports, so the range never fills; top looks at ~6 s.
    let Run {
        ns,
        client,
        done,
        snap,
    } = run_once((20000, 20999), "0", &["80", "9", "2", "close"], "6")?;
    ensure!(done.errno == 0, "client failed: {done:?}");
    ensure!(done.connects == done.requests, "{done:?}");

    let d = find(&snap, &ns, "short-lived-connections")
        .with_context(|| format!("no short-lived-connections in {:?}", snap["diagnoses"]))?;
    ensure!(d["who"]["pid"] == client.pid, "{d}");
    ensure!(
        d["daddr"] == "127.0.0.1" && d["dport"] == SERVER_PORT,
        "{d}"
    );
    let n = &d["numbers"];
    let rate = num(&n["rate_per_s"]);
    let want = format!(
        "{}({}) opens {rate:.0} connections/s to {SERVER}",
        client.comm, client.pid
    );
    let explanation = d["explanation"].as_str().unwrap_or("");
    ensure!(
        explanation.starts_with(&want),
        "{explanation:?}, not {want:?}"
    );
    // The rate it quotes is the client's (which stayed at its pace while top looked).
    ensure!(
        (0.7..=1.3).contains(&(rate / done.rate())),
        "diagnosis says {rate:.1}/s, the client made {:.1}/s: {d}",
        done.rate()
    );
    ensure!(num(&n["lifetime_median_ms"]) < 1000.0, "{d}");
    ensure!(num(&n["timewait_share"]) >= 0.5, "{d}");
    let c = client_of(&snap, &ns, client.pid)?;
    ensure!(
        c["closes"].as_u64() >= Some(20) && num(&c["client_close_share"]) >= 0.99,
        "{c}"
    );
    Ok(())
}

/// The same rate of requests over one kept-alive connection per worker: no churn,
/// nothing to diagnose.
pub fn keepalive_is_not_short_lived() -> Result<()> {
    let Run {
        ns,
        client,
        done,
        snap,
    } = run_once((20000, 20999), "0", &["80", "9", "4", "keepalive"], "6")?;
    ensure!(done.errno == 0 && done.connects == 4, "{done:?}");
    // The load was carried: at least half the requests a short-lived client made.
    ensure!(done.rate() >= 40.0, "{done:?}");

    let found = diagnoses(&snap, &ns);
    ensure!(found.is_empty(), "a kept-alive client diagnosed: {found:?}");
    let c = client_of(&snap, &ns, client.pid)?;
    ensure!(c["closes"] == 0 && c["established"] == 4, "{c}");
    let d = dest(netns_entry(&snap, &ns)?, SERVER_PORT)?;
    ensure!(d["used"] == 4 && d["steady_state"].is_null(), "{d}");
    Ok(())
}

/// A client that opens connections and never closes them is named before the range
/// is full.
pub fn leak() -> Result<()> {
    // 10/s for 10 s: 100 of 2000 ports; top looks at ~8 s.
    let Run {
        ns,
        client,
        done,
        snap,
    } = run_once((20000, 21999), "0", &["10", "10", "1", "leak"], "8")?;
    ensure!(done.errno == 0, "{done:?}");

    let d = find(&snap, &ns, "leak").with_context(|| {
        format!(
            "no leak in {:?}; client {}, {done:?}",
            snap["diagnoses"],
            client_of(&snap, &ns, client.pid).unwrap_or(&Value::Null)
        )
    })?;
    ensure!(d["who"]["pid"] == client.pid, "{d}");
    let dst = dest(netns_entry(&snap, &ns)?, SERVER_PORT)?;
    let (used, capacity) = (num(&dst["used"]), num(&dst["capacity"]));
    ensure!(used < capacity, "{dst}");
    let n = &d["numbers"];
    ensure!(num(&n["established"]) >= 20.0, "{d}");
    let explanation = d["explanation"].as_str().unwrap_or("");
    let want = format!(
        "{}({}) holds {:.0} established connections to {SERVER}",
        client.comm,
        client.pid,
        num(&n["established"])
    );
    ensure!(
        explanation.starts_with(&want),
        "{explanation:?}, not {want:?}"
    );
    // "At this pace the range is full in": the pace is the client's.
    let eta = num(&n["eta_s"]);
    let want_eta = (capacity - used) / done.rate();
    ensure!(
        (0.5..=2.0).contains(&(eta / want_eta)),
        "leak says the range is full in {eta:.0} s; at {:.1}/s it is {want_eta:.0} s: {d}",
        done.rate()
    );
    Ok(())
}

/// The loopback connect/close storm, the client closing first, on a 500-port range:
/// with `tcp_tw_reuse=2` the kernel takes TIME_WAIT ports back and no connect()
/// fails, and portx says so; with 0 the range fills and connect() fails when portx
/// said it would.
pub fn tw_reuse_matches_kernel() -> Result<()> {
    const RANGE: (u16, u16) = (20000, 20499);
    // 100/s: 500 ports fill in 5 s without reuse; with it, about 100 are under the
    // 1 s a TIME_WAIT port must wait.
    const RATE: &str = "100";
    reuse_on(RANGE, RATE).context("tcp_tw_reuse=2")?;
    reuse_off(RANGE, RATE).context("tcp_tw_reuse=0")
}

fn reuse_on(range: (u16, u16), rate: &str) -> Result<()> {
    let Run { ns, done, snap, .. } = run_once(range, "2", &[rate, "10", "2", "close"], "8")?;
    let d = dest(netns_entry(&snap, &ns)?, SERVER_PORT)?;
    let capacity = d["capacity"].as_u64().context("capacity")?;
    ensure!(done.errno == 0, "a connect() failed: {done:?}");
    // More connections than ports within TIME_WAIT's 60 s: the kernel reused them.
    ensure!(
        done.connects > capacity + 100,
        "too slow to need reuse: {done:?}, capacity {capacity}"
    );
    ensure!(
        d["eta_s"].is_null(),
        "an exhaustion that cannot happen: {d}"
    );
    ensure!(d["reusable"].as_u64() > Some(0), "{d}");
    ensure!(num(&d["steady_state"]) < capacity as f64, "{d}");
    let tw = find(&snap, &ns, "timewait-dominated");
    ensure!(tw.is_none(), "diagnosed although the kernel reuses: {tw:?}");
    Ok(())
}

fn reuse_off(range: (u16, u16), rate: &str) -> Result<()> {
    let (ns, mut server) = serving(range, "0")?;
    // It stops at the first failed connect(), 5 s in at full pace.
    let mut client = Peer::spawn(&ns, "requests", &[SERVER, rate, "12", "2", "close"])?;
    let top = TopStream::start(&["--netns", &ns.name, "--interval", "1"])?;
    let go = Instant::now();
    client.go()?;
    let done = Done::read(&mut client)?;
    // One snapshot after the failure.
    std::thread::sleep(Duration::from_millis(1500));
    let (snaps, _) = top.stop()?;
    client.finish()?;
    server.finish()?;
    ensure!(
        done.errno == libc::EADDRNOTAVAIL,
        "the range did not fill: {done:?}"
    );
    let failed_at = go + Duration::from_millis(done.error_ms);
    let last = &snaps.last().context("no snapshot")?.1;
    let d = dest(netns_entry(last, &ns)?, SERVER_PORT)?;
    let capacity = d["capacity"].as_u64().context("capacity")?;
    ensure!(
        done.connects == capacity,
        "{done:?}: the kernel gave other than the {capacity} ports"
    );
    ensure!(
        last["failures"].as_array().is_some_and(|f| f
            .iter()
            .any(|f| f["error"] == "EADDRNOTAVAIL" && f["pid"] == client.pid)),
        "failure not reported: {}",
        last["failures"]
    );

    // What portx said before the failure, from half full on: the diagnosis, a
    // steady state beyond the range, and an ETA that came true (with a second of
    // slack for the 1 s buckets the growth is measured in, and a share of the time
    // left for a pace that wavers).
    let mut checked = 0;
    for (at, snap) in snaps.iter().filter(|(at, _)| *at < failed_at) {
        let Some(d) = netns_entry(snap, &ns)
            .and_then(|e| dest(e, SERVER_PORT))
            .ok()
            .filter(|d| d["used"].as_u64().is_some_and(|u| u * 2 >= capacity))
        else {
            continue;
        };
        let left = (failed_at - *at).as_secs_f64();
        ensure!(
            find(snap, &ns, "timewait-dominated").is_some(),
            "{left:.1} s before the failure, no timewait-dominated: {:?}",
            snap["diagnoses"]
        );
        ensure!(num(&d["steady_state"]) >= capacity as f64, "{d}");
        let eta = d["eta_s"]
            .as_f64()
            .with_context(|| format!("no eta_s {left:.1} s before the failure: {d}"))?;
        ensure!(
            (eta - left).abs() <= 1.0 + 0.3 * left,
            "eta_s {eta:.1} s, the range was full {left:.1} s later: {d}"
        );
        checked += 1;
    }
    ensure!(
        checked > 0,
        "no snapshot half full before the failure: {done:?}"
    );
    Ok(())
}

/// Clients that close first toward a server that never closes, on a range of 10
/// ports: 8 ports wait in FIN_WAIT2 (not TIME_WAIT, which tcp_tw_reuse 1 would free)
/// and the diagnosis names the server, with the namespace's tcp_fin_timeout.
pub fn server_not_closing() -> Result<()> {
    let ns = Netns::new(Some((20000, 20009)))?;
    ns.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
    ns.sysctl("net/ipv4/tcp_fin_timeout", "45")?;
    let (snap, kernel) = closes_under_drift_checks(&ns, "sink", "127.0.0.1:9003", 8)?;
    let in_kernel = count_toward(&kernel, "FIN_WAIT2", 9003);
    ensure!(
        in_kernel == 8,
        "the kernel has {in_kernel} of 8 in FIN_WAIT2"
    );
    let d = find(&snap, &ns, "server-not-closing")
        .with_context(|| format!("no server-not-closing in {}", snap["diagnoses"]))?;
    ensure!(
        d["severity"] == "warning"
            && num(&d["numbers"]["fin_wait2"]) == 8.0
            && num(&d["numbers"]["used"]) == 8.0
            && num(&d["numbers"]["fin_timeout_s"]) == 45.0
            && d["dport"] == 9003,
        "{d}"
    );
    // Not mistaken for TIME_WAIT: no tw_reuse advice.
    ensure!(
        find(&snap, &ns, "timewait-dominated").is_none(),
        "{}",
        snap["diagnoses"]
    );
    Ok(())
}

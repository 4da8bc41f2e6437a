//! Why a destination runs out of ports, and what to change: rules over what the
//! model measured of each client (rate, lifetime, who closes, TIME_WAIT share) and of
//! the destination. Pure; each diagnosis has a stable id, a severity, one line with
//! the numbers it rests on, and the advice.
//!
//! The kernel facts the rules rest on:
//! - a closed connection's client side holds its port in TIME_WAIT for 60 s when the
//!   client closed first (`tcp_time_wait`), none when the server did;
//! - `net.ipv4.tcp_tw_reuse` (1: always; 2, the default since 4.19: loopback only) lets
//!   connect() take over a TIME_WAIT 4-tuple whose last timestamp is over a second old
//!   (`tcp_twsk_unique`,
//!   <https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp_ipv4.c#L112>);
//! - ports in use converge to rate x (lifetime + TIME_WAIT) for a client that does not
//!   change (Little's law).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clients::ClientView;

/// How long a TIME_WAIT port is held, seconds.
const TIME_WAIT_S: f64 = 60.0;
/// A TIME_WAIT 4-tuple a reuse-enabled connect() may take is at least this old.
pub const REUSE_AFTER_NS: u64 = 1_000_000_000;
/// Linux's default `ip_local_port_range` size (32768-60999).
const DEFAULT_RANGE_SIZE: u32 = 28232;

/// One diagnosis. Field names are part of portx's interface (README).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Diagnosis {
    /// `short-lived-connections`, `timewait-dominated`, `server-not-closing`,
    /// `concurrency-at-capacity`, `range-too-small`, `leak`.
    pub id: String,
    /// `warning` or `critical`.
    pub severity: String,
    pub netns: u32,
    /// The client it is about (`pid`, `comm`), or null for the destination as a whole.
    pub who: Option<Who>,
    pub saddr: String,
    pub daddr: String,
    pub dport: u16,
    /// The measured numbers the explanation quotes, by name.
    pub numbers: BTreeMap<String, f64>,
    pub explanation: String,
    pub advice: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// What the model knows of a destination.
#[derive(Clone, Debug)]
pub struct DestFacts<'a> {
    pub netns: u32,
    pub saddr: String,
    pub daddr: String,
    pub dport: u16,
    pub used: u32,
    pub capacity: u32,
    pub established: u32,
    /// TIME_WAIT ports, those in FIN_WAIT2 left out.
    pub time_wait: u32,
    /// Ports held by timewait sockets still in FIN_WAIT2 (this side closed, the server
    /// has not), as of the last drift check.
    pub fin_wait2: u32,
    /// TIME_WAIT ports a new connect() may take over (tcp_tw_reuse applies, over 1 s old).
    pub reusable: u32,
    pub tw_reuse: Option<u32>,
    /// `net.ipv4.tcp_fin_timeout`: how long an orphaned FIN_WAIT2 keeps its port.
    pub fin_timeout: Option<u32>,
    /// `tcp_tw_reuse` applies to this destination (1, or 2 and loopback).
    pub reuse_applies: bool,
    pub range: (u16, u16),
    /// Listening ports of the namespace, ascending.
    pub listeners: &'a [u16],
}

/// What the model knows of one client of it.
#[derive(Clone, Debug)]
pub struct ClientFacts {
    pub who: Who,
    /// Ports it holds toward the destination, and of those in TIME_WAIT.
    pub ports: u32,
    pub time_wait: u32,
    pub view: ClientView,
}

/// Ports the destination's clients will hold when they keep behaving as measured:
/// for each, new connections per second times how long each holds its port (its
/// life, plus TIME_WAIT when the client closes first, 1 s of it when reuse applies).
/// `None` while a client has no closed connection to measure (a pool, a leak).
pub fn steady_state(dest: &DestFacts<'_>, clients: &[ClientFacts]) -> Option<f64> {
    let mut total = 0.0;
    for c in clients {
        let v = &c.view;
        if v.rate_60s == 0.0 {
            // Opens nothing now: it holds what it holds.
            total += f64::from(c.ports);
            continue;
        }
        let life_s = v.lifetime_median_ms? / 1000.0;
        let tw_s = if dest.reuse_applies { 1.0 } else { TIME_WAIT_S };
        let held_s = life_s + v.client_close_share? * tw_s;
        total += v.rate_60s * held_s;
    }
    Some(total)
}

/// `40 ms`, `0.4 ms`: short lives need the decimal.
fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// `1 connection`, `18 connections`.
fn count(n: f64, what: &str) -> String {
    if n == 1.0 {
        format!("1 {what}")
    } else {
        format!("{n:.0} {what}s")
    }
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole * 100.0
    } else {
        0.0
    }
}

/// The widest span of 1024-65535 with no listening port in it.
fn widest_free_range(listeners: &[u16]) -> (u16, u16) {
    let mut best = (1024u16, 1024u16);
    let mut start = 1024u32;
    let bounds = listeners
        .iter()
        .map(|&p| u32::from(p))
        .filter(|&p| p >= 1024)
        .chain([65536]);
    for stop in bounds {
        if stop > start && stop - 1 - start > u32::from(best.1 - best.0) {
            best = (start as u16, (stop - 1) as u16);
        }
        start = start.max(stop + 1);
    }
    best
}

/// Whether any rule may apply to `dest` with clients of these figures: half its
/// capacity held, or nearly all of it established, or a client that opens >= 10
/// connections a second or holds >= 20 established. Most destinations of a busy host
/// are nowhere near a rule: a snapshot of 100k of them must not format a line for
/// each, nor (`View::brief`) gather their owners.
pub fn may_apply<'a>(
    dest: &DestFacts<'_>,
    clients: impl IntoIterator<Item = &'a ClientView>,
) -> bool {
    let cap = f64::from(dest.capacity.max(1));
    let util = f64::from(dest.used.saturating_sub(dest.reusable)) / cap;
    util >= 0.5
        || f64::from(dest.established) >= 0.8 * cap
        || clients
            .into_iter()
            .any(|v| v.rate_10s.max(v.rate_60s) >= 10.0 || v.established >= 20)
}

/// Every diagnosis for `dest` and its clients, most severe first.
pub fn diagnose(dest: &DestFacts<'_>, clients: &[ClientFacts]) -> Vec<Diagnosis> {
    diagnose_with(dest, clients, steady_state(dest, clients))
}

/// [`diagnose`] with the destination's [`steady_state`] already known (the snapshot
/// shows it too).
pub fn diagnose_with(
    dest: &DestFacts<'_>,
    clients: &[ClientFacts],
    steady: Option<f64>,
) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    if !may_apply(dest, clients.iter().map(|c| &c.view)) {
        return out;
    }
    let cap = f64::from(dest.capacity.max(1));
    let used = f64::from(dest.used);
    let held = f64::from(dest.used.saturating_sub(dest.reusable));
    let util = held / cap;
    let target = format!("{}:{}", dest.daddr, dest.dport);
    let mk = |id: &str,
              critical: bool,
              who: Option<&Who>,
              numbers: Vec<(&str, f64)>,
              explanation: String,
              advice: String| Diagnosis {
        id: id.to_owned(),
        severity: if critical { "critical" } else { "warning" }.to_owned(),
        netns: dest.netns,
        who: who.cloned(),
        saddr: dest.saddr.clone(),
        daddr: dest.daddr.clone(),
        dport: dest.dport,
        numbers: numbers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        explanation,
        advice,
    };

    for c in clients {
        let v = &c.view;
        let who = format!("{}({})", c.who.comm, c.who.pid);
        // Opens and closes many connections of short life, and keeps their TIME_WAIT.
        // The minute's rate too: a burst that stopped seconds ago left its TIME_WAIT.
        let rate = v.rate_10s.max(v.rate_60s);
        if let (Some(med), Some(share)) = (v.lifetime_median_ms, v.client_close_share)
            && rate >= 10.0
            && med < 1000.0
            && v.closes >= 20
            && share >= 0.5
            && c.ports > 0
            && f64::from(c.time_wait) >= 0.5 * f64::from(c.ports)
            && (util >= 0.5 || steady.is_some_and(|s| s >= 0.8 * cap))
        {
            // Little's law: the connections in flight at this rate and life.
            let pool = (rate * med / 1000.0).ceil().max(1.0);
            let critical = util >= 0.9 || steady.is_some_and(|s| s >= cap);
            out.push(mk(
                "short-lived-connections",
                critical,
                Some(&c.who),
                vec![
                    ("rate_per_s", rate),
                    ("lifetime_median_ms", med),
                    ("lifetime_p90_ms", v.lifetime_p90_ms.unwrap_or(med)),
                    ("timewait_share", f64::from(c.time_wait) / f64::from(c.ports)),
                    ("ports", f64::from(c.ports)),
                    ("pool_ports", pool),
                ],
                format!(
                    "{who} opens {:.0} connections/s to {target}, median life {}, {:.0}% of its {} ports in TIME_WAIT",
                    rate,
                    ms(med),
                    pct(f64::from(c.time_wait), f64::from(c.ports)),
                    c.ports
                ),
                format!(
                    "reuse connections (HTTP keep-alive or a connection pool): about {} would carry this load and hold {} instead of {}",
                    count(pool, "kept-alive connection"),
                    count(pool, "port"),
                    c.ports
                ),
            ));
        }
        // Established connections that only grow while the rate of new ones is flat.
        // Opens and growth over the same window: under a minute for a new client.
        // Still opening at its pace and still growing: not a pool that filled once.
        let window_s = v.window_s.max(1.0);
        let opened = v.rate_60s * window_s;
        if v.established >= 20
            && v.established_growth_60s >= 20
            && opened > 0.0
            && f64::from(v.closes) * 10.0 < opened
            && v.established_growth_60s as f64 >= 0.8 * opened
            && v.rate_10s >= 0.5 * v.rate_60s
            && v.established_growth_10s > 0
        {
            let per_s = v.established_growth_60s as f64 / window_s;
            let left_s = (cap - used).max(0.0) / per_s;
            out.push(mk(
                "leak",
                left_s < 600.0,
                Some(&c.who),
                vec![
                    ("established", f64::from(v.established)),
                    ("growth_per_min", v.established_growth_60s as f64),
                    ("rate_per_s", v.rate_60s),
                    ("eta_s", left_s),
                ],
                format!(
                    "{who} holds {} established connections to {target}, {} more than {:.0} s ago, and closed almost none: they are never closed",
                    v.established,
                    v.established_growth_60s,
                    window_s
                ),
                format!(
                    "find where {who} opens connections without closing them (a missing close(), a pool without a bound); at this pace the range is full in {:.0} s",
                    left_s
                ),
            ));
        }
    }

    // TIME_WAIT holds most of the ports, and the kernel may not hand them back.
    let tw = f64::from(dest.time_wait);
    if !dest.reuse_applies && used >= 0.5 * cap && tw >= 0.5 * used {
        let setting = dest
            .tw_reuse
            .map_or("unknown".to_owned(), |v| v.to_string());
        out.push(mk(
            "timewait-dominated",
            util >= 0.9,
            None,
            vec![
                ("time_wait", tw),
                ("used", used),
                ("capacity", cap),
                ("timewait_share", tw / used.max(1.0)),
            ],
            format!(
                "TIME_WAIT holds {tw:.0} of the {used:.0} ports used toward {target} ({:.0}%; capacity {cap:.0}); tcp_tw_reuse is {setting}{}",
                pct(tw, used),
                if dest.tw_reuse == Some(2) { " (loopback only)" } else { "" }
            ),
            format!(
                "sysctl -w net.ipv4.tcp_tw_reuse=1 lets a new connect() take a TIME_WAIT port over 1 s old (about {tw:.0} here); it needs TCP timestamps (on by default) and applies only to outgoing connections; better still, reuse connections"
            ),
        ));
    }
    // Connections this side closed and the server never did: each keeps its port in
    // FIN_WAIT2 until tcp_fin_timeout, and no tcp_tw_reuse setting frees it
    // (tcp_close -> tcp_time_wait(sk, TCP_FIN_WAIT2, tcp_fin_time(sk)),
    // https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp.c).
    let fw2 = f64::from(dest.fin_wait2);
    if used >= 0.5 * cap && fw2 >= 0.5 * used {
        let timeout = dest
            .fin_timeout
            .map_or("unknown".to_owned(), |v| format!("{v} s"));
        out.push(mk(
            "server-not-closing",
            util >= 0.9,
            None,
            vec![
                ("fin_wait2", fw2),
                ("used", used),
                ("capacity", cap),
                ("fin_timeout_s", dest.fin_timeout.map_or(f64::NAN, f64::from)),
            ],
            format!(
                "{fw2:.0} of the {used:.0} ports used toward {target} ({:.0}%; capacity {cap:.0}) are held by connections this side closed and {target} has not (FIN_WAIT2, each for up to tcp_fin_timeout, {timeout}); tcp_tw_reuse does not free them",
                pct(fw2, used)
            ),
            format!(
                "find why {target} does not close connections its clients closed (on that host, `ss -tn state close-wait` lists them: a server that waits for more data or never calls close()); meanwhile a lower net.ipv4.tcp_fin_timeout (now {timeout}) shortens how long each port is held"
            ),
        ));
    }
    // Established connections alone fill the range: no setting frees a port.
    let est = f64::from(dest.established);
    if est >= 0.8 * cap {
        out.push(mk(
            "concurrency-at-capacity",
            est >= 0.95 * cap,
            None,
            vec![("established", est), ("capacity", cap)],
            format!(
                "{est:.0} established connections toward {target} hold {:.0}% of the {cap:.0} ports one source address has: no setting frees them",
                pct(est, cap)
            ),
            "add source addresses (ip addr add ADDR/PREFIX dev DEV) and spread the connections over them, binding each socket to its address with IP_BIND_ADDRESS_NO_PORT set before bind() so that the port is still chosen per destination; or spread over more destination addresses or ports".to_owned(),
        ));
    }
    // The range, not the client, is the limit.
    let size = u32::from(dest.range.1.saturating_sub(dest.range.0)) + 1;
    if util >= 0.7 && size < DEFAULT_RANGE_SIZE {
        let (lo, hi) = widest_free_range(dest.listeners);
        if u32::from(hi - lo) + 1 > size {
            out.push(mk(
                "range-too-small",
                util >= 0.9,
                None,
                vec![
                    ("range_size", f64::from(size)),
                    ("used", used),
                    ("proposed_size", f64::from(hi - lo) + 1.0),
                ],
                format!(
                    "ip_local_port_range {}-{} has {size} ports and {used:.0} of them are used toward {target}",
                    dest.range.0, dest.range.1
                ),
                format!(
                    "sysctl -w net.ipv4.ip_local_port_range=\"{lo} {hi}\" ({} ports, no listening port of the namespace inside it); reserve service ports in net.ipv4.ip_local_reserved_ports",
                    u32::from(hi - lo) + 1
                ),
            ));
        }
    }
    out.sort_by_key(|d| d.severity != "critical");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(used: u32, capacity: u32, established: u32, time_wait: u32) -> DestFacts<'static> {
        DestFacts {
            netns: 1,
            saddr: "10.0.0.1".into(),
            daddr: "10.0.0.5".into(),
            dport: 443,
            used,
            capacity,
            established,
            time_wait,
            fin_wait2: 0,
            reusable: 0,
            tw_reuse: Some(0),
            fin_timeout: Some(60),
            reuse_applies: false,
            range: (32768, 60999),
            listeners: &[22, 443, 3306],
        }
    }

    fn client(rate: f64, life_ms: Option<f64>, ports: u32, time_wait: u32) -> ClientFacts {
        ClientFacts {
            who: Who {
                pid: 2211,
                comm: "api".into(),
                cgroup_id: 0,
            },
            ports,
            time_wait,
            view: ClientView {
                rate_10s: rate,
                rate_60s: rate,
                window_s: 60.0,
                lifetime_median_ms: life_ms,
                lifetime_p90_ms: life_ms.map(|l| l * 2.0),
                client_close_share: life_ms.map(|_| 1.0),
                closes: if life_ms.is_some() { 1000 } else { 0 },
                established: ports - time_wait,
                established_growth_60s: 0,
                established_growth_10s: 0,
            },
        }
    }

    fn ids(d: &[Diagnosis]) -> Vec<&str> {
        d.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn a_short_lived_client_near_capacity() {
        let c = client(450.0, Some(40.0), 26_000, 24_000);
        let d = diagnose(&dest(26_000, 28_232, 2000, 24_000), &[c]);
        assert_eq!(ids(&d), ["short-lived-connections", "timewait-dominated"]);
        let s = &d[0];
        assert_eq!(s.severity, "critical");
        assert!(s.explanation.starts_with("api(2211) opens 450 connections/s to 10.0.0.5:443, median life 40 ms, 92% of its 26000 ports in TIME_WAIT"), "{}", s.explanation);
        assert_eq!(s.numbers["pool_ports"], 18.0);
        assert!(
            s.advice.contains("about 18 kept-alive connections"),
            "{}",
            s.advice
        );
    }

    #[test]
    fn near_misses_stay_quiet() {
        // Short-lived but far from capacity, and its steady state is too.
        let c = client(5.0, Some(40.0), 300, 290);
        assert!(diagnose(&dest(300, 28_232, 10, 290), &[c]).is_empty());
        // A pooled client at high use: established, no churn. Not short-lived, not a
        // leak, not TIME_WAIT: only the concurrency one, if it is that close.
        let pooled = client(0.0, None, 20_000, 0);
        assert!(
            diagnose(
                &dest(20_000, 28_232, 20_000, 0),
                std::slice::from_ref(&pooled)
            )
            .is_empty()
        );
        assert_eq!(
            ids(&diagnose(&dest(27_000, 28_232, 27_000, 0), &[pooled])),
            ["concurrency-at-capacity"]
        );
        // TIME_WAIT-heavy but the kernel hands it back (reuse applies).
        let mut d = dest(20_000, 28_232, 1000, 19_000);
        d.reuse_applies = true;
        d.reusable = 18_500;
        let c = client(400.0, Some(2.0), 20_000, 19_000);
        assert!(diagnose(&d, &[c]).is_empty());
    }

    #[test]
    fn a_leak_is_named_before_the_range_is_full() {
        let mut c = client(2.0, None, 500, 0);
        c.view.established = 500;
        c.view.established_growth_60s = 120;
        c.view.established_growth_10s = 20;
        let d = diagnose(&dest(500, 28_232, 500, 0), &[c.clone()]);
        assert_eq!(ids(&d), ["leak"]);
        assert_eq!(d[0].severity, "warning");
        // A client followed for 10 s, 8 new connections a second, all still open:
        // a leak already, at its own pace (1000 free ports at 8/s: 125 s, critical).
        let mut young = client(8.0, None, 80, 0);
        young.view.window_s = 10.0;
        young.view.established_growth_60s = 80;
        young.view.established_growth_10s = 60;
        let d = diagnose(&dest(1080, 2080, 1080, 0), &[young]);
        assert_eq!(ids(&d), ["leak"]);
        assert_eq!(d[0].severity, "critical");
        assert!(
            (d[0].numbers["eta_s"] - 125.0).abs() < 1.0,
            "{:?}",
            d[0].numbers
        );
        // A pool that filled and stopped opening: not a leak.
        let mut filled = c.clone();
        filled.view.rate_10s = 0.0;
        filled.view.established_growth_10s = 0;
        assert!(diagnose(&dest(500, 28_232, 500, 0), &[filled]).is_empty());
        // Growth that follows closes and opens (a busy pool warming up) is not a leak.
        c.view.closes = 100;
        assert!(diagnose(&dest(500, 28_232, 500, 0), &[c]).is_empty());
    }

    #[test]
    fn a_server_that_never_closes_is_named_not_timewait() {
        // 6 of 10 ports wait for the server's FIN; TIME_WAIT holds none of them, so
        // neither tw_reuse advice nor timewait-dominated applies.
        let mut d = dest(6, 10, 0, 0);
        d.fin_wait2 = 6;
        let out = diagnose(&d, &[]);
        assert_eq!(ids(&out), ["server-not-closing"]);
        let s = &out[0];
        assert_eq!(s.severity, "warning");
        assert_eq!(s.numbers["fin_wait2"], 6.0);
        assert_eq!(s.numbers["fin_timeout_s"], 60.0);
        assert!(
            s.explanation.starts_with("6 of the 6 ports used toward 10.0.0.5:443 (100%; capacity 10) are held by connections this side closed and 10.0.0.5:443 has not (FIN_WAIT2, each for up to tcp_fin_timeout, 60 s)"),
            "{}",
            s.explanation
        );
        assert!(
            s.advice.contains("net.ipv4.tcp_fin_timeout (now 60 s)"),
            "{}",
            s.advice
        );
        // Full: critical.
        d.used = 10;
        d.fin_wait2 = 9;
        assert_eq!(diagnose(&d, &[])[0].severity, "critical");
        // A few among many TIME_WAIT ports: the TIME_WAIT rule speaks, not this one.
        let mut d = dest(20_000, 28_232, 0, 19_000);
        d.fin_wait2 = 1000;
        assert_eq!(ids(&diagnose(&d, &[])), ["timewait-dominated"]);
    }

    #[test]
    fn a_small_range_gets_a_wider_one_that_keeps_listeners_out() {
        let mut d = dest(900, 1000, 900, 0);
        d.range = (40000, 40999);
        d.listeners = &[22, 8080, 40500, 50000];
        let out = diagnose(&d, &[]);
        assert_eq!(ids(&out), ["range-too-small", "concurrency-at-capacity"]);
        let r = &out[0];
        assert!(
            r.advice
                .starts_with("sysctl -w net.ipv4.ip_local_port_range=\"8081 40499\" (32419 ports"),
            "{}",
            r.advice
        );
        assert_eq!(widest_free_range(&[]), (1024, 65535));
        assert_eq!(widest_free_range(&[65535]), (1024, 65534));
    }

    #[test]
    fn steady_state_is_rate_times_holding_time() {
        let d = dest(0, 28_232, 0, 0);
        // 100/s, 40 ms each, client closes: 100 x (0.04 + 60) = 6004 ports.
        let c = client(100.0, Some(40.0), 10, 0);
        let s = steady_state(&d, std::slice::from_ref(&c)).unwrap();
        assert!((s - 6004.0).abs() < 1.0, "{s}");
        // With reuse, one second of TIME_WAIT.
        let mut r = d.clone();
        r.reuse_applies = true;
        assert!((steady_state(&r, std::slice::from_ref(&c)).unwrap() - 104.0).abs() < 1.0);
        // A client that never closed: unknown.
        assert_eq!(steady_state(&d, &[client(1.0, None, 10, 0)]), None);
    }
}

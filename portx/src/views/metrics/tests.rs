use std::collections::BTreeMap;

use super::*;
use crate::{
    events::{Comm, Family as IpFamily, TcpState},
    model::snapshot::{DestUsage, Drift, NetnsUsage, ProcessUsage},
};

const NS: u32 = 4026532177;
const SEC: u64 = 1_000_000_000;

fn dest(daddr: &str, dport: u16, used: u32, tw: u32) -> DestUsage {
    let mut states = BTreeMap::new();
    states.insert("ESTABLISHED".into(), used - tw);
    if tw > 0 {
        states.insert("TIME_WAIT".into(), tw);
    }
    DestUsage {
        saddr: "127.0.0.1".into(),
        daddr: daddr.into(),
        dport,
        used,
        capacity: 4,
        states,
        ..DestUsage::default()
    }
}

fn proc_(pid: u32, comm: &str, ports: u32) -> ProcessUsage {
    ProcessUsage {
        pid,
        comm: comm.into(),
        cgroup_id: 1,
        ports,
        ..ProcessUsage::default()
    }
}

/// Namespace NS with `dests` (busiest first, as snapshots give them).
fn snap(dests: Vec<DestUsage>) -> Snapshot {
    Snapshot {
        time: String::new(),
        netns: vec![NetnsUsage {
            inode: NS,
            name: Some("blue".into()),
            port_range: [3306, 3309],
            capacity: 4,
            destinations: dests,
            processes: vec![
                proc_(10, "exhaust", 3),
                proc_(11, "exhaust", 1),
                ProcessUsage {
                    workload: Some(crate::workload::classify(&format!(
                        "/kubepods/besteffort/pod8dbc5577-d0e2-4706-8787-57d52c03ddf2/{}",
                        "c".repeat(64)
                    ))),
                    ..proc_(12, "curl", 2)
                },
            ],
        }],
        failures: Vec::new(),
        dropped_events: 2,
        skipped_runs: 1,
        drift: Drift {
            checks: 3,
            added: 1,
            removed: 1,
            baseline_gone: 0,
            closes_missed: 1,
        },
        hooks: [
            "state:tp_btf/inet_sock_set_state",
            "connect:tracepoint syscalls",
            "bind:tracepoint syscalls",
            "timewait:model",
        ]
        .iter()
        .map(|s| {
            let (hook, path) = s.split_once(':').unwrap();
            HookPath {
                hook: hook.into(),
                path: path.into(),
                rejected: Vec::new(),
            }
        })
        .collect(),
        workloads: Vec::new(),
        diagnoses: Vec::new(),
    }
}

fn event(kind: Kind, errno: Option<u32>) -> TraceEvent {
    TraceEvent {
        kind,
        ts_ns: 1,
        pid: 10,
        tid: 10,
        comm: Comm::from("exhaust"),
        cgroup_id: 1,
        netns: NS,
        sock: 0,
        family: IpFamily::Ipv4,
        saddr: "127.0.0.1".parse().unwrap(),
        sport: 3306,
        daddr: "127.0.0.1".parse().unwrap(),
        dport: 9000,
        old_state: None,
        new_state: None,
        errno,
        bound_port: None,
    }
}

fn state(old: TcpState, new: TcpState, sport: u16) -> TraceEvent {
    TraceEvent {
        old_state: Some(old),
        new_state: Some(new),
        sport,
        ..event(Kind::State, None)
    }
}

/// A connect() failure, with the local port the kernel reported (0: none).
fn connect_error(errno: i32, sport: u16) -> TraceEvent {
    TraceEvent {
        sport,
        ..event(Kind::ConnectError, Some(errno as u32))
    }
}

fn fixed_counters() -> Counters {
    use TcpState::*;
    let mut c = Counters::default();
    // Four connections as the accounting path reports them: the port appears on the
    // way out of SYN_SENT, and no `connect` event comes.
    for _ in 0..4 {
        c.on_event(&state(Close, SynSent, 0));
        c.on_event(&state(SynSent, Established, 3306));
    }
    // Where `connect` events do come (the full path), they are not counted twice. A
    // connection that failed in SYN_SENT counts at that move, and its connect() error
    // (with the port) only as an error; a failure that got no port counts as a call.
    c.on_event(&event(Kind::Connect, None));
    c.on_event(&state(SynSent, Close, 3307));
    c.on_event(&connect_error(libc::ENOBUFS, 3307));
    c.on_event(&connect_error(libc::EADDRNOTAVAIL, 0));
    c.on_event(&event(Kind::Bind, None));
    c.on_event(&event(Kind::BindError, Some(libc::EADDRINUSE as u32)));
    c.on_event(&event(Kind::State, None));
    c
}

fn fixed_render() -> String {
    let mut x = Exporter::new(2, "0.1.0");
    let mut s = snap(vec![
        dest("127.0.0.1", 9000, 4, 0),
        DestUsage {
            reusable: 1,
            ..dest("127.0.0.1", 9100, 2, 2)
        },
        dest("10.0.0.1", 80, 1, 1),
    ]);
    // Three diagnoses, K = 2: the first two (the snapshot's order) are exported.
    let diag = |id: &str, severity: &str, comm: Option<&str>| crate::model::diagnosis::Diagnosis {
        id: id.into(),
        severity: severity.into(),
        netns: NS,
        who: comm.map(|c| crate::model::diagnosis::Who {
            pid: 10,
            comm: c.into(),
            cgroup_id: 1,
        }),
        saddr: "127.0.0.1".into(),
        daddr: "127.0.0.1".into(),
        dport: 9000,
        numbers: Default::default(),
        explanation: String::new(),
        advice: String::new(),
    };
    s.diagnoses = vec![
        diag("short-lived-connections", "critical", Some("exhaust")),
        diag("timewait-dominated", "warning", None),
        diag("range-too-small", "warning", None),
    ];
    let stats = SelfStats {
        tracked_sockets: 9,
        scrape_seconds: 0.00025,
    };
    x.render(&s, &fixed_counters(), &stats, 100 * SEC)
}

fn golden_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/metrics.golden")
}

#[test]
fn encoding_matches_the_golden_file() {
    let got = fixed_render();
    if std::env::var_os("PORTX_BLESS").is_some() {
        std::fs::create_dir_all(golden_path().parent().unwrap()).unwrap();
        std::fs::write(golden_path(), &got).unwrap();
    }
    let want = std::fs::read_to_string(golden_path())
        .expect("tests/data/metrics.golden (PORTX_BLESS=1 writes it)");
    assert_eq!(got, want, "metrics differ from the golden file");
}

#[test]
fn refused_connects_count_once_blocking_or_not() {
    use TcpState::*;
    let mut c = Counters::default();
    // Non-blocking: connect() returned EINPROGRESS; only the socket's move says it.
    c.on_event(&state(Close, SynSent, 0));
    c.on_event(&state(SynSent, Close, 40000));
    // Blocking: the same move, then the call's error with the port.
    c.on_event(&state(Close, SynSent, 0));
    c.on_event(&state(SynSent, Close, 40002));
    c.on_event(&connect_error(libc::ECONNREFUSED, 40002));
    // No port to be had: the move carries none, the error counts the call.
    c.on_event(&state(Close, SynSent, 0));
    c.on_event(&state(SynSent, Close, 0));
    c.on_event(&connect_error(libc::EADDRNOTAVAIL, 0));
    let n = &c.per_ns[&NS];
    assert_eq!(n.connects, 3);
    assert_eq!((n.connect_errors[0], n.connect_errors[2]), (1, 1));
}

#[test]
fn counters_count_calls_and_errnos() {
    let c = fixed_counters();
    let n = &c.per_ns[&NS];
    assert_eq!((n.connects, n.binds), (6, 2));
    assert_eq!(n.connect_errors[0], 1, "EADDRNOTAVAIL");
    assert_eq!(n.connect_errors[ERRNOS.len()], 1, "ENOBUFS counts as other");
    assert_eq!(n.bind_errors[1], 1, "EADDRINUSE");
    let text = fixed_render();
    assert!(text.contains(&format!(
        "portx_connect_errors_total{{netns=\"{NS}\",errno=\"EADDRNOTAVAIL\"}} 1\n"
    )));
    assert!(text.contains(&format!("portx_connects_total{{netns=\"{NS}\"}} 6\n")));
    assert!(text.contains(&format!(
        "portx_ports_held{{netns=\"{NS}\",comm=\"exhaust\"}} 4\n"
    )));
    assert!(text.contains(&format!(
        "portx_ephemeral_ports_used_max{{netns=\"{NS}\"}} 4\n"
    )));
    assert!(
        !text.contains("10.0.0.1"),
        "K=2 leaves the third destination out"
    );
    assert!(text.contains("portx_series_omitted{kind=\"destinations\"} 1\n"));
}

#[test]
fn a_gone_namespace_takes_its_counters_with_it() {
    use crate::model::input::Input;
    let mut c = fixed_counters();
    c.on_input(&Input::NetnsGone { netns: NS + 1 });
    assert!(c.per_ns.contains_key(&NS));
    c.on_input(&Input::NetnsGone { netns: NS });
    assert!(c.per_ns.is_empty(), "{:?}", c.per_ns);
}

fn dports(text: &str) -> Vec<u16> {
    text.lines()
        .filter(|l| l.starts_with("portx_ephemeral_ports_used{"))
        .filter_map(|l| l.split("dport=\"").nth(1)?.split('"').next()?.parse().ok())
        .collect()
}

#[test]
fn a_destination_leaving_the_top_k_stays_five_minutes_then_goes() {
    let mut x = Exporter::new(1, "t");
    let c = Counters::default();
    let st = SelfStats::default();
    let t0 = 1000 * SEC;
    // :1 is the busiest, then :2 overtakes it.
    let a = x.render(&snap(vec![dest("127.0.0.1", 1, 3, 0)]), &c, &st, t0);
    assert_eq!(dports(&a), vec![1]);
    let later = |x: &mut Exporter, t: u64| {
        x.render(
            &snap(vec![dest("127.0.0.1", 2, 4, 0), dest("127.0.0.1", 1, 1, 0)]),
            &c,
            &st,
            t,
        )
    };
    assert_eq!(
        dports(&later(&mut x, t0 + 10 * SEC)),
        vec![2, 1],
        "kept after leaving"
    );
    assert_eq!(
        dports(&later(&mut x, t0 + 299 * SEC)),
        vec![2, 1],
        "still within 5 min"
    );
    let gone = later(&mut x, t0 + 300 * SEC);
    assert_eq!(
        dports(&gone),
        vec![2],
        "gone 5 minutes after it left the top K"
    );
    assert!(gone.contains("portx_series_omitted{kind=\"destinations\"} 1\n"));
    // A destination that vanished from the model goes at once.
    let empty = x.render(&snap(vec![]), &c, &st, t0 + 301 * SEC);
    assert!(dports(&empty).is_empty());
}

#[test]
fn retention_keeps_at_most_k_more() {
    let mut r = Retention::default();
    let ranked = |keys: &[u32]| keys.iter().map(|&k| (k, ())).collect::<Vec<_>>();
    r.select(ranked(&[1, 2]), 2, 100, 0);
    r.select(ranked(&[3, 4]), 2, 100, 1);
    let (kept, omitted) = r.select(ranked(&[5, 6, 1, 2, 3, 4]), 2, 100, 2);
    let kept: Vec<u32> = kept.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kept,
        vec![5, 6, 3, 4],
        "top 2, then the 2 most recently in the top"
    );
    assert_eq!(omitted, 2);
    r.expire(100, 100);
    assert_eq!(r.len(), 4, "1 and 2 (last top at 0) forgotten");
}

#[test]
fn cardinality_is_bounded() {
    // 100 namespaces, each with 500 destinations and 300 process names, churning.
    let k = 20;
    let mut x = Exporter::new(k, "t");
    let mut c = Counters::default();
    let mut max_series = 0;
    for round in 0..30u64 {
        let netns = (0..100u32)
            .map(|i| NetnsUsage {
                inode: 1000 + i,
                capacity: 28232,
                destinations: (0..500u32)
                    .map(|d| {
                        // A different busiest set every round.
                        let used = ((d as u64 * 7919 + round * 104729) % 1000) as u32 + 1;
                        dest("10.0.0.1", d as u16 + 1, used, 0)
                    })
                    .collect::<Vec<_>>(),
                processes: (0..300u32)
                    .map(|p| proc_(p + 1, &format!("p{}", (p + round as u32) % 300), 1))
                    .collect(),
                ..NetnsUsage::default()
            })
            .map(|mut n| {
                n.destinations.sort_by_key(|d| std::cmp::Reverse(d.used));
                n
            })
            .collect();
        let mut e = event(Kind::ConnectError, Some(round as u32 + 200));
        e.netns = 5000 + round as u32;
        c.on_event(&e);
        let s = Snapshot {
            netns,
            ..Snapshot::default()
        };
        let text = x.render(&s, &c, &SelfStats::default(), round * SEC);
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        max_series = max_series.max(series);
        let namespaces: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.split("netns=\"").nth(1)?.split('"').next())
            .collect();
        assert!(
            namespaces.len() <= MAX_NETNS,
            "{} namespaces",
            namespaces.len()
        );
    }
    assert!(
        max_series <= series_bound(k),
        "{max_series} > {}",
        series_bound(k)
    );
    assert!(
        max_series > MAX_NETNS * 2 * k,
        "the test reaches the bound's order: {max_series}"
    );
}

#[test]
fn promtool_accepts_the_output() {
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(fixed_render().as_bytes())?;
            child.wait_with_output()
        })
    else {
        eprintln!("promtool not on PATH: skipped (the privileged serve test runs it)");
        return;
    };
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

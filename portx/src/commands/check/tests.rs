//! Every rule over fixture values: no kernel needed.

use std::net::IpAddr;

use super::*;
use crate::events::Family;

fn sock(state: TcpState, sport: u16, daddr: &str, dport: u16, inode: u64) -> DiagSocket {
    DiagSocket {
        family: Family::Ipv4,
        saddr: "127.0.0.1".parse().unwrap(),
        sport,
        daddr: daddr.parse::<IpAddr>().unwrap(),
        dport,
        state,
        timewait: state == TcpState::TimeWait,
        inode,
        uid: 0,
        cookie: 0,
        expires_ms: if state == TcpState::TimeWait {
            30_000
        } else {
            0
        },
        recv_queue: 0,
        send_queue: 0,
    }
}

fn inputs(range: (u16, u16), sockets: Vec<DiagSocket>) -> Inputs {
    Inputs {
        netns: 4026532000,
        name: Some("blue".into()),
        settings: Settings {
            port_range: range,
            reserved: vec![],
            tw_reuse: Some(2),
            fin_timeout: Some(60),
            max_tw_buckets: Some(131072),
            somaxconn: Some(4096),
            max_syn_backlog: Some(1024),
            tw_recycle_in: vec![],
        },
        sockets,
        owners: HashMap::from([(
            77,
            ProcOwner {
                pid: 900,
                comm: "mysqld".into(),
                cgroup_id: 1,
            },
        )]),
        not_seen: vec![],
    }
}

fn by_id<'a>(f: &'a [Finding], id: &str) -> Vec<&'a Finding> {
    f.iter().filter(|x| x.id == id).collect()
}

#[test]
fn listener_inside_the_range_is_critical_with_the_fix() {
    let mut i = inputs(
        (3000, 4000),
        vec![sock(TcpState::Listen, 3306, "0.0.0.0", 0, 77)],
    );
    i.settings.reserved = vec![(3500, 3501)];
    let f = findings(&i);
    let l = by_id(&f, "listener-in-ephemeral-range");
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].severity, Severity::Critical);
    assert!(
        l[0].title.starts_with("mysqld(900) listens on port 3306"),
        "{}",
        l[0].title
    );
    assert_eq!(
        l[0].fix,
        [
            "sysctl -w net.ipv4.ip_local_reserved_ports=3306,3500-3501",
            "echo 'net.ipv4.ip_local_reserved_ports = 3306,3500-3501' >> /etc/sysctl.d/90-portx.conf"
        ]
    );
    // Reserved, or outside the range: nothing to say.
    i.settings.reserved = vec![(3306, 3306)];
    assert!(by_id(&findings(&i), "listener-in-ephemeral-range").is_empty());
    let outside = inputs(
        (32768, 60999),
        vec![sock(TcpState::Listen, 3306, "0.0.0.0", 0, 77)],
    );
    assert!(by_id(&findings(&outside), "listener-in-ephemeral-range").is_empty());
    assert_eq!(exit_status(&[report(&outside)]), 0);
}

#[test]
fn one_finding_per_port_even_with_ipv4_and_ipv6_listeners() {
    let mut v6 = sock(TcpState::Listen, 3306, "::", 0, 77);
    v6.family = Family::Ipv6;
    v6.saddr = "::".parse().unwrap();
    let i = inputs(
        (3000, 4000),
        vec![sock(TcpState::Listen, 3306, "0.0.0.0", 0, 78), v6],
    );
    let f = findings(&i);
    assert_eq!(by_id(&f, "listener-in-ephemeral-range").len(), 1);
}

#[test]
fn service_ports_in_the_range_are_a_warning() {
    let f = findings(&inputs((1024, 65535), vec![]));
    let s = by_id(&f, "service-port-in-ephemeral-range");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].severity, Severity::Warn);
    assert!(s[0].title.contains("3306 (MySQL)") && s[0].title.contains("27017 (MongoDB)"));
    assert!(
        by_id(
            &findings(&inputs((32768, 60999), vec![])),
            "service-port-in-ephemeral-range"
        )
        .is_empty()
    );
}

#[test]
fn range_size() {
    let f = findings(&inputs((32768, 60999), vec![]));
    let r = by_id(&f, "port-range")[0];
    assert_eq!(r.severity, Severity::Info);
    assert!(r.title.contains("28232 source ports"), "{}", r.title);
    let small = findings(&inputs((40000, 40999), vec![]));
    let r = by_id(&small, "port-range")[0];
    assert_eq!(r.severity, Severity::Warn);
    assert!(r.fix[0].starts_with("sysctl -w net.ipv4.ip_local_port_range=\"15000 65000\""));
}

#[test]
fn destinations_near_capacity() {
    let full: Vec<DiagSocket> = (20000..20004)
        .map(|p| sock(TcpState::Established, p, "10.0.0.5", 5432, 0))
        .collect();
    let f = findings(&inputs((20000, 20003), full.clone()));
    let d = by_id(&f, "destination-near-capacity");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].severity, Severity::Critical);
    assert!(
        d[0].title
            .starts_with("10.0.0.5:5432 from 127.0.0.1: 4 of 4 source ports in use (100%)"),
        "{}",
        d[0].title
    );
    assert!(
        by_id(&f, "busiest-destinations")[0]
            .title
            .contains("10.0.0.5:5432 4/4")
    );
    assert_eq!(
        exit_status(&[report(&inputs((20000, 20003), full.clone()))]),
        2
    );
    // 3 of 4 is a warning; 1 of 4 says nothing.
    let f = findings(&inputs((20000, 20003), full[..3].to_vec()));
    assert_eq!(
        by_id(&f, "destination-near-capacity")[0].severity,
        Severity::Warn
    );
    let f = findings(&inputs((20000, 20003), full[..1].to_vec()));
    assert!(by_id(&f, "destination-near-capacity").is_empty());
}

#[test]
fn timewait_settings() {
    // Nine in TIME_WAIT and one timewait socket still in FIN_WAIT2 (its server has not
    // closed): the kernel's bucket count holds all ten.
    let tw: Vec<DiagSocket> = (20000..20010)
        .map(|p| {
            if p == 20009 {
                DiagSocket {
                    timewait: true,
                    ..sock(TcpState::FinWait2, p, "10.0.0.5", 80, 0)
                }
            } else {
                sock(TcpState::TimeWait, p, "10.0.0.5", 80, 0)
            }
        })
        .collect();
    let mut i = inputs((20000, 20019), tw);
    i.settings.tw_reuse = Some(0);
    let f = findings(&i);
    let r = by_id(&f, "tcp-tw-reuse")[0];
    assert_eq!(r.severity, Severity::Warn);
    assert!(r.title.contains("never reuses"));
    assert_eq!(r.fix[0], "sysctl -w net.ipv4.tcp_tw_reuse=1");
    i.settings.tw_reuse = Some(1);
    assert_eq!(
        by_id(&findings(&i), "tcp-tw-reuse")[0].severity,
        Severity::Info
    );
    i.settings.fin_timeout = Some(120);
    assert_eq!(
        by_id(&findings(&i), "tcp-fin-timeout")[0].severity,
        Severity::Warn
    );
    i.settings.max_tw_buckets = Some(10);
    let b = &findings(&i);
    let b = by_id(b, "tcp-max-tw-buckets")[0];
    assert_eq!(b.severity, Severity::Critical);
    assert!(
        b.title
            .starts_with("10 sockets in TIME_WAIT of net.ipv4.tcp_max_tw_buckets = 10: reached")
    );
    i.settings.max_tw_buckets = Some(12);
    assert_eq!(
        by_id(&findings(&i), "tcp-max-tw-buckets")[0].severity,
        Severity::Warn
    );
    i.settings.max_tw_buckets = Some(1000);
    assert_eq!(
        by_id(&findings(&i), "tcp-max-tw-buckets")[0].severity,
        Severity::Ok
    );
}

#[test]
fn full_accept_queue() {
    let mut l = sock(TcpState::Listen, 80, "0.0.0.0", 0, 77);
    l.recv_queue = 128;
    l.send_queue = 128;
    let f = findings(&inputs((32768, 60999), vec![l.clone()]));
    let b = by_id(&f, "listen-backlog")[0];
    assert_eq!(b.severity, Severity::Warn);
    assert!(
        b.title.contains("accept queue full on port 80 (128/128)"),
        "{}",
        b.title
    );
    l.recv_queue = 3;
    let f = findings(&inputs((32768, 60999), vec![l]));
    assert_eq!(by_id(&f, "listen-backlog")[0].severity, Severity::Info);
}

#[test]
fn tw_recycle_in_config_files() {
    let mut i = inputs((32768, 60999), vec![]);
    i.settings.tw_recycle_in = vec!["/etc/sysctl.d/10-old.conf".into()];
    let f = findings(&i);
    let r = by_id(&f, "tcp-tw-recycle")[0];
    assert_eq!(r.severity, Severity::Warn);
    assert!(r.title.contains("Linux 4.12"));
    assert_eq!(
        r.fix,
        ["sed -i '/tcp_tw_recycle/d' /etc/sysctl.d/10-old.conf"]
    );
}

#[test]
fn reserved_ranges_merge() {
    assert_eq!(reserved_with(&[(1, 3)], &[4, 8080]), "1-4,8080");
    assert_eq!(reserved_with(&[], &[3306]), "3306");
    assert_eq!(reserved_with(&[(10, 20)], &[15]), "10-20");
}

#[test]
fn text_lists_the_worst_first() {
    let i = inputs(
        (3000, 4000),
        vec![sock(TcpState::Listen, 3306, "0.0.0.0", 0, 77)],
    );
    let text = render_text(&report(&i));
    assert!(
        text.starts_with(
            "portx check: netns 4026532000 (blue)\n[CRITICAL] listener-in-ephemeral-range"
        ),
        "{text}"
    );
    assert!(
        text.contains("    fix: sysctl -w net.ipv4.ip_local_reserved_ports=3306\n"),
        "{text}"
    );
}

#[test]
fn reusable_timewait_is_not_counted_against_capacity() {
    // Four TIME_WAIT ports (30 s old) toward loopback with tw_reuse 2: connect() takes
    // them over, so the destination is not near capacity.
    let tw: Vec<DiagSocket> = (20000..20004)
        .map(|p| sock(TcpState::TimeWait, p, "127.0.0.1", 5432, 0))
        .collect();
    let f = findings(&inputs((20000, 20003), tw.clone()));
    assert!(by_id(&f, "destination-near-capacity").is_empty(), "{f:#?}");
    // The same between two other hosts' addresses: tw_reuse 2 is loopback only.
    let far: Vec<DiagSocket> = (20000..20004)
        .map(|p| DiagSocket {
            saddr: "10.0.0.1".parse().unwrap(),
            ..sock(TcpState::TimeWait, p, "10.0.0.5", 5432, 0)
        })
        .collect();
    let f = findings(&inputs((20000, 20003), far));
    let d = by_id(&f, "destination-near-capacity");
    assert_eq!(d.len(), 1, "{f:#?}");
    assert!(
        d[0].title
            .contains("4 of 4 source ports in use (100%), 4 in TIME_WAIT"),
        "{}",
        d[0].title
    );
    // With tw_reuse 0, loopback's count too.
    let mut i = inputs((20000, 20003), tw);
    i.settings.tw_reuse = Some(0);
    assert_eq!(by_id(&findings(&i), "destination-near-capacity").len(), 1);
}

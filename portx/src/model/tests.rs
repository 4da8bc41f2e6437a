//! Model tests with synthetic event sequences shaped like what the kernel produced in
//! the privileged tests (see tests/privileged).

use std::net::IpAddr;

use super::*;
use crate::events::{Comm, Family};

const NS: u32 = 4026532000;
const S: u64 = 1_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Builds events for one socket the way the BPF programs report them.
struct Sk {
    sock: u64,
    pid: u32,
    comm: &'static str,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
}

impl Sk {
    fn client(sock: u64, pid: u32, sport: u16, daddr: &str, dport: u16) -> Self {
        let daddr = ip(daddr);
        let saddr = if daddr.is_ipv6() {
            ip("::1")
        } else {
            ip("127.0.0.1")
        };
        Self {
            sock,
            pid,
            comm: "curl",
            saddr,
            sport,
            daddr,
            dport,
        }
    }

    /// A listener on 0.0.0.0:`port` (its events carry no peer).
    fn listener(sock: u64, pid: u32, comm: &'static str, port: u16) -> Self {
        Self {
            sock,
            pid,
            comm,
            saddr: ip("0.0.0.0"),
            sport: port,
            daddr: ip("0.0.0.0"),
            dport: 0,
        }
    }

    fn ev(
        &self,
        kind: Kind,
        ts: u64,
        sport: u16,
        old: Option<TcpState>,
        new: Option<TcpState>,
    ) -> TraceEvent {
        TraceEvent {
            kind,
            ts_ns: ts,
            pid: self.pid,
            tid: self.pid,
            comm: if self.pid == 0 {
                Comm::default()
            } else {
                self.comm.into()
            },
            cgroup_id: 7,
            netns: NS,
            sock: self.sock,
            family: if self.saddr.is_ipv6() {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
            saddr: self.saddr,
            sport,
            daddr: self.daddr,
            dport: self.dport,
            old_state: old,
            new_state: new,
            errno: None,
            bound_port: None,
        }
    }

    fn state(&self, ts: u64, old: TcpState, new: TcpState) -> TraceEvent {
        // sport is 0 until the port is chosen inside inet_hash_connect.
        let sport = if old == TcpState::Close && new == TcpState::SynSent {
            0
        } else {
            self.sport
        };
        self.ev(Kind::State, ts, sport, Some(old), Some(new))
    }

    fn connect(&self, ts: u64) -> TraceEvent {
        self.ev(Kind::Connect, ts, self.sport, None, None)
    }

    /// CLOSE->SYN_SENT, SYN_SENT->ESTABLISHED, connect.
    fn open(&self, m: &mut Model, ts: u64) {
        use TcpState::*;
        m.apply(&self.state(ts, Close, SynSent));
        m.apply(&self.state(ts + 1, SynSent, Established));
        m.apply(&self.connect(ts + 2));
    }

    /// Active close as the kernel reports it: no transition to TIME_WAIT.
    fn active_close(&self, m: &mut Model, ts: u64) {
        use TcpState::*;
        m.apply(&self.state(ts, Established, FinWait1));
        m.apply(&self.state(ts + 1, FinWait1, FinWait2));
        m.apply(&self.state(ts + 2, FinWait2, Close));
    }
}

fn model() -> Model {
    let mut m = Model::new();
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: Some("blue".into()),
            port_range: (20000, 20009),
            reserved: vec![],
            ..Default::default()
        },
    );
    m
}

fn dest<'a>(snap: &'a Snapshot, daddr: &str, dport: u16) -> &'a DestUsage {
    snap.netns
        .iter()
        .flat_map(|n| &n.destinations)
        .find(|d| d.daddr == daddr && d.dport == dport)
        .unwrap_or_else(|| panic!("no destination {daddr}:{dport} in {snap:#?}"))
}

fn state(d: &DestUsage, s: &str) -> u32 {
    d.states.get(s).copied().unwrap_or(0)
}

#[test]
fn allocation_counts_toward_the_destination() {
    let mut m = model();
    Sk::client(0xa1, 100, 20003, "10.0.0.5", 5432).open(&mut m, 10 * S);
    Sk::client(0xa2, 101, 20004, "10.0.0.5", 5432).open(&mut m, 10 * S + 100);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 5432);
    assert_eq!((d.used, d.capacity), (2, 10));
    assert_eq!(state(d, "ESTABLISHED"), 2);
    assert_eq!(d.saddr, "127.0.0.1");
    assert_eq!(d.owners.len(), 2);
    assert_eq!(snap.netns[0].port_range, [20000, 20009]);
    assert_eq!(snap.netns[0].name.as_deref(), Some("blue"));
    let procs = &snap.netns[0].processes;
    assert_eq!(procs.len(), 2);
    assert!(
        procs
            .iter()
            .all(|p| p.ports == 1 && p.comm == "curl" && p.cgroup_id == 7)
    );
}

#[test]
fn sport_zero_at_syn_sent_is_not_used_until_known() {
    use TcpState::*;
    let mut m = model();
    let c = Sk::client(0xb1, 100, 20001, "10.0.0.5", 80);
    m.apply(&c.state(S, Close, SynSent));
    let d = dest(&m.snapshot(View::default()), "10.0.0.5", 80).clone();
    assert_eq!((state(&d, "SYN_SENT"), d.used), (1, 0));
    m.apply(&c.state(S + 1, SynSent, Established));
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    assert_eq!(
        (state(d, "SYN_SENT"), state(d, "ESTABLISHED"), d.used),
        (0, 1, 1)
    );
}

#[test]
fn every_close_path() {
    use TcpState::*;
    let mut m = model();
    // Active close: the 4-tuple stays in TIME_WAIT.
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, S);
    a.active_close(&mut m, 2 * S);
    // Passive close: gone.
    let p = Sk::client(2, 100, 20002, "10.0.0.5", 80);
    p.open(&mut m, S);
    m.apply(&p.state(2 * S, Established, CloseWait));
    m.apply(&p.state(2 * S + 1, CloseWait, LastAck));
    m.apply(&p.state(2 * S + 2, LastAck, Close));
    // Reset: gone.
    let r = Sk::client(3, 100, 20003, "10.0.0.5", 80);
    r.open(&mut m, S);
    m.apply(&r.state(2 * S, Established, Close));
    // Failed connect (refused): gone.
    let f = Sk::client(4, 100, 20004, "10.0.0.5", 80);
    m.apply(&f.state(S, Close, SynSent));
    m.apply(&f.state(S + 1, SynSent, Close));
    // Simultaneous close through CLOSING: TIME_WAIT too.
    let c = Sk::client(5, 100, 20005, "10.0.0.5", 80);
    c.open(&mut m, S);
    m.apply(&c.state(2 * S, Established, FinWait1));
    m.apply(&c.state(2 * S + 1, FinWait1, Closing));
    m.apply(&c.state(2 * S + 2, Closing, Close));

    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    assert_eq!(state(d, "TIME_WAIT"), 2, "{d:?}");
    assert_eq!(d.states.values().sum::<u32>(), 2, "{d:?}");
    assert_eq!(d.used, 2);
    assert_eq!(m.socket_count(), 0);
    assert_eq!(m.timewait_count(), 2);
    // TIME_WAIT stays attributed to the process that closed.
    assert_eq!(d.owners[0].pid, 100);
    assert_eq!(snap.netns[0].processes[0].ports, 2);
}

#[test]
fn timewait_expires_after_sixty_seconds() {
    let mut m = model();
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, S);
    a.active_close(&mut m, 2 * S);
    m.tick(2 * S + 2 + TIME_WAIT_NS - 1);
    assert_eq!(m.timewait_count(), 1);
    m.tick(2 * S + 2 + TIME_WAIT_NS);
    assert_eq!(m.timewait_count(), 0);
    // Nothing left, and after the rate window the destination row goes too.
    m.tick(200 * S);
    let snap = m.snapshot(View::default());
    assert!(snap.netns[0].destinations.is_empty(), "{snap:#?}");
    assert_eq!(m.destination_count(), 0);
}

#[test]
fn timewait_reused_by_a_new_connection_is_freed() {
    let mut m = model();
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, S);
    a.active_close(&mut m, 2 * S);
    assert_eq!(m.timewait_count(), 1);
    // tcp_tw_reuse: a new socket gets the same 4-tuple.
    let b = Sk::client(2, 100, 20001, "10.0.0.5", 80);
    b.open(&mut m, 3 * S);
    assert_eq!(m.timewait_count(), 0);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    assert_eq!(
        (d.used, state(d, "ESTABLISHED"), state(d, "TIME_WAIT")),
        (1, 1, 0)
    );
}

#[test]
fn owners_survive_softirq_events() {
    use TcpState::*;
    let mut m = model();
    let c = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    m.apply(&c.state(S, Close, SynSent));
    // The BPF side reports the owner it learned, but an event whose owner is unknown
    // (pid 0) must not erase what the model knows.
    let softirq = Sk {
        pid: 0,
        ..Sk::client(1, 0, 20001, "10.0.0.5", 80)
    };
    m.apply(&softirq.state(S + 1, SynSent, Established));
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    let owners: Vec<OwnerPorts> = d
        .owners
        .iter()
        .map(|o| OwnerPorts {
            client: None,
            ..o.clone()
        })
        .collect();
    assert_eq!(
        owners,
        vec![OwnerPorts {
            pid: 100,
            comm: "curl".into(),
            ports: 1,
            cgroup_id: 7,
            workload: None,
            client: None,
        }]
    );
}

#[test]
fn accepted_sockets_and_listeners_are_not_destinations() {
    use TcpState::*;
    let mut m = model();
    let listener = Sk::listener(9, 50, "nginx", 80);
    m.apply(&listener.state(S, Close, Listen));
    let child = Sk {
        sock: 10,
        pid: 50,
        comm: "nginx",
        saddr: ip("127.0.0.1"),
        sport: 80,
        daddr: ip("127.0.0.1"),
        dport: 20005,
    };
    m.apply(&child.state(S, Listen, SynRecv));
    m.apply(&child.state(S, SynRecv, Established));
    let snap = m.snapshot(View::default());
    assert!(snap.netns[0].destinations.is_empty(), "{snap:#?}");
    assert!(snap.netns[0].processes.is_empty());
    assert_eq!(m.socket_count(), 2);
}

/// The accounting path leaves out a child's clone (LISTEN -> SYN_RECV), but not the
/// later changes of a child of a listener with backlog 0: its first event then leaves
/// SYN_RECV. It holds the listener's port (here inside the range), not an ephemeral
/// one, and belongs to the listener.
#[test]
fn children_first_seen_leaving_syn_recv_are_the_listeners() {
    use TcpState::*;
    let mut m = model();
    m.apply(&Sk::listener(9, 50, "mysqld", 20005).state(S, Close, Listen));
    let child = Sk {
        sock: 10,
        pid: 0,
        comm: "",
        saddr: ip("127.0.0.1"),
        sport: 20005,
        daddr: ip("127.0.0.1"),
        dport: 20006,
    };
    m.apply(&child.state(S, SynRecv, Established));
    let snap = m.snapshot(View::default());
    assert!(snap.netns[0].destinations.is_empty(), "{snap:#?}");
    assert!(snap.netns[0].processes.is_empty(), "{snap:#?}");
    assert_eq!(m.owner_pid(10), Some(50));
    m.apply(&child.state(S + 1, Established, CloseWait));
    m.apply(&child.state(S + 2, LastAck, Close));
    assert_eq!(m.socket_count(), 1);
}

#[test]
fn accepted_sockets_belong_to_the_listener() {
    use TcpState::*;
    let mut m = model();
    let at = |sock, pid, sport, dport| Sk {
        sock,
        pid,
        comm: "nginx",
        saddr: ip("127.0.0.1"),
        sport,
        daddr: ip("127.0.0.1"),
        dport,
    };
    m.apply(&at(9, 50, 80, 0).state(S, Close, Listen));
    // Children are created in softirq: their events name no one.
    let child = at(10, 0, 80, 20005);
    m.apply(&child.state(S, Listen, SynRecv));
    m.apply(&child.state(S, SynRecv, Established));
    assert_eq!(m.owner_pid(10), Some(50));
    // Another namespace's port 80 is not this listener's.
    let mut elsewhere = at(11, 0, 80, 20006).state(S, Listen, SynRecv);
    elsewhere.netns = NS + 1;
    m.apply(&elsewhere);
    assert_eq!(m.owner_pid(11), Some(0));
    // Once the listener is closed, later children are nobody's.
    m.apply(&at(9, 0, 80, 0).state(S + 1, Listen, Close));
    m.apply(&at(12, 0, 80, 20007).state(S + 1, Listen, SynRecv));
    assert_eq!(m.owner_pid(12), Some(0));
    // A close run by another task does not take the socket from its owner.
    m.apply(&at(10, 77, 80, 20005).state(S + 2, Established, FinWait1));
    assert_eq!(m.owner_pid(10), Some(50));
}

#[test]
fn connecting_takes_a_socket_address_left_by_a_missed_close() {
    use TcpState::*;
    let mut m = model();
    Sk::client(1, 100, 20001, "10.0.0.5", 80).open(&mut m, S);
    // Its close was lost; a new socket at the same address connects.
    Sk::client(1, 200, 20002, "10.0.0.5", 80).open(&mut m, 2 * S);
    assert_eq!(m.owner_pid(1), Some(200));
    assert_eq!(m.snapshot(View::default()).drift.closes_missed, 1);
    // Softirq events keep it.
    let softirq = Sk::client(1, 0, 20002, "10.0.0.5", 80);
    m.apply(&softirq.state(2 * S + 5, Established, CloseWait));
    assert_eq!(m.owner_pid(1), Some(200));
}

#[test]
fn an_address_reused_after_its_close_is_no_missed_close() {
    let mut m = model();
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, S);
    a.active_close(&mut m, S + 10);
    Sk::client(1, 200, 20002, "10.0.0.5", 80).open(&mut m, 2 * S);
    assert_eq!(m.snapshot(View::default()).drift.closes_missed, 0);
}

fn baseline_sock(sport: u16, dport: u16, state: TcpState, pid: u32) -> BaselineSocket {
    BaselineSocket {
        sock: 0,
        tuple: Tuple::new(ip("127.0.0.1"), sport, ip("10.0.0.5"), dport),
        state,
        owner: (pid != 0).then(|| (pid, "java".to_owned(), 3)),
        expires_ms: if state == TcpState::TimeWait {
            30_000
        } else {
            0
        },
        orphan: state == TcpState::TimeWait,
    }
}

/// A listener of the start-up dump on 0.0.0.0:`port`.
fn baseline_listener(port: u16, pid: u32, comm: &str) -> BaselineSocket {
    BaselineSocket {
        sock: 0,
        tuple: Tuple::new(ip("0.0.0.0"), port, ip("0.0.0.0"), 0),
        state: TcpState::Listen,
        owner: Some((pid, comm.into(), 3)),
        expires_ms: 0,
        orphan: false,
    }
}

#[test]
fn baseline_then_buffered_events_without_double_counting() {
    use TcpState::*;
    let mut m = model();
    let base = [
        baseline_sock(20001, 80, Established, 300),
        baseline_sock(20002, 80, Established, 300),
        baseline_sock(20003, 80, TimeWait, 0),
        // A listener and one of its accepted sockets are not destinations.
        baseline_listener(8080, 301, "svc"),
        BaselineSocket {
            sock: 0,
            tuple: Tuple::new(ip("127.0.0.1"), 8080, ip("127.0.0.1"), 20009),
            state: Established,
            owner: Some((301, "svc".into(), 3)),
            expires_ms: 0,
            orphan: false,
        },
    ];
    m.load_baseline(NS, &base, 10 * S);
    // Buffered events: a socket created while the dump ran (also in the dump under
    // its tuple) and the close of a baseline socket.
    let new = Sk::client(0xc1, 300, 20002, "10.0.0.5", 80);
    m.apply(&new.state(9 * S, Close, SynSent));
    m.apply(&new.state(9 * S + 1, SynSent, Established));
    let old = Sk::client(0xc2, 300, 20001, "10.0.0.5", 80);
    m.apply(&old.state(10 * S + 5, Established, CloseWait));
    m.apply(&old.state(10 * S + 6, CloseWait, LastAck));
    m.apply(&old.state(10 * S + 7, LastAck, Close));

    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    assert_eq!(state(d, "ESTABLISHED"), 1, "{d:?}");
    assert_eq!(state(d, "TIME_WAIT"), 1, "{d:?}");
    assert_eq!(d.used, 2);
    assert_eq!(snap.netns[0].destinations.len(), 1, "{snap:#?}");
    // Baseline TIME_WAIT uses the kernel's remaining time, not a fresh 60 s.
    m.tick(10 * S + 30 * S);
    assert_eq!(m.timewait_count(), 0);
}

/// The MySQL-on-3306 outage after a restart: accepted connections of the old
/// listener were open when portx started and closed since (the accounting path sent
/// no close for them), then a client took 3306 and the new listener's bind() failed.
/// Once the drift check reports them gone (and the baseline listener's close found
/// it by address and port), the holder named is the client, not a stale listener or
/// accepted connection of mysqld.
#[test]
fn baseline_accepted_connections_are_forgotten_when_gone() {
    use TcpState::*;
    let mut m = model();
    let config = NetnsConfig {
        name: None,
        port_range: (3306, 3310),
        reserved: vec![],
        ..Default::default()
    };
    m.set_netns_config(NS, config.clone());
    let accepted = |peer: u16| BaselineSocket {
        sock: 0,
        tuple: Tuple::new(ip("127.0.0.1"), 3306, ip("127.0.0.1"), peer),
        state: Established,
        owner: Some((200, "mysqld".into(), 3)),
        expires_ms: 0,
        orphan: false,
    };
    let base = [
        baseline_listener(3306, 200, "mysqld"),
        accepted(3307),
        accepted(3308),
        // A client of the range (its own events close it) and a TIME_WAIT entry.
        baseline_sock(3309, 80, Established, 300),
        baseline_sock(3310, 80, TimeWait, 0),
    ];
    // What the prober watches: the accepted connections only.
    let unclosed = baseline_without_close(&base, &config);
    assert_eq!(unclosed, [accepted(3307).tuple, accepted(3308).tuple]);
    m.load_baseline(NS, &base, S);
    assert_eq!(m.socket_count(), 4);

    // mysqld restarts: its listener closes (an event), the accepted connections go
    // without one. A client gets 3306 from the range.
    let listener = Sk::listener(2, 200, "mysqld", 3306);
    m.apply(&listener.ev(Kind::State, 2 * S, 3306, Some(Listen), Some(Close)));
    m.feed(&input::Input::BaselineGone {
        netns: NS,
        tuples: unclosed.clone(),
    });
    // Again (a later check): nothing more to forget.
    assert_eq!(m.forget_baseline(NS, &unclosed), 0);
    assert_eq!(m.socket_count(), 1, "only the client of the range is left");
    Sk::client(1, 100, 3306, "127.0.0.1", 9000).open(&mut m, 3 * S);

    let mut fail = listener.ev(Kind::BindError, 4 * S, 3306, None, None);
    fail.errno = Some(98);
    m.apply(&fail);
    let snap = m.snapshot(View::default());
    assert_eq!(snap.drift.baseline_gone, 2);
    let h = snap.failures[0].holder.as_ref().expect("holder");
    assert_eq!((h.pid, h.sport, h.dport), (100, 3306, 9000), "{h:?}");
}

#[test]
fn rate_and_eta_per_destination() {
    let mut m = model();
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: None,
            port_range: (20000, 29999),
            reserved: vec![],
            ..Default::default()
        },
    );
    // 20 new connections per second for 10 s, none closed.
    for (i, port) in (0..200u64).zip(20000u16..) {
        Sk::client(1000 + i, 100, port, "10.0.0.5", 80).open(&mut m, 100 * S + i * S / 20);
    }
    m.tick(109 * S + 99 * S / 100);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    // Over the 9.99 s since the first.
    assert!((d.rate_per_s - 20.0).abs() < 0.05, "{}", d.rate_per_s);
    let eta = d.eta_s.expect("growing");
    // 9800 ports left at about 20/s.
    assert!((eta - 490.0).abs() < 60.0, "{eta}");
}

#[test]
fn capacity_and_ranges_follow_the_namespace() {
    let mut m = model();
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: None,
            port_range: (3306, 3310),
            reserved: vec![],
            ..Default::default()
        },
    );
    for (i, port) in [3306u16, 3307, 3308, 3309].into_iter().enumerate() {
        Sk::client(i as u64 + 1, 100, port, "127.0.0.1", 9000).open(&mut m, S);
    }
    let snap = m.snapshot(View::default());
    assert_eq!(snap.netns[0].capacity, 4);
    let d = dest(&snap, "127.0.0.1", 9000);
    assert_eq!((d.used, d.capacity), (4, 4));
    // Reserving a port takes it out of the range: used is recounted.
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: None,
            port_range: (3306, 3310),
            reserved: vec![(3306, 3306)],
            ..Default::default()
        },
    );
    // Four ports, one of them reserved, and an odd range: three are guaranteed.
    let d = dest(&m.snapshot(View::default()), "127.0.0.1", 9000).clone();
    assert_eq!((d.used, d.capacity), (3, 3));
}

#[test]
fn bind_conflict_names_the_ephemeral_holder() {
    let mut m = model();
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: None,
            port_range: (3306, 3310),
            reserved: vec![],
            ..Default::default()
        },
    );
    Sk::client(1, 100, 3306, "127.0.0.1", 9000).open(&mut m, S);
    let mysqld = Sk::listener(2, 200, "mysqld", 3306);
    let mut fail = mysqld.ev(Kind::BindError, 2 * S, 3306, None, None);
    fail.errno = Some(98);
    m.apply(&fail);
    let snap = m.snapshot(View::default());
    let f = &snap.failures[0];
    let h = f.holder.as_ref().expect("holder");
    assert_eq!(
        (h.pid, h.comm.as_str(), h.sport, h.dport),
        (100, "curl", 3306, 9000)
    );
    assert_eq!(h.state, "ESTABLISHED");
    assert!(h.ephemeral);
    assert!(
        f.explanation.contains("ephemeral source port"),
        "{}",
        f.explanation
    );
    assert!(
        f.explanation.contains("ip_local_reserved_ports=3306"),
        "{}",
        f.explanation
    );
    assert_eq!(f.event.error.as_deref(), Some("EADDRINUSE"));
    // A fixed port that a listener holds is not called ephemeral.
    let svc = Sk::listener(3, 300, "svc", 8080);
    m.apply(&svc.state(3 * S, TcpState::Close, TcpState::Listen));
    let mut fail = mysqld.ev(Kind::BindError, 4 * S, 8080, None, None);
    fail.errno = Some(98);
    m.apply(&fail);
    let snap = m.snapshot(View::default());
    let h = snap.failures[1].holder.as_ref().unwrap();
    assert_eq!(
        (h.pid, h.state.as_str(), h.ephemeral),
        (300, "LISTEN", false)
    );
}

/// A failed bind() of `port` by pid 200, from a new thread and socket each time.
fn bind_failure(m: &mut Model, port: u16, ts: u64) {
    let sk = Sk::listener(ts, 200, "mysqld", port);
    let mut e = sk.ev(Kind::BindError, ts, port, None, None);
    e.errno = Some(98);
    e.tid = (ts / S) as u32;
    m.apply(&e);
}

#[test]
fn repeated_failures_are_one_entry_with_count_and_first_and_last() {
    let mut m = model();
    bind_failure(&mut m, 3306, 2 * S);
    bind_failure(&mut m, 3307, 3 * S);
    bind_failure(&mut m, 3306, 4 * S);
    bind_failure(&mut m, 3306, 5 * S);
    // connect() retries get another source port each time: still one failure.
    let c = Sk::client(50, 100, 0, "127.0.0.1", 9000);
    for (i, sport) in [0, 20001].into_iter().enumerate() {
        let mut e = c.ev(Kind::ConnectError, (6 + i as u64) * S, sport, None, None);
        e.errno = Some(99);
        m.apply(&e);
    }
    let snap = m.snapshot(View::default());
    let got: Vec<_> = snap
        .failures
        .iter()
        .map(|f| {
            (
                f.event.event.as_str(),
                f.event.sport,
                f.count,
                f.first_ts_ns,
                f.last_ts_ns,
            )
        })
        .collect();
    // Oldest first; the repeated bind moved past 3307, which stays apart.
    assert_eq!(
        got,
        [
            ("bind_error", 3307, 1, 3 * S, 3 * S),
            ("bind_error", 3306, 3, 2 * S, 5 * S),
            ("connect_error", 20001, 2, 6 * S, 7 * S),
        ]
    );
    // The event fields are the latest occurrence's.
    let f = &snap.failures[1];
    assert_eq!((f.event.ts_ns, f.event.tid), (5 * S, 5));
    assert_eq!(m.last_failure().map(|f| f.count), Some(2));
    let json = serde_json::to_value(f).unwrap();
    assert_eq!(json["count"], 3);
    assert_eq!(
        (json["first_ts_ns"].as_u64(), json["ts_ns"].as_u64()),
        (Some(2 * S), Some(5 * S))
    );
}

#[test]
fn failure_ring_is_bounded_and_a_repeat_keeps_others() {
    let mut m = model();
    for i in 0..100 {
        bind_failure(&mut m, 1000 + i, (1 + u64::from(i)) * S);
    }
    let snap = m.snapshot(View::default());
    assert_eq!(snap.failures.len(), MAX_FAILURES);
    assert_eq!(snap.failures[0].event.sport, 1036, "the oldest went first");
    // A storm of one failure takes one entry, not the ring.
    for i in 0..1000 {
        bind_failure(&mut m, 1099, (200 + i) * S);
    }
    let snap = m.snapshot(View::default());
    assert_eq!(snap.failures.len(), MAX_FAILURES);
    assert_eq!(snap.failures[0].event.sport, 1036);
    assert_eq!(snap.failures.last().map(|f| f.count), Some(1001));
    // One that was pushed out comes back as new.
    bind_failure(&mut m, 1000, 2000 * S);
    let snap = m.snapshot(View::default());
    assert_eq!(snap.failures.len(), MAX_FAILURES);
    let back = snap.failures.last().unwrap();
    assert_eq!(
        (back.event.sport, back.count, back.first_ts_ns),
        (1000, 1, 2000 * S)
    );
}

#[test]
fn exhaustion_failure_names_the_top_owner() {
    let mut m = model();
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: None,
            port_range: (20000, 20003),
            reserved: vec![],
            ..Default::default()
        },
    );
    for (i, port) in (20000..=20003).enumerate() {
        Sk::client(i as u64 + 1, 100, port, "127.0.0.1", 9000).open(&mut m, S);
    }
    let c = Sk::client(9, 100, 0, "127.0.0.1", 9000);
    let mut fail = c.ev(Kind::ConnectError, 2 * S, 0, None, None);
    fail.errno = Some(99);
    fail.saddr = ip("0.0.0.0");
    m.apply(&fail);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "127.0.0.1", 9000);
    assert_eq!((d.used, d.capacity), (4, 4));
    let f = &snap.failures[0];
    assert_eq!(f.holder.as_ref().unwrap().pid, 100);
    assert!(
        f.explanation
            .starts_with("no free source port toward 127.0.0.1:9000: 4 of 4"),
        "{}",
        f.explanation
    );
}

#[test]
fn drift_check_corrects_both_ways() {
    let mut m = model();
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, S);
    a.active_close(&mut m, 2 * S);
    let missed = Tuple::new(ip("127.0.0.1"), 20007, ip("10.0.0.5"), 80);
    // The kernel no longer has 20001 (e.g. killed by a RST) but has one portx missed.
    let (added, removed) = m.reconcile_timewait(NS, &[(missed, 5_000)], 5 * S, &[]);
    assert_eq!((added, removed), (1, 1));
    assert_eq!(m.timewait_tuples(NS), vec![missed]);
    let snap = m.snapshot(View::default());
    assert_eq!(
        snap.drift,
        Drift {
            checks: 1,
            added: 1,
            removed: 1,
            baseline_gone: 0,
            closes_missed: 0,
        }
    );
    assert_eq!(dest(&snap, "10.0.0.5", 80).used, 1);
    // Entries created after the dump started are not removed as stale.
    let b = Sk::client(2, 100, 20002, "10.0.0.5", 80);
    b.open(&mut m, 6 * S);
    b.active_close(&mut m, 7 * S);
    let (_, removed) = m.reconcile_timewait(NS, &[(missed, 1_000)], 6 * S, &[]);
    assert_eq!(removed, 0);
    // The kernel's expiry is exact: 1 s after 6 s.
    m.tick(7 * S + 1);
    assert_eq!(m.timewait_tuples(NS).len(), 1);
}

/// A model with client socket `a` (pid 100, port 20001 to 10.0.0.5:80) closing, in
/// FIN_WAIT1 since 2 s, and its 4-tuple.
fn closing_client() -> (Model, Sk, Tuple) {
    let mut m = model();
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, S);
    m.apply(&a.state(2 * S, TcpState::Established, TcpState::FinWait1));
    (m, a, Tuple::new(ip("127.0.0.1"), 20001, ip("10.0.0.5"), 80))
}

/// The kernel lists a timewait socket before it reports the full socket's move to
/// CLOSE (tcp_time_wait hashes the one in place of the other, then calls tcp_done), and
/// a dump reads the table while connections come and go: a drift check can find an
/// entry on a 4-tuple the model holds live. It leaves it to the events rather than
/// count the port twice; a timewait socket on a tuple nobody holds is still added.
#[test]
fn drift_check_leaves_a_live_sockets_timewait_to_its_events() {
    use TcpState::*;
    let (mut m, a, tw) = closing_client();
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 60_000)], 3 * S, &[]),
        (0, 0)
    );
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    assert_eq!(d.used, 1);
    assert_eq!(d.states.get("TIME_WAIT"), None);
    assert_eq!(snap.drift.added, 0);
    // The close comes: the entry is the event's, with its owner.
    m.apply(&a.state(3 * S + 1, FinWait2, Close));
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    assert_eq!((d.used, d.states.get("TIME_WAIT")), (1, Some(&1)));
    assert_eq!(d.owners[0].pid, 100);
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 59_000)], 4 * S, &[]),
        (0, 0)
    );
    // A connection that took over a timewait 4-tuple the dump had already read.
    let b = Sk::client(2, 100, 20002, "10.0.0.5", 80);
    b.open(&mut m, 5 * S);
    let tw_b = Tuple::new(ip("127.0.0.1"), 20002, ip("10.0.0.5"), 80);
    let nobodys = Tuple::new(ip("127.0.0.1"), 20003, ip("10.0.0.5"), 80);
    let kernel = [(tw, 58_000), (tw_b, 60_000), (nobodys, 60_000)];
    assert_eq!(m.reconcile_timewait(NS, &kernel, 6 * S, &[]), (1, 0));
    let snap = m.snapshot(View::default());
    assert_eq!(dest(&snap, "10.0.0.5", 80).used, 3);
}

/// A close that never reaches portx (docs/missed-moves.md: the tracepoint ran no
/// program for it) leaves a live socket in the model whose 4-tuple the kernel holds as
/// a timewait socket. One check leaves it to its events; a check whose dump began over
/// a second after the first found it closes the socket into that timewait socket, so
/// the port counts once, as TIME_WAIT, and says so in `closes_missed`.
#[test]
fn a_live_socket_the_kernel_keeps_as_timewait_is_closed_at_a_later_check() {
    let (mut m, _, tw) = closing_client();
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 60_000)], 3 * S, &[tw]),
        (0, 0)
    );
    // Less than a second later: its close may still be on its way.
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 59_500)], 3 * S + S / 2, &[tw]),
        (0, 0)
    );
    let snap = m.snapshot(View::default());
    assert_eq!(
        dest(&snap, "10.0.0.5", 80).states.get("FIN_WAIT1"),
        Some(&1)
    );
    assert_eq!(snap.drift.closes_missed, 0);
    // A second after the first: it never will.
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 59_000)], 4 * S, &[tw]),
        (1, 0)
    );
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    assert_eq!(d.used, 1);
    assert_eq!(d.states.get("FIN_WAIT1"), None);
    // Still in FIN_WAIT2 in the kernel, shown as ss shows it; still the owner's port.
    assert_eq!(d.states.get("FIN_WAIT2"), Some(&1));
    assert_eq!(d.owners[0].pid, 100);
    assert_eq!((snap.drift.closes_missed, snap.drift.added), (1, 1));
    assert_eq!(m.socket_count(), 0);
    // The next check finds the entry known; a new socket at the address is no
    // second missed close.
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 58_000)], 5 * S, &[tw]),
        (0, 0)
    );
    Sk::client(1, 200, 20002, "10.0.0.5", 80).open(&mut m, 6 * S);
    assert_eq!(m.snapshot(View::default()).drift.closes_missed, 1);
}

/// The first sighting is forgotten when a check no longer finds the live socket's
/// 4-tuple as a timewait socket (its close came, or the kernel let it go): a later
/// sighting starts the second over.
#[test]
fn a_sighting_of_a_live_sockets_timewait_is_forgotten_when_not_seen_again() {
    let (mut m, _, tw) = closing_client();
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 60_000)], 3 * S, &[]),
        (0, 0)
    );
    assert_eq!(m.reconcile_timewait(NS, &[], 4 * S, &[]), (0, 0));
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 60_000)], 5 * S, &[]),
        (0, 0)
    );
    assert_eq!(m.socket_count(), 1);
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 59_000)], 6 * S, &[]),
        (1, 0)
    );
    assert_eq!(m.socket_count(), 0);
}

/// A timewait socket the kernel freed (its `TimewaitEnd` came: a new connection took
/// its 4-tuple over, before that one's port is known) after a drift check's dump began
/// may be in the dump: it is not added back. One the kernel freed before is.
#[test]
fn drift_check_does_not_bring_back_a_timewait_socket_freed_during_its_dump() {
    let mut m = model();
    // Drift checks are running.
    assert_eq!(m.reconcile_timewait(NS, &[], S, &[]), (0, 0));
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, 2 * S);
    a.active_close(&mut m, 2 * S);
    m.apply(&a.ev(Kind::TimewaitEnd, 5 * S, 20001, None, None));
    let tw = Tuple::new(ip("127.0.0.1"), 20001, ip("10.0.0.5"), 80);
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 57_000)], 4 * S, &[]),
        (0, 0)
    );
    assert_eq!(m.timewait_tuples(NS), Vec::<Tuple>::new());
    // A dump that began after it went and still lists it: the kernel has it.
    assert_eq!(
        m.reconcile_timewait(NS, &[(tw, 55_000)], 6 * S, &[]),
        (1, 0)
    );
}

/// The kernel frees a timewait socket when its timer fires, up to a timer-wheel bucket
/// after its expiry; until then a dump lists it with no time left. The model, which
/// let it go at its expiry, does not add it back.
#[test]
fn drift_check_leaves_a_timewait_socket_past_its_expiry() {
    let mut m = model();
    let a = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    a.open(&mut m, S);
    a.active_close(&mut m, S);
    m.tick(61 * S + 3);
    assert_eq!(m.timewait_tuples(NS), Vec::<Tuple>::new());
    let tw = Tuple::new(ip("127.0.0.1"), 20001, ip("10.0.0.5"), 80);
    assert_eq!(m.reconcile_timewait(NS, &[(tw, 0)], 62 * S, &[]), (0, 0));
    assert_eq!(m.timewait_tuples(NS), Vec::<Tuple>::new());
    // One with time left that the model lacks is added.
    assert_eq!(m.reconcile_timewait(NS, &[(tw, 1)], 62 * S, &[]), (1, 0));
}

/// Every dump's expiries differ from the model's by a few milliseconds (the dump's
/// length, jiffies): frequent checks of many entries leave the expiry queue as it is,
/// and correct only an expiry that is off.
#[test]
fn drift_checks_requeue_only_expiries_that_are_off() {
    let mut m = model();
    let mut kernel = Vec::new();
    for i in 0..8u16 {
        let c = Sk::client(u64::from(i) + 1, 100, 20000 + i, "10.0.0.5", 80);
        c.open(&mut m, S);
        c.active_close(&mut m, S);
        let t = Tuple::new(ip("127.0.0.1"), 20000 + i, ip("10.0.0.5"), 80);
        kernel.push((t, 0));
    }
    let queued = m.tw_queue.len();
    // Closed at 1 s (plus 2 ns): the kernel's expiry is 61 s.
    for check in 1..=100u64 {
        let at = S + check * 20_000_000;
        for (_, ms) in &mut kernel {
            *ms = ((61 * S - at) / 1_000_000) as u32 - (check % 3) as u32;
        }
        assert_eq!(m.reconcile_timewait(NS, &kernel, at, &[]), (0, 0));
    }
    assert_eq!(m.tw_queue.len(), queued);
    // One entry's expiry off by seconds (a FIN_WAIT2 timeout, say) is taken.
    kernel.truncate(1);
    kernel[0].1 = 10_000;
    // (The seven others the kernel no longer lists go.)
    assert_eq!(m.reconcile_timewait(NS, &kernel, 4 * S, &[]), (0, 7));
    m.tick(14 * S - 1);
    assert_eq!(m.timewait_tuples(NS).len(), 1);
    m.tick(14 * S + 1);
    assert_eq!(m.timewait_tuples(NS), Vec::<Tuple>::new());
}

#[test]
fn views_filter_by_namespace_and_pid() {
    let mut m = model();
    Sk::client(1, 100, 20001, "10.0.0.5", 80).open(&mut m, S);
    Sk::client(2, 200, 20002, "10.0.0.6", 80).open(&mut m, S);
    let snap = m.snapshot(View {
        pid: Some(200),
        ..View::default()
    });
    let dests: Vec<&str> = snap.netns[0]
        .destinations
        .iter()
        .map(|d| d.daddr.as_str())
        .collect();
    assert_eq!(dests, ["10.0.0.6"]);
    assert_eq!(snap.netns[0].processes.len(), 1);
    let snap = m.snapshot(View {
        netns: Some(NS + 1),
        ..View::default()
    });
    assert!(snap.netns.is_empty());
}

#[test]
fn ipv6_destinations() {
    let mut m = model();
    Sk::client(1, 100, 20001, "::1", 443).open(&mut m, S);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "::1", 443);
    assert_eq!((d.saddr.as_str(), d.used), ("::1", 1));
}

#[test]
fn memory_stays_bounded_through_churn() {
    let mut m = model();
    m.set_netns_config(
        NS,
        NetnsConfig {
            name: None,
            port_range: (1024, 65535),
            reserved: vec![],
            ..Default::default()
        },
    );
    // 100k connections opened and actively closed over 100 s, to 100 destinations.
    for i in 0..100_000u64 {
        let c = Sk::client(
            0x1000 + i,
            100 + (i % 7) as u32,
            1024 + (i % 60000) as u16,
            "10.0.0.5",
            1000 + (i % 100) as u16,
        );
        let t = i * S / 1000;
        c.open(&mut m, t);
        c.active_close(&mut m, t + 10);
    }
    assert_eq!(m.socket_count(), 0);
    assert!(m.timewait_count() <= 60_000 + 100, "{}", m.timewait_count());
    m.tick(100 * S + TIME_WAIT_NS + 20 * S);
    let snap = m.snapshot(View::default());
    assert_eq!(m.timewait_count(), 0);
    assert_eq!(m.destination_count(), 0);
    assert!(snap.netns[0].destinations.is_empty());
    assert!(m.tw_queue.len() < 1024, "{}", m.tw_queue.len());
    // Interned addresses are released with the last socket using them.
    assert!(
        m.addrs.index.is_empty(),
        "{} addresses left",
        m.addrs.index.len()
    );
}

#[test]
fn exported_state_reloads_to_the_same_view_and_later_events_find_their_sockets() {
    let mut m = model();
    // Three connections held, one closed into TIME_WAIT, toward one destination.
    let socks: Vec<Sk> = (0..4)
        .map(|i| Sk::client(0x1000 + i, 4242, 20000 + i as u16, "10.0.0.5", 443))
        .collect();
    for (i, s) in socks.iter().enumerate() {
        s.open(&mut m, S + i as u64 * 10);
    }
    socks[3].active_close(&mut m, 2 * S);
    let before = m.snapshot(View::default());

    let mut fresh = Model::new();
    fresh.feed(&input::Input::State(m.export_state(NS)));
    let after = fresh.snapshot(View::default());
    let d0 = dest(&before, "10.0.0.5", 443);
    let d1 = dest(&after, "10.0.0.5", 443);
    assert_eq!((d1.used, d1.capacity), (4, 10));
    // How clients behaved (rates, lifetimes) is measured from events, not state.
    let bare = |d: &DestUsage| -> Vec<OwnerPorts> {
        d.owners
            .iter()
            .map(|o| OwnerPorts {
                client: None,
                ..o.clone()
            })
            .collect()
    };
    assert_eq!(
        (d1.used, &d1.states, bare(d1)),
        (d0.used, &d0.states, bare(d0))
    );
    assert_eq!(state(d1, "TIME_WAIT"), 1);
    assert_eq!(after.netns[0].name.as_deref(), Some("blue"));

    // A close after the state names the socket by its address, as live.
    socks[0].active_close(&mut fresh, 3 * S);
    socks[0].active_close(&mut m, 3 * S);
    let (a, b) = (m.snapshot(View::default()), fresh.snapshot(View::default()));
    let (da, db) = (dest(&a, "10.0.0.5", 443), dest(&b, "10.0.0.5", 443));
    assert_eq!(
        (db.used, state(db, "ESTABLISHED"), state(db, "TIME_WAIT")),
        (4, 2, 2)
    );
    assert_eq!((da.used, &da.states), (db.used, &db.states));
}

#[test]
fn a_dump_of_sockets_events_already_made_counts_them_once() {
    // A namespace discovered after start-up: its events come before its dump.
    let mut m = model();
    let socks: Vec<Sk> = (0..3)
        .map(|i| Sk::client(0x2000 + i, 77, 20000 + i as u16, "10.0.0.9", 80))
        .collect();
    for (i, s) in socks.iter().enumerate() {
        s.open(&mut m, S + i as u64 * 10);
    }
    let dump: Vec<BaselineSocket> = socks
        .iter()
        .map(|s| BaselineSocket {
            sock: 0,
            tuple: Tuple::new(s.saddr, s.sport, s.daddr, s.dport),
            state: TcpState::Established,
            owner: Some((77, "curl".into(), 7)),
            expires_ms: 0,
            orphan: false,
        })
        .collect();
    m.load_baseline(NS, &dump, 2 * S);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.9", 80);
    assert_eq!((d.used, state(d, "ESTABLISHED")), (3, 3));
    assert_eq!(m.socket_count(), 3);
}

/// A namespace with range 20000-21999 and `tw_reuse`.
fn model_2000(tw_reuse: u32) -> Model {
    let mut m = Model::new();
    m.set_netns_config(
        NS,
        NetnsConfig {
            port_range: (20000, 21999),
            tcp: TcpSysctls {
                tw_reuse: Some(tw_reuse),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    m
}

/// `rate` connections a second from one client to `daddr:80` for `secs`, each open
/// for `life_ms` and closed by the client (its port then in TIME_WAIT).
fn churn(m: &mut Model, daddr: &str, rate: u64, life_ms: u64, secs: u64) {
    let step = S / rate;
    for i in 0..rate * secs {
        let t = S + i * step;
        let mut c = Sk::client(0x1000 + i, 4242, 20000 + (i % 2000) as u16, daddr, 80);
        if !c.daddr.is_loopback() {
            c.saddr = ip("10.0.0.1");
        }
        c.open(m, t);
        c.active_close(m, t + life_ms * 1_000_000);
    }
}

#[test]
fn a_short_lived_client_is_diagnosed_and_its_steady_state_forecast() {
    // 30/s, 20 ms each, client closes, no reuse: it converges to 30 x 60 = 1800 of
    // 1999 ports (near capacity) and TIME_WAIT is nearly all of them.
    let mut m = model_2000(0);
    churn(&mut m, "10.0.0.5", 30, 20, 40);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "10.0.0.5", 80);
    let steady = d.steady_state.expect("steady state");
    assert!((1700.0..1900.0).contains(&steady), "{steady}");
    let client = *d.owners[0].client.clone().expect("client figures");
    assert!((client.rate_10s - 30.0).abs() < 3.0, "{client:?}");
    assert_eq!(client.client_close_share, Some(1.0));
    let ids: Vec<&str> = snap.diagnoses.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        ["short-lived-connections", "timewait-dominated"],
        "{:?}",
        snap.diagnoses
    );
    let s = &snap.diagnoses[0];
    assert_eq!(s.who.as_ref().map(|w| w.pid), Some(4242));
    assert!(
        s.explanation
            .contains("opens 30 connections/s to 10.0.0.5:80"),
        "{}",
        s.explanation
    );
    // Levels off below capacity: no exhaustion to count down to.
    assert_eq!(d.eta_s, None);
}

#[test]
fn reusable_timewait_is_counted_apart_where_tw_reuse_applies() {
    // The same client toward loopback with tw_reuse 2: the kernel hands TIME_WAIT
    // ports over a second old back to connect().
    let mut m = model_2000(2);
    churn(&mut m, "127.0.0.2", 30, 20, 40);
    let snap = m.snapshot(View::default());
    let d = dest(&snap, "127.0.0.2", 80);
    let tw = state(d, "TIME_WAIT");
    assert!(tw > 1000, "{tw}");
    // All but the last second's.
    assert!(
        d.reusable >= tw - 40 && d.reusable < tw,
        "{} of {tw}",
        d.reusable
    );
    assert!(d.steady_state.unwrap() < 100.0, "{:?}", d.steady_state);
    assert!(snap.diagnoses.is_empty(), "{:?}", snap.diagnoses);
    assert_eq!(d.eta_s, None);
    // tw_reuse 2 toward another host: not reusable.
    let mut m = model_2000(2);
    churn(&mut m, "10.0.0.5", 30, 20, 40);
    assert_eq!(
        dest(&m.snapshot(View::default()), "10.0.0.5", 80).reusable,
        0
    );
}

#[test]
fn timewait_still_in_fin_wait2_is_not_reusable() {
    // tw_reuse 1: any TIME_WAIT port over a second old may be taken over, but not one
    // whose timewait socket is still in FIN_WAIT2 (the server has not closed).
    let mut m = model_2000(1);
    let tuples: Vec<Tuple> = [20001, 20002]
        .into_iter()
        .enumerate()
        .map(|(i, port)| {
            let c = Sk::client(i as u64 + 1, 100, port, "10.0.0.5", 80);
            c.open(&mut m, S);
            c.active_close(&mut m, 2 * S);
            Tuple::new(ip("127.0.0.1"), port, ip("10.0.0.5"), 80)
        })
        .collect();
    m.tick(5 * S);
    let reusable = |m: &mut Model| dest(&m.snapshot(View::default()), "10.0.0.5", 80).reusable;
    assert_eq!(reusable(&mut m), 2);
    m.feed(&input::Input::TimeWait {
        netns: NS,
        tuples: tuples.iter().map(|t| (*t, 50_000)).collect(),
        started_ns: 5 * S,
        fin_wait2: vec![tuples[0]],
    });
    assert_eq!(reusable(&mut m), 1);
    assert_eq!(m.timewait_tuples(NS).len(), 2);
    // Shown as the kernel shows it, still a port used.
    let states = |m: &mut Model| {
        let snap = m.snapshot(View::default());
        let d = dest(&snap, "10.0.0.5", 80);
        (d.used, d.states.clone())
    };
    let (used, st) = states(&mut m);
    assert_eq!(used, 2);
    assert_eq!(
        (st.get("TIME_WAIT"), st.get("FIN_WAIT2")),
        (Some(&1), Some(&1))
    );
    // The server closed: the next check finds it in TIME_WAIT.
    m.feed(&input::Input::TimeWait {
        netns: NS,
        tuples: tuples.iter().map(|t| (*t, 50_000)).collect(),
        started_ns: 6 * S,
        fin_wait2: vec![],
    });
    assert_eq!(reusable(&mut m), 2);
    let (used, st) = states(&mut m);
    assert_eq!(used, 2);
    assert_eq!((st.get("TIME_WAIT"), st.get("FIN_WAIT2")), (Some(&2), None));
}

#[test]
fn a_pooled_client_is_not_short_lived() {
    // The same load over 20 kept-alive connections: opened once, never closed.
    let mut m = model_2000(0);
    for i in 0..20u64 {
        Sk::client(0x1000 + i, 4242, 20000 + i as u16, "10.0.0.5", 80).open(&mut m, S + i);
    }
    m.tick(40 * S);
    let snap = m.snapshot(View::default());
    assert!(snap.diagnoses.is_empty(), "{:?}", snap.diagnoses);
    // Nothing closed yet: no lifetime to forecast from.
    assert_eq!(dest(&snap, "10.0.0.5", 80).steady_state, None);
}

/// What the accounting path (`top`, `serve`) leaves out in the kernel changes none of
/// the model's answers: a stream of loopback connections as `trace` sees them (both
/// sockets of each, its connect event; some closed by the client, some by the server,
/// some still open) gives the same snapshot whole and through the kernel's rule.
#[test]
fn the_accounting_path_gives_the_same_answers() {
    use TcpState::*;
    let listener = Sk {
        sock: 1,
        pid: 50,
        comm: "nginx",
        saddr: ip("127.0.0.1"),
        sport: 9000,
        daddr: ip("0.0.0.0"),
        dport: 0,
    };
    let mut full = vec![listener.state(S, Close, Listen)];
    let mut accepted = std::collections::HashSet::new();
    for i in 0..30u64 {
        let t = 2 * S + i * S / 10;
        let port = 20000 + i as u16;
        let client = Sk::client(0x100 + i, 4242, port, "127.0.0.1", 9000);
        let child = Sk {
            sock: 0x900 + i,
            pid: 0,
            comm: "",
            saddr: ip("127.0.0.1"),
            sport: 9000,
            daddr: ip("127.0.0.1"),
            dport: port,
        };
        accepted.insert(child.sock);
        let c = |ts, old, new| client.state(ts, old, new);
        let a = |ts, old, new| child.state(ts, old, new);
        full.extend([
            c(t, Close, SynSent),
            a(t + 1, Listen, SynRecv),
            c(t + 2, SynSent, Established),
            a(t + 3, SynRecv, Established),
            client.connect(t + 4),
        ]);
        let closed = t + 1_000_000 * (1 + i % 7);
        // `first` closes first and ends in TIME_WAIT.
        let close = |first: &Sk, second: &Sk| {
            [
                first.state(closed, Established, FinWait1),
                second.state(closed + 1, Established, CloseWait),
                first.state(closed + 2, FinWait1, FinWait2),
                second.state(closed + 3, CloseWait, LastAck),
                first.state(closed + 4, FinWait2, Close),
                second.state(closed + 5, LastAck, Close),
            ]
        };
        match i % 3 {
            // The client closes first: its port goes to TIME_WAIT.
            0 => full.extend(close(&client, &child)),
            // The server closes first: its side goes to TIME_WAIT on port 9000.
            1 => full.extend(close(&child, &client)),
            // Still open.
            _ => {}
        }
    }
    let kept: Vec<TraceEvent> = full
        .iter()
        .filter(|e| match (e.kind, e.old_state, e.new_state) {
            (Kind::Connect, ..) => false,
            (Kind::State, Some(old), Some(new)) => {
                !portx_common::accounting_leaves_out(old as u8, new as u8, || {
                    accepted.contains(&e.sock)
                })
            }
            _ => true,
        })
        .cloned()
        .collect();
    // Of each connection's eleven events, the client's four (two while open), and
    // the accepted socket's close into TIME_WAIT when the server closed first.
    assert_eq!(kept.len(), 1 + 10 * 4 + 10 * 5 + 10 * 2, "{kept:#?}");
    let end = 10 * S;
    let answer = |events: &[TraceEvent]| {
        let mut m = model_2000(0);
        for e in events {
            m.apply(e);
        }
        m.tick(end);
        serde_json::to_value(m.snapshot(View::default())).unwrap()
    };
    assert_eq!(answer(&kept), answer(&full));
}

/// Short-lived processes, one connection each (a cron job, `curl` in a loop): their
/// owners are forgotten once their sockets and TIME_WAIT entries are gone, so the
/// table does not grow for as long as portx runs; live owners keep their names.
#[test]
fn owners_of_finished_processes_are_forgotten() {
    let mut m = model();
    let keeper = Sk::client(1, 99, 20009, "10.0.0.5", 80);
    keeper.open(&mut m, S);
    let mut ts = S + 1_000;
    for i in 0..20_000u32 {
        let c = Sk::client(
            u64::from(i) + 2,
            1_000 + i,
            20000 + (i % 9) as u16,
            "10.0.0.6",
            443,
        );
        c.open(&mut m, ts);
        c.active_close(&mut m, ts + 10);
        // 10 ms apart: each TIME_WAIT (60 s) is gone 6,000 connections later.
        ts += 10_000_000;
    }
    // A sweep runs once 1,024 new owners were made: what is left is those and the
    // few still referred to.
    assert!(
        m.owner_count() < 1_100,
        "{} owners for 20,000 finished processes",
        m.owner_count()
    );
    assert_eq!(m.owner_pid(1), Some(99));
    let snap = m.snapshot(View::default());
    let d = snap.netns[0]
        .destinations
        .iter()
        .find(|d| d.dport == 80)
        .unwrap();
    assert_eq!((d.owners[0].pid, d.owners[0].comm.as_str()), (99, "curl"));
    // The TIME_WAIT entries still held name their processes.
    let tw = snap.netns[0]
        .destinations
        .iter()
        .find(|d| d.dport == 443)
        .unwrap();
    assert!(
        tw.states.get("TIME_WAIT").copied().unwrap_or(0) > 0,
        "{tw:?}"
    );
    assert!(
        tw.owners.iter().all(|o| o.pid >= 1_000 && o.comm == "curl"),
        "{:?}",
        tw.owners
    );
}

/// A namespace the prober let go of (deleted, a stopped container) leaves the model:
/// its settings, sockets and TIME_WAIT entries; another namespace keeps its own.
#[test]
fn a_gone_namespace_is_forgotten() {
    let mut m = model();
    m.set_netns_config(NS + 1, NetnsConfig::default());
    let open = Sk::client(1, 100, 20001, "10.0.0.5", 80);
    open.open(&mut m, S);
    let closed = Sk::client(2, 100, 20002, "10.0.0.5", 80);
    closed.open(&mut m, S);
    closed.active_close(&mut m, S + 10);
    let other = Sk::client(3, 101, 40000, "10.0.0.5", 80);
    let mut opened = other.state(S, TcpState::Close, TcpState::SynSent);
    opened.netns = NS + 1;
    m.apply(&opened);
    let mut established = other.state(S + 1, TcpState::SynSent, TcpState::Established);
    established.netns = NS + 1;
    m.apply(&established);
    m.feed(&input::Input::NetnsGone { netns: NS });
    let snap = m.snapshot(View::default());
    let inodes: Vec<u32> = snap.netns.iter().map(|n| n.inode).collect();
    assert_eq!(inodes, vec![NS + 1], "{snap:#?}");
    assert_eq!(m.socket_count(), 1);
    assert_eq!(snap.netns[0].destinations[0].used, 1);
    assert_eq!(snap.netns[0].processes[0].pid, 101);
}

#[test]
fn permute_in_place_follows_the_order() {
    for order in [
        vec![],
        vec![0],
        vec![2, 0, 1],
        vec![1, 0, 3, 2],
        vec![4, 3, 2, 1, 0],
        vec![0, 2, 1, 4, 3, 5],
    ] {
        let mut v: Vec<usize> = (0..order.len()).map(|i| i * 10).collect();
        let want: Vec<usize> = order.iter().map(|&i| i * 10).collect();
        super::permute_in_place(&mut v, order.clone());
        assert_eq!(v, want, "{order:?}");
    }
}

#[test]
fn addresses_print_as_std_does() {
    for a in [
        "0.0.0.0",
        "10.0.0.9",
        "127.0.0.1",
        "192.168.100.255",
        "255.255.255.255",
        "8.80.108.1",
    ] {
        let ip: IpAddr = a.parse().unwrap();
        assert_eq!(super::addr_string(ip), ip.to_string());
    }
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(super::addr_string(v6), "2001:db8::1");
}

#[test]
fn a_brief_view_keeps_ranks_counts_and_diagnoses() {
    // One destination a rule applies to (a short-lived client near capacity), and
    // quiet ones with one established connection each, tied in rank.
    let mut m = model_2000(0);
    churn(&mut m, "10.0.0.5", 30, 20, 40);
    for (i, daddr) in ["10.0.0.10", "10.0.0.9", "10.0.1.2"]
        .into_iter()
        .enumerate()
    {
        Sk::client(0x9000 + i as u64, 77, 30000 + i as u16, daddr, 443).open(&mut m, 41 * S);
    }
    let full = m.snapshot(View::default());
    let brief = m.snapshot(View {
        brief: true,
        ..View::default()
    });
    assert!(!full.diagnoses.is_empty());
    assert_eq!(brief.diagnoses, full.diagnoses);
    let (f, b) = (&full.netns[0].destinations, &brief.netns[0].destinations);
    assert_eq!(f.len(), 4);
    let summary = |d: &DestUsage| {
        (
            d.daddr.clone(),
            d.dport,
            d.used,
            d.states.clone(),
            d.reusable,
        )
    };
    assert_eq!(
        b.iter().map(summary).collect::<Vec<_>>(),
        f.iter().map(summary).collect::<Vec<_>>()
    );
    // Busiest first, ties by address as a number (10.0.0.9 before 10.0.0.10).
    let order: Vec<&str> = f.iter().map(|d| d.daddr.as_str()).collect();
    assert_eq!(order, ["10.0.0.5", "10.0.0.9", "10.0.0.10", "10.0.1.2"]);
    // The diagnosed destination keeps its owners and figures; the quiet ones have none.
    assert_eq!(b[0].owners, f[0].owners);
    assert_eq!(b[0].steady_state, f[0].steady_state);
    assert!(
        b[1..]
            .iter()
            .all(|d| d.owners.is_empty() && d.eta_s.is_none())
    );
    assert!(f[1..].iter().all(|d| d.owners.len() == 1));
}

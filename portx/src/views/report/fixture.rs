//! A recorded incident for tests (unit tests here, and the privileged page test):
//! MySQL cannot start on 3306 because a client took 3306 as an ephemeral source port.
//!
//! A namespace whose ip_local_port_range is 3306-3309 (capacity 4); `client` (pid 4242)
//! connects four times to 127.0.0.1:9000 and gets 3306..3309, its fifth connect()
//! fails EADDRNOTAVAIL, then `mysqld` (pid 5151) fails to bind 0.0.0.0:3306 with
//! EADDRINUSE (the client's first connection holds it).

use std::net::IpAddr;

use super::{Report, ReportBuilder};
use crate::{
    capture::{Counters, EndSummary, FORMAT_VERSION, FileHeader, Mode, Record, reader::ReadStatus},
    events::{Comm, Family, Kind, TcpState, TraceEvent},
    model::{
        NetnsConfig,
        input::{Input, NetnsState},
    },
};

pub const NS: u32 = 4026532321;
pub const S: u64 = 1_000_000_000;
/// Boot-time clock when the recording starts: 1000 s after boot.
pub const START_NS: u64 = 1000 * S;
/// Wall clock at START_NS: 2024-03-01T12:00:00Z.
pub const START_WALL_S: i64 = 1_709_294_400;
pub const RECORDING: u64 = 0x5eed_cafe_f00d_0001;

/// The header of file `seq` of the fixture's recording, started at `started_ns`.
pub fn header(seq: u32, started_ns: u64) -> FileHeader {
    FileHeader {
        format_version: FORMAT_VERSION,
        portx_version: "0.1.0".into(),
        hostname: "db1".into(),
        kernel_release: "6.12.0-portx".into(),
        boot_id: "0b1d2c3e-4f50-6172-8394-a5b6c7d8e9f0".into(),
        boot_to_wall_ns: START_WALL_S * 1_000_000_000 - START_NS as i64,
        utc_offset_s: 0,
        started_ns,
        recording_id: RECORDING,
        file_seq: seq,
        mode: Mode::Record,
        hooks: Vec::new(),
        filter: Default::default(),
        exact_timewait: false,
        command: vec![
            "portx".into(),
            "record".into(),
            "-o".into(),
            "incident.portx".into(),
        ],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// An event as the BPF programs report it.
#[expect(clippy::too_many_arguments, reason = "one argument per varying field")]
pub fn event(
    kind: Kind,
    ts_ns: u64,
    (pid, comm): (u32, &str),
    sock: u64,
    (saddr, sport): (&str, u16),
    (daddr, dport): (&str, u16),
    states: Option<(TcpState, TcpState)>,
    errno: Option<u32>,
) -> Record {
    Record::Input(Input::Event(TraceEvent {
        kind,
        ts_ns,
        pid,
        tid: pid,
        comm: Comm::from(comm),
        cgroup_id: 77,
        netns: NS,
        sock,
        family: Family::Ipv4,
        saddr: ip(saddr),
        sport,
        daddr: ip(daddr),
        dport,
        old_state: states.map(|s| s.0),
        new_state: states.map(|s| s.1),
        errno,
        bound_port: None,
    }))
}

pub const CLIENT: (u32, &str) = (4242, "client");
const MYSQLD: (u32, &str) = (5151, "mysqld");

/// The namespace's state at the start of a file: the range, no sockets.
pub fn state(at_ns: u64) -> Record {
    Record::Input(Input::State(NetnsState {
        netns: NS,
        config: NetnsConfig {
            name: Some("db".into()),
            port_range: (3306, 3309),
            ..Default::default()
        },
        at_ns,
        sockets: Vec::new(),
    }))
}

/// The incident's records, one file (seq 0).
pub fn mysql_incident() -> Vec<Record> {
    use TcpState::*;
    let mut r = vec![
        Record::Header(Box::new(header(0, START_NS))),
        state(START_NS),
        // Every event's cgroup (77), as the recording host named it.
        Record::Cgroups(vec![crate::capture::CgroupName {
            id: 77,
            path: "/system.slice/app.service".into(),
            namespace: None,
            pod: None,
            container: None,
        }]),
    ];
    for (i, port) in (3306..=3309).enumerate() {
        let (sock, t) = (
            0xffff_8880_0000_1000 + i as u64 * 0x100,
            START_NS + S + i as u64 * 100_000_000,
        );
        let (src, dst) = (("127.0.0.1", port), ("127.0.0.1", 9000));
        r.push(event(
            Kind::State,
            t,
            CLIENT,
            sock,
            ("127.0.0.1", 0),
            dst,
            Some((Close, SynSent)),
            None,
        ));
        r.push(event(
            Kind::State,
            t + 1_000,
            CLIENT,
            sock,
            src,
            dst,
            Some((SynSent, Established)),
            None,
        ));
        r.push(event(
            Kind::Connect,
            t + 2_000,
            CLIENT,
            sock,
            src,
            dst,
            None,
            None,
        ));
    }
    r.push(event(
        Kind::ConnectError,
        START_NS + 2 * S,
        CLIENT,
        0xffff_8880_0000_2000,
        ("0.0.0.0", 0),
        ("127.0.0.1", 9000),
        None,
        Some(libc::EADDRNOTAVAIL as u32),
    ));
    r.push(event(
        Kind::BindError,
        START_NS + 3 * S,
        MYSQLD,
        0xffff_8880_0000_3000,
        ("0.0.0.0", 3306),
        ("0.0.0.0", 0),
        None,
        Some(libc::EADDRINUSE as u32),
    ));
    r.push(Record::Counters(Counters {
        at_ns: START_NS + 4 * S,
        ..Default::default()
    }));
    r.push(Record::End(EndSummary {
        at_ns: START_NS + 4 * S,
        events: 14,
        rotated: false,
    }));
    r
}

/// A clean read of `records` (the frame count is the record count).
pub fn status_of(records: &[Record]) -> ReadStatus {
    ReadStatus {
        frames: records.len() as u64,
        bytes: 64 * records.len() as u64,
        ..Default::default()
    }
}

/// The report of files given as (path, records, how it was read), in this order.
pub fn report_of(files: &[(&str, Vec<Record>, ReadStatus)]) -> Report {
    let mut b = ReportBuilder::new();
    for (path, records, status) in files {
        b.begin_file(path);
        for r in records {
            if let Err(e) = b.feed(r) {
                panic!("fixture: {e}");
            }
        }
        b.end_file(status);
    }
    b.finish()
}

/// The incident's report.
pub fn mysql_report() -> Report {
    let records = mysql_incident();
    let status = status_of(&records);
    report_of(&[("incident.portx", records, status)])
}

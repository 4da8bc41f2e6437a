//! Records of every kind and a sample file, for the capture tests.

use super::{
    CgroupName, Counters, EndSummary, FileHeader, Mode, Record, TriggerFired, codec,
    writer::Encoder,
};
use crate::{
    events::{TcpState, filter::Filter},
    kernel::loader::HookPath,
    model::{
        BaselineSocket, NetnsConfig, TcpSysctls, Tuple,
        input::{Input, NetnsState},
    },
};

pub fn header() -> FileHeader {
    FileHeader {
        format_version: super::FORMAT_VERSION,
        portx_version: "0.1.0".into(),
        hostname: "h\u{f6}st".into(),
        kernel_release: "6.8.0-portx".into(),
        boot_id: "0b4c7d3e-1111-2222-3333-444455556666".into(),
        boot_to_wall_ns: 1_700_000_000_000_000_000,
        utc_offset_s: -3600,
        started_ns: 5_000_000_000,
        recording_id: 0xdead_beef_0bad_cafe,
        file_seq: 3,
        mode: Mode::FlightRecorder {
            window_s: 60,
            post_s: 5,
        },
        hooks: vec![HookPath {
            hook: "state".into(),
            path: "tp_btf/inet_sock_set_state".into(),
            rejected: vec!["none".into()],
        }],
        filter: Filter {
            pid: Some(7),
            comm: Some("curl".into()),
            port: None,
            netns: Some(1),
            errors_only: true,
        },
        exact_timewait: true,
        command: vec![
            "portx".into(),
            "record".into(),
            "-o".into(),
            "x.portx".into(),
        ],
    }
}

pub fn config() -> NetnsConfig {
    NetnsConfig {
        name: Some("blue".into()),
        port_range: (10_000, 20_000),
        reserved: vec![(10_500, 10_600)],
        tcp: TcpSysctls {
            tw_reuse: Some(2),
            fin_timeout: None,
            max_tw_buckets: Some(262_144),
        },
    }
}

pub fn tuple(v6: bool, sport: u16) -> Tuple {
    let mut t = Tuple {
        v6,
        sport,
        dport: 443,
        ..Tuple::default()
    };
    t.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    t.daddr[..4].copy_from_slice(&[10, 0, 0, 5]);
    if v6 {
        t.daddr[15] = 1;
    }
    t
}

/// One record of every non-event kind.
pub fn non_event_records() -> Vec<Record> {
    vec![
        Record::Header(Box::new(header())),
        Record::Input(Input::State(NetnsState {
            netns: 4026531840,
            config: config(),
            at_ns: 5_000_000_001,
            sockets: vec![
                BaselineSocket {
                    sock: 0xffff_8880_0000_1000,
                    tuple: tuple(false, 40_000),
                    state: TcpState::TimeWait,
                    owner: None,
                    expires_ms: 59_000,
                    orphan: true,
                },
                BaselineSocket {
                    sock: 0,
                    tuple: tuple(true, 40_001),
                    state: TcpState::Established,
                    owner: Some((42, "caf\u{e9}".into(), 7)),
                    expires_ms: 0,
                    orphan: false,
                },
            ],
        })),
        Record::Input(Input::Settings {
            netns: 4026531841,
            config: NetnsConfig::default(),
        }),
        Record::Input(Input::TimeWait {
            netns: 4026531840,
            tuples: vec![(tuple(false, 1), 1), (tuple(true, 65_535), u32::MAX)],
            started_ns: 6_000_000_000,
            fin_wait2: vec![tuple(true, 65_535)],
        }),
        Record::Input(Input::TimeWait {
            netns: 1,
            tuples: vec![],
            started_ns: 0,
            fin_wait2: vec![],
        }),
        Record::Input(Input::BaselineGone {
            netns: 4026531840,
            tuples: vec![tuple(false, 3306), tuple(true, 65_535)],
        }),
        Record::Input(Input::NetnsGone { netns: 4026532999 }),
        Record::Counters(Counters {
            at_ns: 7,
            kernel_dropped: 3,
            evicted_events: u64::MAX,
            evicted_until_ns: 9,
            kernel_skipped_runs: 4,
        }),
        Record::Trigger(TriggerFired {
            at_ns: 8,
            spec: "failure:EADDRNOTAVAIL".into(),
            reason: "connect() by curl(4242) to 10.0.0.5:443 failed: EADDRNOTAVAIL".into(),
        }),
        Record::Cgroups(vec![
            CgroupName {
                id: 7,
                path: "/kubepods/besteffort/pod8dbc5577-d0e2-4706-8787-57d52c03ddf2/x".into(),
                namespace: Some("shop".into()),
                pod: Some("web-1".into()),
                container: None,
            },
            CgroupName {
                id: u64::MAX,
                path: "/system.slice/caf\u{e9}.service".into(),
                namespace: None,
                pod: None,
                container: Some("c".into()),
            },
        ]),
        Record::End(EndSummary {
            at_ns: 9,
            events: 12,
            rotated: true,
        }),
    ]
}

/// A sample file and, for each frame, its end offset and the records it holds:
/// header, state, settings, two TIME_WAIT, three event frames, counters, trigger, end.
pub fn sample_file() -> (Vec<u8>, Vec<(usize, Vec<Record>)>) {
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    let mut frames = Vec::new();
    let recs = non_event_records();
    let Record::Header(h) = &recs[0] else {
        unreachable!()
    };
    enc.file_start(h, &mut out);
    frames.push((out.len(), vec![recs[0].clone()]));
    for r in &recs[1..5] {
        enc.record(r, &mut out);
        frames.push((out.len(), vec![r.clone()]));
    }
    let events = codec::tests::varied_events();
    for chunk in [&events[..1], &events[1..4], &events[4..]] {
        for e in chunk {
            enc.push_event(e);
        }
        enc.flush_events(&mut out);
        let recs = chunk.iter().map(|e| Record::Input(Input::Event(e.clone())));
        frames.push((out.len(), recs.collect()));
    }
    for r in &recs[5..] {
        enc.record(r, &mut out);
        frames.push((out.len(), vec![r.clone()]));
    }
    (out, frames)
}

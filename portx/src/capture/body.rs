//! The bodies of non-event frames: the record's struct in postcard
//! (<https://postcard.jamesmunns.com/wire-format>), a stable, documented, compact
//! encoding that serde types get for free.

use serde::{Deserialize, Serialize};

use super::{Counters, EndSummary, FileHeader, Record, TriggerFired, frame::FrameType};

use crate::model::{NetnsConfig, Tuple, input::Input};

/// The body of a settings frame.
#[derive(Serialize, Deserialize)]
struct SettingsBody {
    netns: u32,
    config: NetnsConfig,
}

/// The body of a TIME_WAIT frame.
#[derive(Serialize, Deserialize)]
struct TimeWaitBody {
    netns: u32,
    started_ns: u64,
    /// `(tuple, remaining ms)`.
    tuples: Vec<(Tuple, u32)>,
    /// Of those, the ones still in FIN_WAIT2 (appended on 2026-12-03).
    fin_wait2: Vec<Tuple>,
}

/// A TIME_WAIT frame as format version 1 first defined it.
#[derive(Deserialize)]
struct TimeWaitBodyV1 {
    netns: u32,
    started_ns: u64,
    tuples: Vec<(Tuple, u32)>,
}

impl TimeWaitBodyV1 {
    fn into_body(self) -> TimeWaitBody {
        TimeWaitBody {
            netns: self.netns,
            started_ns: self.started_ns,
            tuples: self.tuples,
            fin_wait2: Vec::new(),
        }
    }
}

/// The body of a baseline-gone frame.
#[derive(Serialize, Deserialize)]
struct BaselineGoneBody {
    netns: u32,
    tuples: Vec<Tuple>,
}

/// The body of a namespace-gone frame.
#[derive(Serialize, Deserialize)]
struct NetnsGoneBody {
    netns: u32,
}

/// A counters frame as format version 1 first defined it.
#[derive(Deserialize)]
struct CountersV1 {
    at_ns: u64,
    kernel_dropped: u64,
    evicted_events: u64,
    evicted_until_ns: u64,
}

impl CountersV1 {
    fn into_counters(self) -> Counters {
        Counters {
            at_ns: self.at_ns,
            kernel_dropped: self.kernel_dropped,
            evicted_events: self.evicted_events,
            evicted_until_ns: self.evicted_until_ns,
            kernel_skipped_runs: 0,
        }
    }
}

fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail (no maps, no
    // unknown-length sequences); an empty body would be caught by a reader.
    postcard::to_stdvec(v).unwrap_or_default()
}

/// The frame type and body of a non-event record (`None` for an event, which goes
/// in an events frame).
pub fn encode(r: &Record) -> Option<(FrameType, Vec<u8>)> {
    Some(match r {
        Record::Header(h) => (FrameType::Header, to_vec(h.as_ref())),
        Record::Counters(c) => (FrameType::Counters, to_vec(c)),
        Record::Trigger(t) => (FrameType::Trigger, to_vec(t)),
        Record::End(e) => (FrameType::End, to_vec(e)),
        Record::Cgroups(names) => (FrameType::Cgroups, to_vec(names)),
        Record::Input(Input::Event(_)) => return None,
        Record::Input(Input::State(s)) => (FrameType::State, to_vec(s)),
        Record::Input(Input::Settings { netns, config }) => (
            FrameType::Settings,
            to_vec(&SettingsBody {
                netns: *netns,
                config: config.clone(),
            }),
        ),
        Record::Input(Input::TimeWait {
            netns,
            tuples,
            started_ns,
            fin_wait2,
        }) => (
            FrameType::TimeWait,
            to_vec(&TimeWaitBody {
                netns: *netns,
                started_ns: *started_ns,
                tuples: tuples.clone(),
                fin_wait2: fin_wait2.clone(),
            }),
        ),
        Record::Input(Input::BaselineGone { netns, tuples }) => (
            FrameType::BaselineGone,
            to_vec(&BaselineGoneBody {
                netns: *netns,
                tuples: tuples.clone(),
            }),
        ),
        Record::Input(Input::NetnsGone { netns }) => (
            FrameType::NetnsGone,
            to_vec(&NetnsGoneBody { netns: *netns }),
        ),
    })
}

/// The record of a non-event frame. Bytes after the fields this version knows are
/// ignored: that is how fields are added (docs/capture-format.md, versioning).
pub fn decode(ty: FrameType, body: &[u8]) -> Result<Record, String> {
    fn de<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
        postcard::from_bytes(b).map_err(|e| format!("postcard: {e}"))
    }
    Ok(match ty {
        FrameType::Header => Record::Header(Box::new(de::<FileHeader>(body)?)),
        FrameType::State => Record::Input(Input::State(de(body)?)),
        FrameType::Settings => {
            let s: SettingsBody = de(body)?;
            Record::Input(Input::Settings {
                netns: s.netns,
                config: s.config,
            })
        }
        FrameType::TimeWait => {
            let t = de::<TimeWaitBody>(body).or_else(|_| {
                // Written before `fin_wait2` was appended.
                de::<TimeWaitBodyV1>(body).map(TimeWaitBodyV1::into_body)
            })?;
            Record::Input(Input::TimeWait {
                netns: t.netns,
                tuples: t.tuples,
                started_ns: t.started_ns,
                fin_wait2: t.fin_wait2,
            })
        }
        FrameType::BaselineGone => {
            let g: BaselineGoneBody = de(body)?;
            Record::Input(Input::BaselineGone {
                netns: g.netns,
                tuples: g.tuples,
            })
        }
        FrameType::NetnsGone => {
            let g: NetnsGoneBody = de(body)?;
            Record::Input(Input::NetnsGone { netns: g.netns })
        }
        FrameType::Counters => Record::Counters(de::<Counters>(body).or_else(|_| {
            // Written before `kernel_skipped_runs` was appended.
            de::<CountersV1>(body).map(CountersV1::into_counters)
        })?),
        FrameType::Trigger => Record::Trigger(de::<TriggerFired>(body)?),
        FrameType::End => Record::End(de::<EndSummary>(body)?),
        FrameType::Cgroups => Record::Cgroups(de(body)?),
        FrameType::Events => return Err("events frame is not a postcard body".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capture::testdata, events::TcpState};

    #[test]
    fn every_kind_round_trips() {
        for r in testdata::non_event_records() {
            let (ty, b) = encode(&r).unwrap();
            assert_eq!(decode(ty, &b).unwrap(), r);
        }
        assert!(decode(FrameType::Events, b"").is_err());
    }

    /// What docs/capture-format.md says of the wire format.
    #[test]
    fn bytes_are_as_documented() {
        let c = Counters {
            at_ns: 300,
            kernel_dropped: 1,
            evicted_events: 0,
            evicted_until_ns: 2,
            kernel_skipped_runs: 3,
        };
        let (ty, b) = encode(&Record::Counters(c)).unwrap();
        assert_eq!(
            (ty, b.as_slice()),
            (FrameType::Counters, &[0xac, 0x02, 1, 0, 2, 3][..])
        );
        // Appended fields are ignored by this version: how the format grows.
        let mut longer = b.clone();
        longer.extend_from_slice(&[7, 7, 7]);
        assert_eq!(decode(ty, &longer).unwrap(), Record::Counters(c));
        // A file from before `kernel_skipped_runs` was appended: read as 0.
        assert_eq!(
            decode(ty, &b[..5]).unwrap(),
            Record::Counters(Counters {
                kernel_skipped_runs: 0,
                ..c
            })
        );
        assert!(decode(ty, &b[..4]).is_err());
        // A TIME_WAIT frame from before `fin_wait2` was appended: read as none.
        let t = testdata::tuple(false, 300);
        let tw = Record::Input(Input::TimeWait {
            netns: 9,
            tuples: vec![(t, 5)],
            started_ns: 1,
            fin_wait2: vec![t],
        });
        let (ty, b) = encode(&tw).unwrap();
        let before = postcard::to_stdvec(&(9u32, 1u64, vec![(t, 5u32)])).unwrap();
        assert_eq!(&b[..before.len()], before.as_slice());
        assert_eq!(
            decode(ty, &before).unwrap(),
            Record::Input(Input::TimeWait {
                netns: 9,
                tuples: vec![(t, 5)],
                started_ns: 1,
                fin_wait2: vec![],
            })
        );
        // TCP states are their variant index: the kernel's number minus one.
        assert_eq!(postcard::to_stdvec(&TcpState::Established).unwrap(), [0]);
        assert_eq!(postcard::to_stdvec(&TcpState::NewSynRecv).unwrap(), [11]);
        let tb = postcard::to_stdvec(&t).unwrap();
        assert_eq!(tb.len(), 1 + 16 + 16 + 2 + 2, "arrays carry no length");
        assert_eq!(&tb[33..], &[0xac, 0x02, 0xbb, 0x03]);
    }
}

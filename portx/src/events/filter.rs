//! Which events `portx trace` shows. Pure.

use portx_common::KernelFilter;

use crate::events::TraceEvent;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Matches either side of the 4-tuple.
    pub port: Option<u16>,
    pub netns: Option<u32>,
    pub errors_only: bool,
}

impl Filter {
    pub fn matches(&self, e: &TraceEvent) -> bool {
        self.pid.is_none_or(|p| p == e.pid)
            && self.comm.as_deref().is_none_or(|c| e.comm == c)
            && self.port.is_none_or(|p| p == e.sport || p == e.dport)
            && self.netns.is_none_or(|n| n == e.netns)
            && (!self.errors_only || e.kind.is_error())
    }

    /// The part the BPF programs can apply: kinds, namespace and port. Not the
    /// process: a state event in softirq does not know its owner until userspace
    /// joins it (`sock_owners`).
    pub fn kernel(&self) -> KernelFilter {
        KernelFilter {
            kinds: if self.errors_only {
                KernelFilter::ERROR_KINDS
            } else {
                KernelFilter::ALL.kinds
            },
            netns: self.netns.unwrap_or(0),
            // Port 0 means "any" there; `--port 0` is left to userspace.
            port: self.port.unwrap_or(0),
            _pad: 0,
        }
    }
}

/// The in-kernel filter, for `--verbose`.
pub fn describe_kernel(k: &KernelFilter) -> String {
    if *k == KernelFilter::ALL {
        return "in-kernel filter: none (every event reaches the ring buffer)".to_owned();
    }
    let mut parts = Vec::new();
    if k.kinds != KernelFilter::ALL.kinds {
        parts.push("errors only".to_owned());
    }
    if k.netns != 0 {
        parts.push(format!("netns {}", k.netns));
    }
    if k.port != 0 {
        parts.push(format!("port {}", k.port));
    }
    format!(
        "in-kernel filter: {} (other events are dropped before the ring buffer)",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use portx_common::EventKind;

    use super::*;
    use crate::events::{decode_event, tests::raw_event};

    #[test]
    fn each_filter_keeps_exactly_its_events() {
        let state = decode_event(&raw_event(EventKind::State)).unwrap();
        let mut err = raw_event(EventKind::ConnectError);
        err.errno = 99;
        let err = decode_event(&err).unwrap();

        assert!(Filter::default().matches(&state));
        let f = |f: Filter| (f.matches(&state), f.matches(&err));
        assert_eq!(
            f(Filter {
                errors_only: true,
                ..Default::default()
            }),
            (false, true)
        );
        assert_eq!(
            f(Filter {
                pid: Some(42),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                pid: Some(41),
                ..Default::default()
            }),
            (false, false)
        );
        assert_eq!(
            f(Filter {
                comm: Some("curl".into()),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                comm: Some("cur".into()),
                ..Default::default()
            }),
            (false, false)
        );
        assert_eq!(
            f(Filter {
                port: Some(3306),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                port: Some(40000),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                port: Some(80),
                ..Default::default()
            }),
            (false, false)
        );
        assert_eq!(
            f(Filter {
                netns: Some(4026531840),
                ..Default::default()
            }),
            (true, true)
        );
        assert_eq!(
            f(Filter {
                netns: Some(1),
                ..Default::default()
            }),
            (false, false)
        );
    }

    /// The kernel applies part of the filter before userspace applies all of it: it
    /// must never drop an event the filter keeps, and without process filters it
    /// must keep no more than the filter does, except the owner-naming state event
    /// that has no port yet.
    #[test]
    fn kernel_part_drops_only_what_the_filter_drops() {
        let mut events = Vec::new();
        for kind in EventKind::ALL {
            for (sport, dport) in [(0, 9000), (3306, 9000), (40000, 3306), (40000, 9000)] {
                for netns in [7, 8] {
                    let mut raw = raw_event(kind);
                    (raw.sport, raw.dport, raw.header.netns) = (sport, dport, netns);
                    if matches!(kind, EventKind::ConnectError | EventKind::BindError) {
                        raw.errno = 99;
                    }
                    events.push((raw, decode_event(&raw).unwrap()));
                }
            }
        }
        let mut filters = Vec::new();
        for errors_only in [false, true] {
            for port in [None, Some(3306), Some(0)] {
                for netns in [None, Some(7)] {
                    for pid in [None, Some(42), Some(41)] {
                        filters.push(Filter {
                            pid,
                            comm: None,
                            port,
                            netns,
                            errors_only,
                        });
                    }
                }
            }
        }
        let mut dropped_in_kernel = 0;
        for f in &filters {
            let k = f.kernel();
            for (raw, ev) in &events {
                let kind = EventKind::from_u32(raw.header.kind).unwrap();
                let passes = k.passes(kind, raw.header.netns, raw.sport, raw.dport);
                assert!(
                    passes || !f.matches(ev),
                    "{f:?} dropped {ev:?} in the kernel"
                );
                let portless_state = kind == EventKind::State && raw.sport == 0;
                if f.pid.is_none() && f.port != Some(0) && !(portless_state && f.port.is_some()) {
                    assert_eq!(passes, f.matches(ev), "{f:?} on {ev:?}");
                }
                dropped_in_kernel += usize::from(!passes);
            }
        }
        assert!(dropped_in_kernel > 0);
    }

    #[test]
    fn verbose_names_the_kernel_filter() {
        assert!(describe_kernel(&Filter::default().kernel()).contains("none"));
        let f = Filter {
            errors_only: true,
            port: Some(3306),
            netns: Some(7),
            ..Default::default()
        };
        assert_eq!(
            describe_kernel(&f.kernel()),
            "in-kernel filter: errors only, netns 7, port 3306 (other events are dropped before the ring buffer)"
        );
    }
}

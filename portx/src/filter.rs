//! Which events `portx trace` shows. Pure.

use crate::event::TraceEvent;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
}

#[cfg(test)]
mod tests {
    use portx_common::EventKind;

    use super::*;
    use crate::event::{decode_event, tests::raw_event};

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
}

//! The flight recorder's triggers: what makes it write its window to a file. Pure:
//! parsed from `--trigger` and evaluated on events and on the model's snapshots.

use std::collections::VecDeque;

use super::snapshot::Snapshot;
use crate::{
    events::{Kind, TraceEvent, errno_name},
    views::output::endpoint,
};

/// One `--trigger` spec.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// Any failed connect() or bind(); with an errno, only that one.
    Failure(Option<u32>),
    /// A destination reaches this share of its capacity (0 < ratio <= 1).
    Utilisation(f64),
    /// This many failures within one second.
    FailRate(u32),
    /// SIGUSR1.
    Signal,
}

impl Trigger {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, arg) = match spec.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (spec, None),
        };
        let number = |a: Option<&str>| -> Result<f64, String> {
            let a = a.ok_or_else(|| format!("trigger `{spec}` needs a number after `:`"))?;
            a.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("trigger `{spec}`: `{a}` is not a positive number"))
        };
        match name {
            "failure" => match arg {
                None => Ok(Self::Failure(None)),
                Some(a) => errno_of(a).map(|e| Self::Failure(Some(e))).ok_or_else(|| {
                    format!(
                        "trigger `{spec}`: unknown errno `{a}` (e.g. EADDRNOTAVAIL, EADDRINUSE, 99)"
                    )
                }),
            },
            "util" => {
                let pct = number(arg)?;
                if pct > 100.0 {
                    return Err(format!("trigger `{spec}`: a percentage is at most 100"));
                }
                Ok(Self::Utilisation(pct / 100.0))
            }
            "fail-rate" => {
                let n = number(arg)?;
                if n.fract() != 0.0 || n > f64::from(u32::MAX) {
                    return Err(format!(
                        "trigger `{spec}`: the rate is a whole number of failures per second"
                    ));
                }
                Ok(Self::FailRate(n as u32))
            }
            "signal" if arg.is_none() => Ok(Self::Signal),
            _ => Err(format!(
                "unknown trigger `{spec}`: use failure, failure:ERRNO, util:PCT, fail-rate:N or signal"
            )),
        }
    }
}

/// An errno by name (`EADDRNOTAVAIL`) or number.
fn errno_of(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return errno_name(n).map(|_| n);
    }
    (1..200).find(|&n| errno_name(n).is_some_and(|name| name.eq_ignore_ascii_case(s)))
}

/// A trigger that fired: its spec and one line saying what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub spec: String,
    pub reason: String,
}

/// The triggers of one flight recorder, with what the rate trigger remembers.
#[derive(Debug, Default)]
pub struct Triggers {
    specs: Vec<(String, Trigger)>,
    /// Times of recent failures (for fail-rate), newest last.
    failures: VecDeque<u64>,
}

impl Triggers {
    pub fn parse(specs: &[String]) -> Result<Self, String> {
        let mut t = Self::default();
        for s in specs {
            let s = s.trim();
            t.specs.push((s.to_owned(), Trigger::parse(s)?));
        }
        if t.specs.is_empty() {
            return Err("a flight recorder needs at least one --trigger".into());
        }
        Ok(t)
    }

    pub fn wants_signal(&self) -> bool {
        self.specs.iter().any(|(_, t)| *t == Trigger::Signal)
    }

    fn rate_limit(&self) -> Option<u32> {
        self.specs.iter().find_map(|(_, t)| match t {
            Trigger::FailRate(n) => Some(*n),
            _ => None,
        })
    }

    /// Checks one event (failures and the failure rate).
    pub fn on_event(&mut self, e: &TraceEvent) -> Option<Fired> {
        if !e.kind.is_error() {
            return None;
        }
        let call = if e.kind == Kind::ConnectError {
            "connect()"
        } else {
            "bind()"
        };
        let errno = e.errno.unwrap_or(0);
        let what = format!(
            "{call} by {}({}) {} {} failed: {}",
            e.comm,
            e.pid,
            if e.kind == Kind::ConnectError {
                "to"
            } else {
                "of"
            },
            if e.kind == Kind::ConnectError {
                endpoint(e.daddr, e.dport)
            } else {
                endpoint(e.saddr, e.sport)
            },
            e.error_name()
                .map_or_else(|| errno.to_string(), str::to_owned)
        );
        for (spec, t) in &self.specs {
            if let Trigger::Failure(want) = t
                && want.is_none_or(|w| w == errno)
            {
                return Some(Fired {
                    spec: spec.clone(),
                    reason: what,
                });
            }
        }
        let limit = self.rate_limit()?;
        self.failures.push_back(e.ts_ns);
        while self
            .failures
            .front()
            .is_some_and(|&t| t + 1_000_000_000 <= e.ts_ns)
        {
            self.failures.pop_front();
        }
        if self.failures.len() >= limit as usize {
            let n = self.failures.len();
            self.failures.clear();
            let spec = self
                .specs
                .iter()
                .find(|(_, t)| matches!(t, Trigger::FailRate(_)))
                .map(|(s, _)| s.clone())
                .unwrap_or_default();
            return Some(Fired {
                spec,
                reason: format!("{n} failures within one second; the last: {what}"),
            });
        }
        None
    }

    /// Checks the destinations of a snapshot against the utilisation triggers.
    pub fn on_snapshot(&self, snap: &Snapshot) -> Option<Fired> {
        let (spec, ratio) = self.specs.iter().find_map(|(s, t)| match t {
            Trigger::Utilisation(r) => Some((s, *r)),
            _ => None,
        })?;
        snap.netns.iter().find_map(|ns| {
            ns.destinations.iter().find_map(|d| {
                (d.capacity > 0 && f64::from(d.used) >= ratio * f64::from(d.capacity)).then(|| {
                    Fired {
                        spec: spec.clone(),
                        reason: format!(
                            "{} -> {}:{} holds {} of {} ports (netns {})",
                            d.saddr, d.daddr, d.dport, d.used, d.capacity, ns.inode
                        ),
                    }
                })
            })
        })
    }

    /// SIGUSR1 arrived.
    pub fn on_signal(&self) -> Option<Fired> {
        self.specs
            .iter()
            .find(|(_, t)| *t == Trigger::Signal)
            .map(|(s, _)| Fired {
                spec: s.clone(),
                reason: "SIGUSR1".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{decode_event, tests::raw_event},
        model::snapshot::{DestUsage, NetnsUsage},
    };
    use portx_common::EventKind;

    fn failure(errno: u32, ts_ns: u64) -> TraceEvent {
        let mut raw = raw_event(EventKind::ConnectError);
        raw.errno = errno;
        raw.header.ts_ns = ts_ns;
        decode_event(&raw).unwrap()
    }

    #[test]
    fn parses_specs_and_rejects_bad_ones() {
        assert_eq!(Trigger::parse("failure"), Ok(Trigger::Failure(None)));
        assert_eq!(
            Trigger::parse("failure:EADDRNOTAVAIL"),
            Ok(Trigger::Failure(Some(99)))
        );
        assert_eq!(
            Trigger::parse("failure:eaddrinuse"),
            Ok(Trigger::Failure(Some(98)))
        );
        assert_eq!(Trigger::parse("failure:98"), Ok(Trigger::Failure(Some(98))));
        assert_eq!(Trigger::parse("util:90"), Ok(Trigger::Utilisation(0.9)));
        assert_eq!(Trigger::parse("fail-rate:5"), Ok(Trigger::FailRate(5)));
        assert_eq!(Trigger::parse("signal"), Ok(Trigger::Signal));
        for bad in [
            "util",
            "util:0",
            "util:150",
            "fail-rate:1.5",
            "failure:ENOPE",
            "bogus",
            "signal:1",
        ] {
            assert!(Trigger::parse(bad).is_err(), "{bad}");
        }
        assert!(Triggers::parse(&[]).is_err());
    }

    #[test]
    fn failure_triggers_match_the_errno() {
        let mut t = Triggers::parse(&["failure:EADDRINUSE".into()]).unwrap();
        assert_eq!(t.on_event(&failure(99, 1)), None);
        let mut bind = raw_event(EventKind::BindError);
        bind.errno = 98;
        let fired = t.on_event(&decode_event(&bind).unwrap()).unwrap();
        assert_eq!(fired.spec, "failure:EADDRINUSE");
        assert!(
            fired
                .reason
                .starts_with("bind() by curl(42) of 127.0.0.1:40000 failed: EADDRINUSE"),
            "{}",
            fired.reason
        );
        let mut any = Triggers::parse(&["failure".into()]).unwrap();
        let fired = any.on_event(&failure(99, 1)).unwrap();
        assert!(
            fired
                .reason
                .contains("to 127.0.0.2:3306 failed: EADDRNOTAVAIL")
        );
    }

    #[test]
    fn fail_rate_counts_within_one_second() {
        let mut t = Triggers::parse(&["fail-rate:3".into()]).unwrap();
        assert_eq!(t.on_event(&failure(99, 0)), None);
        assert_eq!(t.on_event(&failure(99, 500_000_000)), None);
        // The first has left the one-second window.
        assert_eq!(t.on_event(&failure(99, 1_200_000_000)), None);
        let fired = t.on_event(&failure(99, 1_300_000_000)).unwrap();
        assert!(fired.reason.starts_with("3 failures within one second"));
    }

    #[test]
    fn utilisation_and_signal() {
        let t = Triggers::parse(&["util:75".into(), "signal".into()]).unwrap();
        let snap = |used| Snapshot {
            netns: vec![NetnsUsage {
                inode: 7,
                destinations: vec![DestUsage {
                    saddr: "127.0.0.1".into(),
                    daddr: "127.0.0.1".into(),
                    dport: 9000,
                    used,
                    capacity: 4,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(t.on_snapshot(&snap(2)), None);
        let fired = t.on_snapshot(&snap(3)).unwrap();
        assert_eq!(
            fired.reason,
            "127.0.0.1 -> 127.0.0.1:9000 holds 3 of 4 ports (netns 7)"
        );
        assert!(t.wants_signal());
        assert_eq!(t.on_signal().unwrap().reason, "SIGUSR1");
    }
}

//! Events counted by what they are: their kind and, for state changes, the move.
//! `top -v` and `serve -v` print it as they stop, so which of a connection's changes
//! reach userspace (and where an unexpected one came from) can be read off a run.

use std::fmt;

use portx_common::EventKind;

use super::{Kind, TcpState, TraceEvent};

/// State values run 1..=12 (`TcpState`); 0 stands for a state the event lacks.
const STATES: usize = 13;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// By `Kind as usize`.
    kinds: [u64; EventKind::ALL.len()],
    /// State changes by (old, new).
    moves: [[u64; STATES]; STATES],
}

impl Tally {
    /// Counts one event: two increments, no branch on the hot path but the kind's.
    #[inline]
    pub fn add(&mut self, ev: &TraceEvent) {
        self.kinds[ev.kind as usize] += 1;
        if ev.kind == Kind::State {
            let at = |s: Option<TcpState>| s.map_or(0, |s| s as usize);
            self.moves[at(ev.old_state)][at(ev.new_state)] += 1;
        }
    }

    /// Events counted, of every kind.
    pub fn total(&self) -> u64 {
        self.kinds.iter().sum()
    }
}

/// `160 state (CLOSE>SYN_SENT 40, ...), 1 bind`: the kinds seen, in the kernel's order,
/// state changes by move in the order of their old then new state; `none` if empty.
impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |i: usize| {
            u8::try_from(i)
                .ok()
                .and_then(TcpState::from_u8)
                .map_or("?", TcpState::name)
        };
        let mut first = true;
        for kind in EventKind::ALL.map(Kind::of) {
            let n = self.kinds[kind as usize];
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n} {}", kind.as_str())?;
            if kind == Kind::State {
                let moves = self.moves.iter().enumerate().flat_map(|(old, row)| {
                    row.iter()
                        .enumerate()
                        .filter(|&(_, &n)| n > 0)
                        .map(move |(new, &n)| (old, new, n))
                });
                for (i, (old, new, n)) in moves.enumerate() {
                    f.write_str(if i == 0 { " (" } else { ", " })?;
                    write!(f, "{}>{} {n}", name(old), name(new))?;
                }
                f.write_str(")")?;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind) -> TraceEvent {
        crate::capture::codec::tests::ev(kind, 0, 1)
    }

    fn state(old: TcpState, new: TcpState) -> TraceEvent {
        let mut ev = event(Kind::State);
        ev.old_state = Some(old);
        ev.new_state = Some(new);
        ev
    }

    #[test]
    fn counts_kinds_and_moves_in_order() {
        let mut t = Tally::default();
        assert_eq!(t.to_string(), "none");
        for _ in 0..2 {
            t.add(&state(TcpState::SynSent, TcpState::Established));
        }
        t.add(&state(TcpState::Close, TcpState::SynSent));
        t.add(&event(Kind::TimewaitEnd));
        t.add(&event(Kind::Bind));
        assert_eq!(t.total(), 5);
        assert_eq!(
            t.to_string(),
            "3 state (SYN_SENT>ESTABLISHED 2, CLOSE>SYN_SENT 1), 1 bind, 1 timewait_end"
        );
    }

    #[test]
    fn a_state_change_without_states_is_still_counted() {
        let mut t = Tally::default();
        t.add(&event(Kind::State));
        assert_eq!(t.to_string(), "1 state (?>? 1)");
    }
}

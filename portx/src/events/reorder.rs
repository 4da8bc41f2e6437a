//! Puts events from per-CPU batches back in time order.
//!
//! A socket's transitions run on different CPUs (connect() in its task, the
//! handshake and the close in softirq, often elsewhere), and each CPU's batch reaches
//! the ring when it is flushed, so the ring no longer carries them in order. Events
//! are held until a flush of every CPU has shown that nothing older can still come
//! ([`crate::kernel::batches::Flushed`]), then handed out sorted by timestamp.

use super::TraceEvent;

#[derive(Default)]
pub struct Reorder {
    /// In arrival order; `None` once handed out (until the next release compacts).
    held: Vec<Option<TraceEvent>>,
    /// (timestamp, arrival index) of each held event, sorted at each release: sorting
    /// these small keys rather than the events costs a fraction (and, unstable, needs
    /// no scratch allocation; the index keeps equal stamps in arrival order).
    order: Vec<(u64, u32)>,
}

impl Reorder {
    pub fn push(&mut self, ev: TraceEvent) {
        self.held.push(Some(ev));
    }

    /// Hands out the events stamped at or before `upto`, oldest first (events with the
    /// same stamp in the order they came); the rest stay held.
    pub fn release(&mut self, upto: u64, mut out: impl FnMut(TraceEvent)) {
        self.order.clear();
        self.order.extend(
            self.held
                .iter()
                .enumerate()
                .filter_map(|(i, e)| Some((e.as_ref()?.ts_ns, i as u32))),
        );
        self.order.sort_unstable();
        let n = self.order.partition_point(|&(ts, _)| ts <= upto);
        for &(_, i) in &self.order[..n] {
            if let Some(ev) = self.held[i as usize].take() {
                out(ev);
            }
        }
        if n == self.held.len() {
            self.held.clear();
        } else {
            self.held.retain(Option::is_some);
        }
    }

    /// Hands out everything held, oldest first.
    pub fn release_all(&mut self, out: impl FnMut(TraceEvent)) {
        self.release(u64::MAX, out);
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::events::{Comm, Family, Kind};

    fn state_event(ts_ns: u64, sock: u64) -> TraceEvent {
        TraceEvent {
            kind: Kind::State,
            ts_ns,
            pid: 0,
            tid: 0,
            comm: Comm::from(""),
            cgroup_id: 0,
            netns: 1,
            sock,
            family: Family::Ipv4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 40000,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 80,
            old_state: None,
            new_state: None,
            errno: None,
            bound_port: None,
        }
    }

    fn stamps(evs: &[TraceEvent]) -> Vec<(u64, u64)> {
        evs.iter().map(|e| (e.ts_ns, e.sock)).collect()
    }

    #[test]
    fn batches_from_two_cpus_come_out_in_time_order_up_to_the_mark() {
        let mut r = Reorder::default();
        // CPU 1's batch reached the ring first, CPU 0's after.
        for (ts, sock) in [(20, 1), (40, 2), (60, 3)] {
            r.push(state_event(ts, sock));
        }
        for (ts, sock) in [(10, 4), (30, 5), (50, 6), (70, 7)] {
            r.push(state_event(ts, sock));
        }
        let mut out = Vec::new();
        r.release(50, |e| out.push(e));
        assert_eq!(stamps(&out), [(10, 4), (20, 1), (30, 5), (40, 2), (50, 6)]);
        assert!(!r.is_empty());
        // An older event than those still held comes with the next flush.
        r.push(state_event(55, 8));
        out.clear();
        r.release(65, |e| out.push(e));
        assert_eq!(stamps(&out), [(55, 8), (60, 3)]);
        out.clear();
        r.release_all(|e| out.push(e));
        assert_eq!(stamps(&out), [(70, 7)]);
        assert!(r.is_empty());
    }

    #[test]
    fn equal_stamps_keep_their_arrival_order() {
        let mut r = Reorder::default();
        for sock in [3, 1, 2] {
            r.push(state_event(5, sock));
        }
        let mut out = Vec::new();
        r.release(5, |e| out.push(e));
        assert_eq!(stamps(&out), [(5, 3), (5, 1), (5, 2)]);
    }

    #[test]
    fn nothing_is_released_before_the_mark() {
        let mut r = Reorder::default();
        r.push(state_event(100, 1));
        let mut n = 0;
        r.release(99, |_| n += 1);
        assert_eq!(n, 0);
        assert!(!r.is_empty());
    }
}

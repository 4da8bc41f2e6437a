//! Puts events from per-CPU batches back in time order.
//!
//! A socket's transitions run on different CPUs (connect() in its task, the
//! handshake and the close in softirq, often elsewhere), and each CPU's batch reaches
//! the ring when it is flushed, so the ring no longer carries them in order. Events
//! are held until a flush of every CPU has shown that nothing older can still come
//! ([`crate::kernel::batches::Flushed`]), then handed out sorted by timestamp.
//!
//! What is held is the raw record (`Copy`, 104 bytes), decoded once it is handed out:
//! moving decoded events about cost the reader more than the sort.

/// Items with their timestamps, held until they can be handed out in time order.
pub struct Reorder<T> {
    held: Vec<(u64, T)>,
    /// (timestamp, arrival index) of each held item, sorted at each release: small
    /// keys, an unstable sort without scratch allocation, and the index keeps equal
    /// stamps in arrival order.
    order: Vec<(u64, u32)>,
    /// The items kept back by the last release (reused allocation).
    spare: Vec<(u64, T)>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            held: Vec::new(),
            order: Vec::new(),
            spare: Vec::new(),
        }
    }
}

impl<T: Copy> Reorder<T> {
    pub fn push(&mut self, ts_ns: u64, item: T) {
        self.held.push((ts_ns, item));
    }

    /// Hands out the items stamped at or before `upto`, oldest first (equal stamps in
    /// the order they came); the rest stay held, in time order.
    pub fn release(&mut self, upto: u64, mut out: impl FnMut(T)) {
        if self.held.is_empty() {
            return;
        }
        self.order.clear();
        self.order.extend(
            self.held
                .iter()
                .enumerate()
                .map(|(i, &(ts, _))| (ts, i as u32)),
        );
        self.order.sort_unstable();
        let n = self.order.partition_point(|&(ts, _)| ts <= upto);
        for &(_, i) in &self.order[..n] {
            out(self.held[i as usize].1);
        }
        self.spare.clear();
        self.spare
            .extend(self.order[n..].iter().map(|&(_, i)| self.held[i as usize]));
        std::mem::swap(&mut self.held, &mut self.spare);
    }

    /// Hands out everything held, oldest first.
    pub fn release_all(&mut self, out: impl FnMut(T)) {
        self.release(u64::MAX, out);
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (stamp, which event): what a test can tell apart.
    fn released(r: &mut Reorder<(u64, u32)>, upto: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        r.release(upto, |e| out.push(e));
        out
    }

    fn push(r: &mut Reorder<(u64, u32)>, ts: u64, id: u32) {
        r.push(ts, (ts, id));
    }

    #[test]
    fn batches_from_two_cpus_come_out_in_time_order_up_to_the_mark() {
        let mut r = Reorder::default();
        // CPU 1's batch reached the ring first, CPU 0's after.
        for (ts, id) in [(20, 1), (40, 2), (60, 3)] {
            push(&mut r, ts, id);
        }
        for (ts, id) in [(10, 4), (30, 5), (50, 6), (70, 7)] {
            push(&mut r, ts, id);
        }
        assert_eq!(
            released(&mut r, 50),
            [(10, 4), (20, 1), (30, 5), (40, 2), (50, 6)]
        );
        assert!(!r.is_empty());
        // An older event than those still held comes with the next flush.
        push(&mut r, 55, 8);
        assert_eq!(released(&mut r, 65), [(55, 8), (60, 3)]);
        let mut rest = Vec::new();
        r.release_all(|e| rest.push(e));
        assert_eq!(rest, [(70, 7)]);
        assert!(r.is_empty());
    }

    #[test]
    fn equal_stamps_keep_their_arrival_order_across_releases() {
        let mut r = Reorder::default();
        for id in [3, 1, 2] {
            push(&mut r, 5, id);
        }
        push(&mut r, 9, 9);
        assert_eq!(released(&mut r, 5), [(5, 3), (5, 1), (5, 2)]);
        for id in [7, 6] {
            push(&mut r, 9, id);
        }
        // Held back first, so handed out first among equals.
        assert_eq!(released(&mut r, 9), [(9, 9), (9, 7), (9, 6)]);
    }

    #[test]
    fn nothing_is_released_before_the_mark() {
        let mut r = Reorder::default();
        push(&mut r, 100, 1);
        assert!(released(&mut r, 99).is_empty());
        assert!(!r.is_empty());
        assert_eq!(released(&mut r, 100), [(100, 1)]);
    }
}

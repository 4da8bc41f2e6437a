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

/// Bits of a packed sort key that hold the arrival index; the stamp's offset from the
/// oldest held one takes the rest (2^44 ns: almost five hours).
const INDEX_BITS: u32 = 20;

/// Items with their timestamps, held until they can be handed out in time order.
pub struct Reorder<T> {
    held: Vec<(u64, T)>,
    /// (timestamp, arrival index) of each held item, sorted at each release: small
    /// keys, an unstable sort without scratch allocation, and the index keeps equal
    /// stamps in arrival order. Packed into one u64 where they fit (`packed`).
    order: Vec<(u64, u32)>,
    /// The same keys packed into one u64 where they fit; once sorted, the held items'
    /// indices in time order (from either sort).
    packed: Vec<u64>,
    /// The items kept back by the last release (reused allocation).
    spare: Vec<(u64, T)>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            held: Vec::new(),
            order: Vec::new(),
            packed: Vec::new(),
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
        let (lo, hi) = self
            .held
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), &(ts, _)| (lo.min(ts), hi.max(ts)));
        let n = if hi - lo < 1 << (64 - INDEX_BITS) && self.held.len() < 1 << INDEX_BITS {
            // (stamp - lo, index) in one u64: the same order, and an unstable sort of
            // plain integers takes half the time of one of pairs.
            self.packed.clear();
            self.packed.extend(
                self.held
                    .iter()
                    .enumerate()
                    .map(|(i, &(ts, _))| ((ts - lo) << INDEX_BITS) | i as u64),
            );
            self.packed.sort_unstable();
            let n = match upto.checked_sub(lo) {
                Some(rel) if rel < 1 << (64 - INDEX_BITS) => {
                    self.packed.partition_point(|&k| k >> INDEX_BITS <= rel)
                }
                Some(_) => self.packed.len(),
                None => 0,
            };
            // Keys to indices, in place: what the hand-out below reads.
            for k in &mut self.packed {
                *k &= (1 << INDEX_BITS) - 1;
            }
            n
        } else {
            self.order.clear();
            self.order.extend(
                self.held
                    .iter()
                    .enumerate()
                    .map(|(i, &(ts, _))| (ts, i as u32)),
            );
            self.order.sort_unstable();
            self.packed.clear();
            self.packed
                .extend(self.order.iter().map(|&(_, i)| u64::from(i)));
            self.order.partition_point(|&(ts, _)| ts <= upto)
        };
        // `packed` now holds the held items' indices in time order, the first `n`
        // due now.
        for &i in &self.packed[..n] {
            out(self.held[i as usize].1);
        }
        self.spare.clear();
        self.spare
            .extend(self.packed[n..].iter().map(|&i| self.held[i as usize]));
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
    fn stamps_too_far_apart_to_pack_give_the_same_order() {
        // Over 2^44 ns between the oldest and newest held: the pair sort.
        let far = 1u64 << 50;
        let mut r = Reorder::default();
        for (ts, id) in [(far + 5, 1), (3, 2), (far, 3), (3, 4), (far + 5, 5)] {
            push(&mut r, ts, id);
        }
        assert_eq!(released(&mut r, 3), [(3, 2), (3, 4)]);
        // Now close enough to pack: the same rule.
        push(&mut r, far + 1, 6);
        assert_eq!(
            released(&mut r, far + 5),
            [(far, 3), (far + 1, 6), (far + 5, 1), (far + 5, 5)]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_mark_before_everything_held_or_far_after_it() {
        let mut r = Reorder::default();
        push(&mut r, 1000, 1);
        push(&mut r, 900, 2);
        assert!(released(&mut r, 10).is_empty());
        assert_eq!(released(&mut r, u64::MAX - 1), [(900, 2), (1000, 1)]);
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

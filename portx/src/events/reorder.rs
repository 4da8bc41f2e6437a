//! Puts events from per-CPU batches back in time order.
//!
//! A socket's transitions run on different CPUs (connect() in its task, the
//! handshake and the close in softirq, often elsewhere), and each CPU's batch reaches
//! the ring when it is flushed, so the ring no longer carries them in order. Events
//! are held until a flush of every CPU has shown that nothing older can still come
//! ([`crate::kernel::batches::Flushed`]), then handed out sorted by timestamp.
//!
//! What comes is nearly sorted already: a batch is stamped in order as it fills, and a
//! CPU's batches reach the ring one after another. So items are appended to sorted
//! runs (about one per CPU) as they come, and handed out by merging the runs' heads:
//! a compare or two per item, where sorting everything held at each release cost a
//! quarter of the reader's time per event.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

/// Runs kept at most; past this (input far from sorted) everything held is sorted
/// into one run, which keeps the work per item bounded whatever comes.
const MAX_RUNS: usize = 64;

/// Up to this many runs (a few CPUs' batches) a release finds the oldest head by
/// looking at each; past it, through a heap.
const SCAN_RUNS: usize = 8;

/// Emptied runs kept for their allocation, at most: about one per CPU is reused at
/// each drain.
const SPARE_RUNS: usize = 8;

/// Items an emptied run keeps room for, at most: a drain of a steady storm fills a run
/// with a few thousand; a burst far past that gives its memory back once handed out.
const SPARE_CAPACITY: usize = 16 * 1024;

/// Items with their timestamps, held until they can be handed out in time order.
pub struct Reorder<T> {
    /// Sorted runs of (timestamp, arrival number, item), oldest first in each; never
    /// empty ones. The arrival number orders equal stamps as they came.
    runs: Vec<VecDeque<(u64, u64, T)>>,
    /// The run the last item joined: where the next one most likely goes too.
    last: usize,
    arrivals: u64,
    /// Emptied runs, kept for their allocation.
    spare: Vec<VecDeque<(u64, u64, T)>>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            runs: Vec::new(),
            last: 0,
            arrivals: 0,
            spare: Vec::new(),
        }
    }
}

impl<T> Reorder<T> {
    pub fn push(&mut self, ts_ns: u64, item: T) {
        let n = self.arrivals;
        self.arrivals += 1;
        let fits = |run: &VecDeque<(u64, u64, T)>| run.back().is_none_or(|b| b.0 <= ts_ns);
        let run = if self.runs.get(self.last).is_some_and(fits) {
            self.last
        } else {
            // The run with the newest tail that this item may follow (patience
            // sorting's rule, which keeps the runs few), else a new one.
            let best = self
                .runs
                .iter()
                .enumerate()
                .filter(|(_, r)| fits(r))
                .max_by_key(|(_, r)| r.back().map_or(0, |b| b.0))
                .map(|(i, _)| i);
            match best {
                Some(i) => i,
                None => {
                    if self.runs.len() >= MAX_RUNS {
                        self.merge_all();
                    }
                    self.runs.push(self.spare.pop().unwrap_or_default());
                    self.runs.len() - 1
                }
            }
        };
        self.runs[run].push_back((ts_ns, n, item));
        self.last = run;
    }

    /// Hands out the items stamped at or before `upto`, oldest first (equal stamps in
    /// the order they came); the rest stay held, in time order.
    pub fn release(&mut self, upto: u64, mut out: impl FnMut(T)) {
        if self.runs.len() <= SCAN_RUNS {
            // The oldest head, found by looking at each.
            loop {
                let mut best: Option<(u64, u64, usize)> = None;
                for (i, r) in self.runs.iter().enumerate() {
                    if let Some(&(ts, n, _)) = r.front()
                        && ts <= upto
                        && best.is_none_or(|b| (ts, n) < (b.0, b.1))
                    {
                        best = Some((ts, n, i));
                    }
                }
                let Some((_, _, i)) = best else { break };
                out(self.runs[i].pop_front().expect("a head").2);
            }
        } else {
            let mut heads: BinaryHeap<Reverse<(u64, u64, usize)>> = self
                .runs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    r.front()
                        .filter(|f| f.0 <= upto)
                        .map(|f| Reverse((f.0, f.1, i)))
                })
                .collect();
            while let Some(Reverse((_, _, i))) = heads.pop() {
                let run = &mut self.runs[i];
                out(run.pop_front().expect("a head").2);
                if let Some(f) = run.front().filter(|f| f.0 <= upto) {
                    heads.push(Reverse((f.0, f.1, i)));
                }
            }
        }
        let before = self.runs.len();
        let spare = &mut self.spare;
        self.runs.retain_mut(|r| {
            let keep = !r.is_empty();
            if !keep && spare.len() < SPARE_RUNS {
                let mut r = std::mem::take(r);
                r.shrink_to(SPARE_CAPACITY);
                spare.push(r);
            }
            keep
        });
        if self.runs.len() != before {
            self.last = 0;
        }
    }

    /// Hands out everything held, oldest first.
    pub fn release_all(&mut self, out: impl FnMut(T)) {
        self.release(u64::MAX, out);
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Items the held runs and the spare ones have room for.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.runs
            .iter()
            .chain(&self.spare)
            .map(VecDeque::capacity)
            .sum()
    }

    /// Sorts everything held into one run.
    fn merge_all(&mut self) {
        let mut all: Vec<(u64, u64, T)> = self.runs.drain(..).flatten().collect();
        all.sort_unstable_by_key(|&(ts, n, _)| (ts, n));
        self.runs.push(all.into());
        self.last = 0;
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
    fn stamps_far_apart_keep_the_same_rule() {
        let far = 1u64 << 50;
        let mut r = Reorder::default();
        for (ts, id) in [(far + 5, 1), (3, 2), (far, 3), (3, 4), (far + 5, 5)] {
            push(&mut r, ts, id);
        }
        assert_eq!(released(&mut r, 3), [(3, 2), (3, 4)]);
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

    /// Pseudo-random numbers without a crate: what the tests below interleave by.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    /// `cpus` sorted streams (stamps with ties) sent in batches of up to `batch` in a
    /// random CPU order, released at random marks: the same items, in the same order, as
    /// a stable sort of everything by stamp, whatever the number of runs (a few, past
    /// the scan, past the cap).
    fn matches_a_stable_sort(cpus: usize, batch: usize, seed: u64) {
        let mut rng = seed;
        let mut clock = vec![0u64; cpus];
        let mut r = Reorder::default();
        let mut sent: Vec<(u64, u32)> = Vec::new();
        let mut out: Vec<(u64, u32)> = Vec::new();
        for id in 0..5000u32 {
            if id % batch as u32 == 0 {
                // A release up to a mark below every CPU's clock: nothing older comes.
                let mark = clock.iter().min().copied().unwrap_or(0);
                r.release(mark, |e| out.push(e));
            }
            let cpu = (lcg(&mut rng) as usize) % cpus;
            clock[cpu] += lcg(&mut rng) % 3;
            let ts = clock[cpu];
            push(&mut r, ts, id);
            sent.push((ts, id));
        }
        r.release_all(|e| out.push(e));
        assert!(r.is_empty());
        // Items with equal stamps from different CPUs: arrival order.
        sent.sort_by_key(|&(ts, _)| ts);
        assert_eq!(out, sent, "{cpus} CPUs, batches of {batch}");
    }

    #[test]
    fn any_number_of_runs_comes_out_as_a_stable_sort() {
        matches_a_stable_sort(1, 64, 1);
        matches_a_stable_sort(2, 62, 2);
        matches_a_stable_sort(SCAN_RUNS + 3, 40, 3);
        matches_a_stable_sort(MAX_RUNS * 2, 300, 4);
        // Every item its own CPU's: the cap's merge, over and over.
        matches_a_stable_sort(5000, 5000, 5);
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_handed_out() {
        let mut r = Reorder::default();
        // Two CPUs' batches of a burst far past a drain's usual size: two runs.
        let each = 3 * SPARE_CAPACITY as u64;
        for cpu in [1, 0] {
            for i in 0..each {
                push(&mut r, cpu * each + i, 0);
            }
        }
        assert_eq!(r.runs.len(), 2);
        assert_eq!(released(&mut r, u64::MAX).len(), 2 * each as usize);
        assert!(r.is_empty());
        assert!(
            r.capacity() <= 2 * SPARE_CAPACITY,
            "{} items of room kept",
            r.capacity()
        );
        // Many runs emptied at once: a few are kept.
        for i in 0..2 * SPARE_RUNS as u64 {
            push(&mut r, 1_000 - i, 1);
        }
        assert_eq!(r.runs.len(), 2 * SPARE_RUNS);
        assert_eq!(released(&mut r, u64::MAX).len(), 2 * SPARE_RUNS);
        assert_eq!(r.spare.len(), SPARE_RUNS);
    }

    #[test]
    fn a_stamp_older_than_everything_held_starts_a_run_of_its_own() {
        let mut r = Reorder::default();
        for (ts, id) in [(10, 1), (20, 2), (5, 3), (30, 4), (1, 5)] {
            push(&mut r, ts, id);
        }
        assert_eq!(released(&mut r, 20), [(1, 5), (5, 3), (10, 1), (20, 2)]);
        assert_eq!(released(&mut r, 30), [(30, 4)]);
        assert!(r.is_empty());
    }
}

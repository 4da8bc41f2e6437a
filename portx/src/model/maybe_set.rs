//! A counting filter in front of a large hash set: "certainly absent" from a small,
//! cache-resident array, so a lookup that would miss does not touch the big table.
//!
//! The model asks the TIME_WAIT table, at every connection's move out of SYN_SENT,
//! whether the kernel reused a 4-tuple still held there (`tcp_tw_reuse`). Nearly
//! always it did not, and with 100k entries that answer costs a cache miss in a
//! table of several megabytes, the model's largest single cost per connection.

use std::hash::{BuildHasher as _, Hash};

use rustc_hash::FxBuildHasher;

/// Slots of the filter: 512 KiB, a few percent false "maybe" at 20k keys and about
/// a fifth at 100k.
const SLOTS: usize = 1 << 19;

/// Counts of keys per slot. A slot that reached `u8::MAX` stays there: it says "maybe"
/// for ever, which is only slower, never wrong.
pub struct MaybeSet {
    counts: Box<[u8]>,
}

impl Default for MaybeSet {
    fn default() -> Self {
        Self {
            counts: vec![0; SLOTS].into_boxed_slice(),
        }
    }
}

impl MaybeSet {
    fn slot<K: Hash>(key: &K) -> usize {
        // The high bits: the table's own hash uses the low ones for its buckets.
        (FxBuildHasher.hash_one(key) >> (64 - SLOTS.trailing_zeros())) as usize
    }

    /// A key was added to the set.
    pub fn added<K: Hash>(&mut self, key: &K) {
        let c = &mut self.counts[Self::slot(key)];
        *c = c.saturating_add(1);
    }

    /// A key was removed from the set.
    pub fn removed<K: Hash>(&mut self, key: &K) {
        let c = &mut self.counts[Self::slot(key)];
        if *c != u8::MAX {
            *c -= 1;
        }
    }

    /// False when the key is certainly not in the set.
    pub fn may_hold<K: Hash>(&self, key: &K) -> bool {
        self.counts[Self::slot(key)] != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_says_absent_for_a_key_it_holds() {
        let mut s = MaybeSet::default();
        let keys: Vec<u64> = (0..200_000u64).map(|i| i * 7919).collect();
        for k in &keys {
            s.added(k);
        }
        assert!(keys.iter().all(|k| s.may_hold(k)));
        // Half removed: the rest still held, and most removed ones are now absent.
        for k in keys.iter().step_by(2) {
            s.removed(k);
        }
        assert!(keys.iter().skip(1).step_by(2).all(|k| s.may_hold(k)));
        let absent = (1_000_000..1_010_000u64).filter(|k| !s.may_hold(k)).count();
        assert!(absent > 7_000, "{absent} of 10000 unseen keys said absent");
        for k in keys.iter().skip(1).step_by(2) {
            s.removed(k);
        }
        assert!(keys.iter().all(|k| !s.may_hold(k)));
    }

    #[test]
    fn a_saturated_slot_stays_maybe() {
        let mut s = MaybeSet::default();
        for _ in 0..300 {
            s.added(&1u64);
        }
        for _ in 0..300 {
            s.removed(&1u64);
        }
        assert!(s.may_hold(&1u64));
    }
}

//! A counting filter in front of a large hash set: "certainly absent" from a small,
//! cache-resident array, so a lookup that would miss does not touch the big table.
//!
//! The model asks the TIME_WAIT table, at every connection's move out of SYN_SENT,
//! whether the kernel reused a 4-tuple still held there (`tcp_tw_reuse`). Nearly
//! always it did not, and with 100k entries that answer costs a cache miss in a
//! table of several megabytes, the model's largest single cost per connection.
//!
//! A key's slot is its group's (hashed) place plus its index in the group: for the
//! TIME_WAIT table the group is the destination and the index the source port, so a
//! destination's ports sit side by side in the filter. The kernel hands out a
//! destination's ports a few apart (`__inet_hash_connect` moves its offset on by 2 to
//! 16 per connect), so a storm of connects reads a few cache lines of the filter over
//! and over rather than a random byte each (which cost a cache miss per connection:
//! a tenth of `top`'s process time in a profile of the storm).
//! https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_hashtables.c (__inet_hash_connect)

use std::hash::{BuildHasher as _, Hash};

use rustc_hash::FxBuildHasher;

/// Slots of the filter at its smallest: 512 KiB, a few percent false "maybe" at 20k
/// keys. It grows as keys come (see [`MaybeSet::wants_resize`]), so the false
/// "maybe"s stay between about a tenth and a fifth however large the TIME_WAIT table
/// gets, at a byte per eight to four entries.
const MIN_SLOTS: usize = 1 << 19;

/// What the filter needs of a key: the part that its neighbours share, and its place
/// among them.
pub trait Grouped {
    type Group: Hash;
    fn group(&self) -> Self::Group;
    fn index(&self) -> u16;
}

/// Counts of keys per slot. A slot that reached `u8::MAX` stays there: it says "maybe"
/// for ever, which is only slower, never wrong (at a quarter of a key per slot at
/// most, a slot practically never gets there).
pub struct MaybeSet {
    counts: Box<[u8]>,
    /// Keys in the set.
    len: usize,
}

impl Default for MaybeSet {
    fn default() -> Self {
        Self {
            counts: vec![0; MIN_SLOTS].into_boxed_slice(),
            len: 0,
        }
    }
}

impl MaybeSet {
    fn slot<K: Grouped>(&self, key: &K) -> usize {
        // The hash's high bits, which are its best mixed.
        let bits = self.counts.len().trailing_zeros();
        let start = (FxBuildHasher.hash_one(key.group()) >> (64 - bits)) as usize;
        start.wrapping_add(usize::from(key.index())) & (self.counts.len() - 1)
    }

    /// A key was added to the set.
    pub fn added<K: Grouped>(&mut self, key: &K) {
        let i = self.slot(key);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.len += 1;
    }

    /// A key was removed from the set.
    pub fn removed<K: Grouped>(&mut self, key: &K) {
        let i = self.slot(key);
        if self.counts[i] != u8::MAX {
            self.counts[i] -= 1;
        }
        self.len -= 1;
    }

    /// False when the key is certainly not in the set.
    pub fn may_hold<K: Grouped>(&self, key: &K) -> bool {
        self.counts[self.slot(key)] != 0
    }

    /// Whether the filter should be rebuilt at another size ([`Self::rebuild`]): above
    /// a key per four slots it grows, below one per 32 it shrinks back (not below its
    /// smallest), so rebuilds, each a pass over the keys, stay rare.
    pub fn wants_resize(&self) -> bool {
        let slots = self.counts.len();
        self.len > slots / 4 || (slots > MIN_SLOTS && self.len < slots / 32)
    }

    /// Refills the filter from every key of the set, at eight slots a key.
    pub fn rebuild<'a, K: Grouped + 'a>(&mut self, keys: impl ExactSizeIterator<Item = &'a K>) {
        let slots = (keys.len() * 8).next_power_of_two().max(MIN_SLOTS);
        *self = Self {
            counts: vec![0; slots].into_boxed_slice(),
            len: 0,
        };
        for k in keys {
            self.added(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test keys: the high bits a group, the low 16 its index.
    impl Grouped for u64 {
        type Group = u64;
        fn group(&self) -> u64 {
            self >> 16
        }
        fn index(&self) -> u16 {
            *self as u16
        }
    }

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
    fn grows_with_its_keys_and_shrinks_back() {
        let mut s = MaybeSet::default();
        let mut held = std::collections::HashSet::new();
        let mut rebuilds = 0;
        // A million keys: the filter grows and still says "absent" for most others.
        for k in 0..1_000_000u64 {
            held.insert(k * 7919);
            s.added(&(k * 7919));
            if s.wants_resize() {
                s.rebuild(held.iter());
                rebuilds += 1;
            }
        }
        // 128k keys grow it to 2M slots, 512k to 8M.
        assert_eq!((rebuilds, s.counts.len()), (2, 8 << 20));
        assert!(held.iter().all(|k| s.may_hold(k)));
        let absent = (1..=10_000u64)
            .filter(|k| !s.may_hold(&(k * 7919 + 1)))
            .count();
        assert!(absent > 8_500, "{absent} of 10000 unseen keys said absent");
        // All but a few removed: back to its smallest, still right about those held.
        for k in 100..1_000_000u64 {
            held.remove(&(k * 7919));
            s.removed(&(k * 7919));
            if s.wants_resize() {
                s.rebuild(held.iter());
            }
        }
        assert_eq!(s.counts.len(), MIN_SLOTS);
        assert!(held.iter().all(|k| s.may_hold(k)));
    }

    #[test]
    fn a_groups_held_indices_never_make_its_others_maybe() {
        // One busy destination: every other port of its range in TIME_WAIT.
        let mut s = MaybeSet::default();
        let group = 0xabcd_u64 << 16;
        for port in (32768..60999u64).step_by(2) {
            s.added(&(group | port));
        }
        assert!(
            (32768..60999u64)
                .step_by(2)
                .all(|p| s.may_hold(&(group | p)))
        );
        // Its free ports each have a slot of their own.
        assert!(
            (32769..60999u64)
                .step_by(2)
                .all(|p| !s.may_hold(&(group | p)))
        );
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

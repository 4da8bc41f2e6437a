//! Timewait sockets the kernel freed lately (`TimewaitEnd` events), for the drift check:
//! a sock_diag dump reads the table while connections come and go, so one that started
//! before a timewait socket went may list it, and the model, which has seen it go,
//! must not add it back.

use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};

use super::Tuple;

/// How long an end is remembered at most: longer than a dump takes to be applied
/// after it starts, short enough that a storm of reuses (one end per connection)
/// keeps this small.
const MEMORY_NS: u64 = 2_000_000_000;

/// When each freed 4-tuple went, by a hash of namespace and 4-tuple (a collision at
/// worst leaves one timewait socket to the next check).
#[derive(Debug, Default)]
pub struct RecentEnds {
    at: FxHashMap<u64, u64>,
    /// Old ends are dropped when the map reaches this size.
    prune_at: usize,
}

impl RecentEnds {
    /// `tuple` in `netns` went at `ts_ns`.
    pub fn ended(&mut self, netns: u32, tuple: &Tuple, ts_ns: u64) {
        if self.at.len() >= self.prune_at {
            let keep_from = ts_ns.saturating_sub(MEMORY_NS);
            self.at.retain(|_, t| *t >= keep_from);
            self.prune_at = (2 * self.at.len()).max(1024);
        }
        self.at.insert(key(netns, tuple), ts_ns);
    }

    /// Whether `tuple` in `netns` went at `from_ns` or later.
    pub fn since(&self, netns: u32, tuple: &Tuple, from_ns: u64) -> bool {
        self.at
            .get(&key(netns, tuple))
            .is_some_and(|&t| t >= from_ns)
    }

    /// Forgets ends before `ns` (no dump to come started earlier).
    pub fn forget_before(&mut self, ns: u64) {
        if !self.at.is_empty() {
            self.at.retain(|_, t| *t >= ns);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.at.len()
    }
}

fn key(netns: u32, tuple: &Tuple) -> u64 {
    let mut h = FxHasher::default();
    netns.hash(&mut h);
    tuple.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn t(sport: u16) -> Tuple {
        Tuple::new(
            "127.0.0.1".parse().unwrap(),
            sport,
            "127.0.0.1".parse().unwrap(),
            80,
        )
    }

    #[test]
    fn an_end_counts_from_its_time_in_its_namespace() {
        let mut e = RecentEnds::default();
        e.ended(1, &t(20000), 5 * S);
        assert!(e.since(1, &t(20000), 5 * S));
        assert!(e.since(1, &t(20000), 4 * S));
        assert!(!e.since(1, &t(20000), 5 * S + 1));
        assert!(!e.since(2, &t(20000), 4 * S));
        assert!(!e.since(1, &t(20001), 4 * S));
        e.forget_before(5 * S + 1);
        assert!(!e.since(1, &t(20000), 0));
    }

    #[test]
    fn a_storm_of_ends_keeps_a_few_seconds_of_them() {
        let mut e = RecentEnds::default();
        // 50,000 distinct ends a second for 10 s: 500,000.
        for i in 0..500_000u64 {
            e.ended((i >> 16) as u32, &t(i as u16), i * 20_000);
        }
        // Pruned to the last 2 s (100,000) whenever it has doubled since.
        assert!((100_000..=200_000).contains(&e.len()), "{}", e.len());
        // The newest are all there.
        assert!(e.since(7, &t((499_999u64 & 0xffff) as u16), 0));
    }
}

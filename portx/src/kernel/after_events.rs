//! What the prober read from the kernel, held until the event stream has caught up
//! with the moment it read it.
//!
//! A sock_diag dump shows the kernel at the time it ends, but the events stamped before
//! then may still sit in a per-CPU batch or in the ring. Applied ahead of them, a dump
//! disagrees with the model for as long as they take:
//! - the drift check finds a timewait socket whose close has not come yet, adds it,
//!   and its port counts twice (the live socket and the entry) until the close comes;
//! - a namespace let go of once its last socket is gone comes back with that socket's
//!   close: a close from FIN_WAIT2 leaves a TIME_WAIT entry, and the kernel purges a
//!   dying namespace's timewait sockets without an event, so it stays listed for a
//!   minute with nothing left to probe it by.

/// Items, each waiting for the events stamped up to its time.
#[derive(Debug)]
pub struct AfterEvents<T> {
    /// `(boot-clock time the dump ended, item)`, in the order they came.
    waiting: Vec<(u64, T)>,
}

impl<T> Default for AfterEvents<T> {
    fn default() -> Self {
        Self {
            waiting: Vec::new(),
        }
    }
}

impl<T> AfterEvents<T> {
    /// `item` was read from a dump that ended at `at_ns`.
    pub fn push(&mut self, at_ns: u64, item: T) {
        self.waiting.push((at_ns, item));
    }

    /// `item` was read from a dump that ended at `at_ns`, and supersedes the waiting
    /// items `superseded` picks (a later dump of the same thing): while the event
    /// stream lags, dumps still come at their own pace, and would pile up.
    pub fn push_replacing(&mut self, at_ns: u64, item: T, superseded: impl Fn(&T) -> bool) {
        self.waiting.retain(|(_, w)| !superseded(w));
        self.push(at_ns, item);
    }

    /// Every event stamped at or before `upto` has been handed out: hands `out` the
    /// items from then or earlier, in the order they came.
    pub fn release(&mut self, upto: u64, mut out: impl FnMut(T)) {
        let waiting = std::mem::take(&mut self.waiting);
        for (at, item) in waiting {
            if at <= upto {
                out(item);
            } else {
                self.waiting.push((at, item));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(a: &mut AfterEvents<u32>, upto: u64) -> Vec<u32> {
        let mut out = Vec::new();
        a.release(upto, |i| out.push(i));
        out
    }

    #[test]
    fn held_until_the_stream_passes_the_dump() {
        let mut a = AfterEvents::default();
        a.push(1_000, 7);
        a.push(3_000, 8);
        a.push(2_000, 9);
        assert_eq!(released(&mut a, 999), Vec::<u32>::new());
        assert!(!a.is_empty());
        assert_eq!(released(&mut a, 2_000), vec![7, 9]);
        assert_eq!(released(&mut a, 2_999), Vec::<u32>::new());
        assert_eq!(released(&mut a, u64::MAX), vec![8]);
        assert!(a.is_empty());
    }

    #[test]
    fn a_later_dump_replaces_the_one_it_supersedes() {
        let mut a = AfterEvents::default();
        a.push(1_000, 10);
        a.push(1_500, 21);
        // Same tens: the same thing dumped again.
        a.push_replacing(2_000, 12, |w| w / 10 == 1);
        assert_eq!(released(&mut a, 1_999), vec![21]);
        assert_eq!(released(&mut a, 2_000), vec![12]);
    }
}

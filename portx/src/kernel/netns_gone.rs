//! Namespaces the prober let go of, held until the event stream has caught up with
//! the moment it did.
//!
//! The prober lets go of a namespace once a sock_diag dump finds no socket of its own
//! in it; the closes of its last sockets may still sit in a per-CPU batch or in the
//! ring. Forgotten first, those closes would bring it back: a close from FIN_WAIT2
//! leaves a TIME_WAIT entry in the model, and the kernel purges a dying namespace's
//! timewait sockets without an event, so the namespace would stay listed for a
//! minute with nothing left to probe it by.

/// Let-gos waiting for the events stamped before them.
#[derive(Debug, Default)]
pub struct PendingGone {
    /// `(netns, boot-clock time of the dump that found it empty)`.
    waiting: Vec<(u32, u64)>,
}

impl PendingGone {
    /// `netns` was let go of after a dump that ended at `at_ns`.
    pub fn push(&mut self, netns: u32, at_ns: u64) {
        self.waiting.push((netns, at_ns));
    }

    /// Every event stamped at or before `upto` has been handed out: the let-gos
    /// from then or earlier, in the order they came.
    pub fn release(&mut self, upto: u64) -> Vec<u32> {
        let mut out = Vec::new();
        self.waiting.retain(|&(netns, at)| {
            let ready = at <= upto;
            if ready {
                out.push(netns);
            }
            !ready
        });
        out
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_the_stream_passes_the_dump() {
        let mut p = PendingGone::default();
        p.push(7, 1_000);
        p.push(8, 3_000);
        p.push(9, 2_000);
        assert_eq!(p.release(999), Vec::<u32>::new());
        assert!(!p.is_empty());
        assert_eq!(p.release(2_000), vec![7, 9]);
        assert_eq!(p.release(2_999), Vec::<u32>::new());
        assert_eq!(p.release(u64::MAX), vec![8]);
        assert!(p.is_empty());
    }
}

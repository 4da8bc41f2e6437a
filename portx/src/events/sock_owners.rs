//! Who owns each socket, joined onto the events `portx trace` prints. Pure: no kernel
//! access. (`portx top`'s model keeps an owner per socket anyway and does the same
//! there, listeners included, rather than keep a second table.)
//!
//! The BPF side names the current task only on transitions that run in the owner's
//! own syscall (connect, listen, close); the others (handshake, FIN_WAIT2, LAST_ACK
//! -> CLOSE, accepted children) run in softirq, where `current` is whoever was
//! interrupted. Remembering owners here rather than in a BPF map takes a map lookup,
//! and an insert and a delete per socket, off every state change in the kernel, and
//! the number of sockets followed is no longer capped by a map's size.

use rustc_hash::FxHashMap;

use crate::events::{Comm, Kind, TcpState, TraceEvent};

/// The owner fields of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    tid: u32,
    cgroup_id: u64,
    comm: Comm,
}

impl Owner {
    fn of(e: &TraceEvent) -> Option<Self> {
        (e.pid != 0).then_some(Self {
            pid: e.pid,
            tid: e.tid,
            cgroup_id: e.cgroup_id,
            comm: e.comm,
        })
    }

    fn fill(self, e: &mut TraceEvent) {
        e.pid = self.pid;
        e.tid = self.tid;
        e.cgroup_id = self.cgroup_id;
        e.comm = self.comm;
    }
}

/// Two generations of a map: when the young one reaches half the cap, it becomes the
/// old one and the previous old one is dropped. Entries in use move back to the young
/// one, so what is lost is what was not seen for a whole generation: sockets whose
/// close was never seen (dropped events, or started before portx) cannot grow it
/// without bound.
#[derive(Debug)]
struct Generations<K, V> {
    young: FxHashMap<K, V>,
    old: FxHashMap<K, V>,
    half_cap: usize,
}

impl<K: std::hash::Hash + Eq, V: Copy> Generations<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            young: FxHashMap::default(),
            old: FxHashMap::default(),
            half_cap: (cap / 2).max(1),
        }
    }

    fn insert(&mut self, k: K, v: V) {
        self.old.remove(&k);
        if self.young.len() >= self.half_cap {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    fn get(&mut self, k: K) -> Option<V> {
        if let Some(v) = self.young.get(&k) {
            return Some(*v);
        }
        let v = self.old.remove(&k)?;
        self.insert(k, v);
        Some(v)
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        self.young.remove(k).or_else(|| self.old.remove(k))
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// Socket owners learned from events, filled into the events that lack them.
#[derive(Debug)]
pub struct SockOwners {
    /// By kernel socket address.
    sockets: Generations<u64, Owner>,
    /// Listeners by (netns, port): accepted children are created in softirq and
    /// belong to whoever listens.
    listeners: Generations<(u32, u16), Owner>,
}

impl Default for SockOwners {
    fn default() -> Self {
        Self::with_capacity(1 << 20)
    }
}

impl SockOwners {
    /// Follows at most about `sockets` sockets (and a sixteenth as many listeners).
    pub fn with_capacity(sockets: usize) -> Self {
        Self {
            sockets: Generations::new(sockets),
            listeners: Generations::new((sockets / 16).max(64)),
        }
    }

    /// Sockets and listeners remembered.
    pub fn len(&self) -> usize {
        self.sockets.len() + self.listeners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `e`'s owner from what earlier events said, and learns from `e`.
    pub fn join(&mut self, e: &mut TraceEvent) {
        if e.kind != Kind::State || e.sock == 0 {
            return;
        }
        let (Some(old), Some(new)) = (e.old_state, e.new_state) else {
            return;
        };
        let own = Owner::of(e);
        let known = self.sockets.get(e.sock);
        // The task that connects or listens owns the socket from then on (this also
        // replaces a stale entry left by a freed socket at the same address). A close
        // names the closer, which only counts when nothing better is known.
        let owner = match (old, new) {
            (_, TcpState::SynSent | TcpState::Listen) => own.or(known),
            (TcpState::Listen, TcpState::SynRecv) => {
                self.listeners.get((e.netns, e.sport)).or(known).or(own)
            }
            _ => known.or(own),
        };
        if new == TcpState::Listen
            && let Some(o) = owner
        {
            self.listeners.insert((e.netns, e.sport), o);
        } else if old == TcpState::Listen && new == TcpState::Close {
            self.listeners.remove(&(e.netns, e.sport));
        }
        if new == TcpState::Close {
            self.sockets.remove(&e.sock);
        } else if let Some(o) = owner
            && known != Some(o)
        {
            self.sockets.insert(e.sock, o);
        }
        if let Some(o) = owner {
            o.fill(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::events::Family;

    const SK: u64 = 0xffff_8881_0000_1000;
    const CHILD: u64 = 0xffff_8881_0000_2000;
    const NS: u32 = 4026531840;

    fn state(sock: u64, sport: u16, old: TcpState, new: TcpState, pid: u32) -> TraceEvent {
        TraceEvent {
            kind: Kind::State,
            ts_ns: 1,
            pid,
            tid: pid,
            comm: Comm::from(if pid == 0 { "" } else { "curl" }),
            cgroup_id: u64::from(pid) * 10,
            netns: NS,
            sock,
            family: Family::Ipv4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 80,
            old_state: Some(old),
            new_state: Some(new),
            errno: None,
            bound_port: None,
        }
    }

    fn joined(j: &mut SockOwners, mut e: TraceEvent) -> u32 {
        j.join(&mut e);
        assert_eq!(
            e.cgroup_id,
            u64::from(e.pid) * 10,
            "all owner fields move together"
        );
        e.pid
    }

    use TcpState::*;

    #[test]
    fn softirq_transitions_get_the_connecting_task() {
        let mut j = SockOwners::default();
        assert_eq!(joined(&mut j, state(SK, 0, Close, SynSent, 42)), 42);
        // The handshake and the FINs run in softirq, where the event names no one.
        assert_eq!(
            joined(&mut j, state(SK, 40000, SynSent, Established, 0)),
            42
        );
        assert_eq!(joined(&mut j, state(SK, 40000, FinWait1, FinWait2, 0)), 42);
        assert_eq!(joined(&mut j, state(SK, 40000, FinWait2, Close, 0)), 42);
        assert!(j.is_empty(), "a closed socket is forgotten");
        // The same address, reused by a socket nobody was seen creating.
        assert_eq!(
            joined(&mut j, state(SK, 40000, Established, CloseWait, 0)),
            0
        );
    }

    #[test]
    fn a_close_by_another_task_does_not_take_the_socket() {
        let mut j = SockOwners::default();
        joined(&mut j, state(SK, 0, Close, SynSent, 42));
        // A child that inherited the fd closes it.
        assert_eq!(
            joined(&mut j, state(SK, 40000, Established, FinWait1, 7)),
            42
        );
        // With nothing known, the closer is the best answer there is.
        assert_eq!(
            joined(&mut j, state(CHILD, 40001, Established, FinWait1, 7)),
            7
        );
        assert_eq!(
            joined(&mut j, state(CHILD, 40001, FinWait1, FinWait2, 0)),
            7
        );
    }

    #[test]
    fn accepted_children_belong_to_the_listener() {
        let mut j = SockOwners::default();
        joined(&mut j, state(SK, 8080, Close, Listen, 99));
        assert_eq!(joined(&mut j, state(CHILD, 8080, Listen, SynRecv, 0)), 99);
        assert_eq!(
            joined(&mut j, state(CHILD, 8080, SynRecv, Established, 0)),
            99
        );
        assert_eq!(joined(&mut j, state(CHILD, 8080, LastAck, Close, 0)), 99);
        // Other namespaces and ports are not this listener's.
        let mut other = state(CHILD + 1, 8080, Listen, SynRecv, 0);
        other.netns = NS + 1;
        assert_eq!(joined(&mut j, other), 0);
        assert_eq!(
            joined(&mut j, state(CHILD + 2, 8081, Listen, SynRecv, 0)),
            0
        );
        // Once the listener closes, new children are nobody's.
        joined(&mut j, state(SK, 8080, Listen, Close, 99));
        assert_eq!(
            joined(&mut j, state(CHILD + 3, 8080, Listen, SynRecv, 0)),
            0
        );
    }

    #[test]
    fn events_other_than_state_changes_pass_through() {
        let mut j = SockOwners::default();
        joined(&mut j, state(SK, 0, Close, SynSent, 42));
        let mut e = state(SK, 40000, Close, Close, 0);
        e.kind = Kind::TimewaitEnd;
        e.old_state = None;
        e.new_state = None;
        j.join(&mut e);
        assert_eq!(e.pid, 0);
        let mut e = state(SK, 40000, Close, Close, 5);
        e.kind = Kind::Connect;
        j.join(&mut e);
        assert_eq!(e.pid, 5, "connect() results name the caller themselves");
    }

    #[test]
    fn memory_stays_bounded_when_closes_are_missed() {
        let mut j = SockOwners::with_capacity(1000);
        for i in 0..100_000u64 {
            joined(&mut j, state(SK + i * 64, 0, Close, SynSent, 42));
        }
        assert!(j.len() <= 1000, "{} entries", j.len());
        // A socket seen again within a generation keeps its owner.
        let last = SK + 99_999 * 64;
        assert_eq!(joined(&mut j, state(last, 1, SynSent, Established, 0)), 42);
        let first = SK;
        assert_eq!(joined(&mut j, state(first, 1, SynSent, Established, 0)), 0);
    }

    #[test]
    fn sockets_in_use_survive_a_generation_change() {
        let mut j = SockOwners::with_capacity(100);
        joined(&mut j, state(SK, 0, Close, SynSent, 42));
        for i in 1..200u64 {
            joined(&mut j, state(SK + i * 64, 0, Close, SynSent, 1));
            // Still in use: moved back to the young generation on each lookup.
            assert_eq!(joined(&mut j, state(SK, 1, SynSent, Established, 0)), 42);
        }
    }
}

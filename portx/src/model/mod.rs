//! The port accounting model: pure Rust, fed by typed events and a start-up baseline,
//! no kernel access.
//!
//! It keeps every live TCP socket (by kernel socket address), the 4-tuples held in
//! TIME_WAIT (which no tracepoint reports), and, updated incrementally on each event,
//! per-destination and per-process counts, so a snapshot costs time proportional to the
//! number of destinations, not sockets.

pub mod capacity;
pub mod clients;
pub mod diagnosis;
pub mod input;
mod maybe_set;
pub mod peaks;
pub mod rate;
pub mod recent_ends;
pub mod snapshot;
pub mod trigger;

use std::{
    borrow::Cow,
    cmp::Reverse,
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    events::{Kind, TcpState, TraceEvent},
    views::output::{JsonEvent, endpoint},
};
use clients::ClientView;
use rate::RateWindow;
use recent_ends::RecentEnds;
use snapshot::{DestUsage, Drift, Failure, Holder, NetnsUsage, OwnerPorts, ProcessUsage, Snapshot};

/// How long a TIME_WAIT socket holds its 4-tuple (`TCP_TIMEWAIT_LEN`,
/// <https://elixir.bootlin.com/linux/v6.12/source/include/net/tcp.h#L124>).
pub const TIME_WAIT_NS: u64 = 60_000_000_000;
/// Default `ip_local_port_range`, used until a namespace's own range is known.
pub const DEFAULT_RANGE: (u16, u16) = (32768, 60999);
/// How far a TIME_WAIT entry's expiry may be from the kernel's before a drift check
/// corrects it: more than a dump of 100k sockets takes, and than a few jiffies.
const EXPIRY_SLACK_NS: u64 = 100_000_000;
/// How long a live socket's 4-tuple must have been a timewait socket in the kernel,
/// from one drift check's dump to a later one's, before the model takes its close as
/// missed: the event that reports the close is stamped microseconds after the kernel
/// hashes the timewait socket, so one check may see the one before the other; a second
/// a second later cannot, even where a descheduled virtual CPU delays it.
const MISSED_CLOSE_AFTER_NS: u64 = 1_000_000_000;
/// Recent distinct failures kept for display (repeats are counted in their entry).
pub const MAX_FAILURES: usize = 64;

const NO_DEST: u32 = u32::MAX;
/// Owner id meaning "unknown".
const NO_OWNER: u32 = 0;
/// Baseline sockets have no kernel address yet; their keys have this bit set, which
/// kernel (0xffff...) addresses never combine with small counters.
const SYNTHETIC: u64 = 1 << 63;

/// A TCP 4-tuple; IPv4 addresses use the first four bytes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Tuple {
    pub v6: bool,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// An address as 16 bytes, IPv4 in the first four.
pub(crate) fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

impl Tuple {
    pub fn new(saddr: IpAddr, sport: u16, daddr: IpAddr, dport: u16) -> Self {
        Self {
            v6: saddr.is_ipv6(),
            saddr: ip_bytes(saddr),
            daddr: ip_bytes(daddr),
            sport,
            dport,
        }
    }

    fn of(e: &TraceEvent) -> Self {
        Self::new(e.saddr, e.sport, e.daddr, e.dport)
    }

    fn ip(&self, b: [u8; 16]) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    }

    pub fn saddr(&self) -> IpAddr {
        self.ip(self.saddr)
    }

    pub fn daddr(&self) -> IpAddr {
        self.ip(self.daddr)
    }

    /// Both ends known.
    fn complete(&self) -> bool {
        self.sport != 0 && self.dport != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TupleKey {
    netns: u32,
    tuple: Tuple,
}

/// An address as interned in [`Addrs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Addr {
    v6: bool,
    bytes: [u8; 16],
}

/// Interned addresses. Sockets hold 4-byte ids instead of two 16-byte addresses, which
/// halves a socket's entry; ids are reference-counted so the table follows the live
/// sockets (a server with many clients does not grow it forever).
#[derive(Default)]
struct Addrs {
    slots: Vec<(Addr, u32)>,
    index: FxHashMap<Addr, u32>,
    free: Vec<u32>,
}

impl Addrs {
    fn acquire(&mut self, a: Addr) -> u32 {
        if let Some(&id) = self.index.get(&a) {
            self.slots[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = (a, 1);
                id
            }
            None => {
                self.slots.push((a, 1));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(a, id);
        id
    }

    fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        slot.1 -= 1;
        if slot.1 == 0 {
            let a = slot.0;
            self.index.remove(&a);
            self.free.push(id);
        }
    }

    fn find(&self, a: &Addr) -> Option<u32> {
        self.index.get(a).copied()
    }

    fn get(&self, id: u32) -> Addr {
        self.slots[id as usize].0
    }
}

/// A 4-tuple with interned addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Quad {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

impl Quad {
    fn complete(&self) -> bool {
        self.sport != 0 && self.dport != 0
    }
}

/// A TIME_WAIT entry's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TwKey {
    netns: u32,
    quad: Quad,
}

/// In the TIME_WAIT filter a destination's source ports sit side by side.
impl maybe_set::Grouped for TwKey {
    type Group = (u32, u32, u32, u16);
    fn group(&self) -> Self::Group {
        (
            self.netns,
            self.quad.saddr,
            self.quad.daddr,
            self.quad.dport,
        )
    }
    fn index(&self) -> u16 {
        self.quad.sport
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct DestKey {
    netns: u32,
    v6: bool,
    saddr: [u8; 16],
    daddr: [u8; 16],
    dport: u16,
}

impl DestKey {
    fn of(netns: u32, t: &Tuple) -> Self {
        Self {
            netns,
            v6: t.v6,
            saddr: t.saddr,
            daddr: t.daddr,
            dport: t.dport,
        }
    }
}

/// A live full socket: 28 bytes, so a tracked socket costs well under 128 bytes with
/// the hash table's overhead (see the benchmark).
#[derive(Clone, Copy, Debug)]
struct Sock {
    netns: u32,
    quad: Quad,
    state: TcpState,
    /// Client side (connect()ed): counts toward its destination.
    active: bool,
    /// The local port came from bind(), not from the ephemeral allocator.
    explicit_bind: bool,
    owner: u32,
    dest: u32,
    /// When it left SYN_SENT, milliseconds of event time (wrapping; 0 = not seen),
    /// for its client's connection lifetime.
    born_ms: u32,
}
const _: () = assert!(size_of::<Sock>() == 32);

/// An address as text; IPv4 without `fmt` (a snapshot of 100k destinations formats
/// 200k of them, and `Ipv4Addr`'s `Display` was a fifth of it).
fn addr_string(a: IpAddr) -> String {
    let IpAddr::V4(v4) = a else {
        return a.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// Puts `v[order[0]]` first, `v[order[1]]` second, and so on, following each cycle of
/// the permutation with swaps: no second vector of the (large) entries.
fn permute_in_place<T>(v: &mut [T], mut order: Vec<usize>) {
    for start in 0..order.len() {
        // Along the cycle through `start`, each position takes the entry it wants from
        // the next one, which then holds `start`'s original; order[at] = at marks it.
        let mut at = start;
        loop {
            let next = order[at];
            order[at] = at;
            if next == start || next == at {
                break;
            }
            v.swap(at, next);
            at = next;
        }
    }
}

/// Where a destination ranks in a snapshot: most ports used first, then most
/// sockets, then by address (IPv4 first) and port.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct DestRank {
    used: Reverse<u32>,
    sockets: Reverse<u32>,
    v6: bool,
    daddr: [u8; 16],
    dport: u16,
    saddr: [u8; 16],
}

/// Of a destination's TIME_WAIT entries, those a new connect() may take over and those
/// still in FIN_WAIT2 (`Model::timewait_marks`).
#[derive(Clone, Copy, Debug, Default)]
struct TimeWaitMarks {
    reusable: u32,
    fin_wait2: u32,
}

/// A 4-tuple held after the full socket closed.
#[derive(Clone, Copy, Debug)]
struct TimeWait {
    expires_ns: u64,
    since_ns: u64,
    owner: u32,
    active: bool,
    explicit_bind: bool,
    /// The kernel's timewait socket was still in FIN_WAIT2 at the last drift check:
    /// its peer has not closed, and connect() may not take it over whatever
    /// `tcp_tw_reuse` says (`tcp_twsk_unique`).
    fin_wait2: bool,
    dest: u32,
}

#[derive(Clone, Debug)]
struct DestAgg {
    key: DestKey,
    /// Sockets (and TIME_WAIT entries) by TCP state number.
    states: [u32; 13],
    /// Of those, how many hold a port inside the ephemeral range.
    used: u32,
    /// Sockets per owner; few owners per destination, so a short list.
    owners: Vec<(u32, u32)>,
    rate: RateWindow,
    /// How each owner connects to it (at most [`MAX_CLIENTS`]).
    clients: Vec<(u32, Box<clients::ClientStats>)>,
}

/// Clients followed per destination; beyond, the least established is replaced.
const MAX_CLIENTS: usize = 16;

/// Whether `net.ipv4.tcp_tw_reuse` lets connect() take over TIME_WAIT ports of a
/// connection: 1 always, 2 (the default) loopback only
/// (<https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp_ipv4.c#L118>).
fn reuse_applies(tw_reuse: Option<u32>, loopback: bool) -> bool {
    matches!(tw_reuse, Some(1)) || (tw_reuse == Some(2) && loopback)
}

/// Whether a socket (or TIME_WAIT entry) in `state` is counted in the aggregates: a
/// client's, holding its port (not yet or no longer: CLOSE; a listener: LISTEN).
fn holds_counted_port(active: bool, state: TcpState) -> bool {
    active && state != TcpState::Close && state != TcpState::Listen
}

/// Milliseconds of event time, never 0 (0 means unknown in `Sock::born_ms`).
fn ms_of(ts_ns: u64) -> u32 {
    ((ts_ns / 1_000_000) as u32).max(1)
}

/// Puts `item` in a slot of `slots` listed in `free` (freed before), or in a new one;
/// its index.
fn into_free_slot<T>(slots: &mut Vec<T>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(i) => {
            slots[i as usize] = item;
            i
        }
        None => {
            slots.push(item);
            (slots.len() - 1) as u32
        }
    }
}

impl DestAgg {
    fn total(&self) -> u32 {
        self.states.iter().sum()
    }
}

#[derive(Clone, Debug)]
struct OwnerInfo {
    pid: u32,
    comm: Box<str>,
    cgroup_id: u64,
}

/// A namespace's port settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetnsConfig {
    pub name: Option<String>,
    pub port_range: (u16, u16),
    pub reserved: Vec<(u16, u16)>,
    /// TIME_WAIT-related settings, kept for whoever reads a recording later; the
    /// accounting itself needs only the range and reserved ports.
    #[serde(default)]
    pub tcp: TcpSysctls,
}

/// `net.ipv4.tcp_tw_reuse`, `tcp_fin_timeout`, `tcp_max_tw_buckets` (per namespace);
/// `None` where unreadable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpSysctls {
    pub tw_reuse: Option<u32>,
    pub fin_timeout: Option<u32>,
    pub max_tw_buckets: Option<u32>,
}

impl Default for NetnsConfig {
    fn default() -> Self {
        Self {
            name: None,
            port_range: DEFAULT_RANGE,
            reserved: Vec::new(),
            tcp: TcpSysctls::default(),
        }
    }
}

/// A socket known before the events that follow: from the start-up dump (sock_diag),
/// or from the model's own state written at the start of a recording.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaselineSocket {
    /// Kernel socket address when known (a state written by the model), 0 from a
    /// sock_diag dump: later events then find the socket by its 4-tuple.
    #[serde(default)]
    pub sock: u64,
    pub tuple: Tuple,
    pub state: TcpState,
    /// Owner found through /proc, if any.
    pub owner: Option<(u32, String, u64)>,
    /// TIME_WAIT (and timewait FIN_WAIT2): remaining lifetime.
    pub expires_ms: u32,
    /// The dump lists no inode: a timewait socket, or an orphan.
    pub orphan: bool,
}

impl BaselineSocket {
    /// Whether this is a client's socket, counted toward its destination: connecting
    /// or connected, from a port in the ephemeral range that no listener of the dump
    /// (`listening`) holds. Such a socket's own changes reach the model on every path;
    /// the others' (accepted connections above all) may not, see
    /// [`baseline_without_close`].
    pub fn is_client(&self, listening: &FxHashSet<u16>, config: &NetnsConfig) -> bool {
        let (lo, hi) = config.port_range;
        self.state != TcpState::Listen
            && !listening.contains(&self.tuple.sport)
            && self.tuple.sport != 0
            && capacity::is_ephemeral(self.tuple.sport, lo, hi, &config.reserved)
    }
}

/// The ports listened on in a dump.
pub fn listening_ports(sockets: &[BaselineSocket]) -> FxHashSet<u16> {
    sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.tuple.sport)
        .collect()
}

/// The full sockets of a start-up dump whose close the accounting path may never
/// send: those of accepted connections (it leaves their changes out, told by the
/// backlog they inherit, see `portx_common::accounting_leaves_out`) and any other
/// socket that is not a client's. The prober watches these in its drift check and
/// reports the ones the kernel no longer has ([`input::Input::BaselineGone`]).
pub fn baseline_without_close(sockets: &[BaselineSocket], config: &NetnsConfig) -> Vec<Tuple> {
    let listening = listening_ports(sockets);
    sockets
        .iter()
        .filter(|s| {
            !matches!(
                s.state,
                TcpState::Listen | TcpState::TimeWait | TcpState::Close
            ) && !s.orphan
                && s.tuple.complete()
                && !s.is_client(&listening, config)
        })
        .map(|s| s.tuple)
        .collect()
}

/// Which part of the model a snapshot shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    /// At most this many destinations per namespace (busiest first); 0 = all.
    pub max_destinations: usize,
    /// Only what a metrics scrape reads of most destinations (`serve`, which exports
    /// the top K of 100k): a destination no diagnosis rule can apply to has its
    /// address, `used`, `capacity`, `states` and `reusable`, but no owners, rate, ETA
    /// or steady state. Diagnoses are the same as in a full view.
    pub brief: bool,
}

#[derive(Default)]
pub struct Model {
    sockets: FxHashMap<u64, Sock>,
    /// Baseline sockets not yet named by an event, by 4-tuple.
    baseline: FxHashMap<TupleKey, u64>,
    /// Baseline listeners not yet named by an event, by address and port (several
    /// with SO_REUSEPORT). Their tuple is not a complete one, so `baseline` cannot
    /// hold them; their close (LISTEN -> CLOSE, on every path) finds them here.
    baseline_listeners: FxHashMap<TupleKey, Vec<u64>>,
    next_synthetic: u64,
    timewait: FxHashMap<TwKey, TimeWait>,
    /// Which keys `timewait` certainly lacks, without a look into it.
    timewait_maybe: maybe_set::MaybeSet,
    /// TIME_WAIT expiries in insertion order (all share one lifetime, so FIFO).
    tw_queue: VecDeque<(u64, TwKey)>,
    /// Timewait sockets the kernel freed lately (`TimewaitEnd`), while drift checks
    /// run: when, by a hash of namespace and 4-tuple. A dump that started before one
    /// went may still list it.
    tw_ends: RecentEnds,
    /// Live sockets (by namespace and 4-tuple: socket key, when first seen) whose
    /// 4-tuple the last drift check found as a timewait socket: their close may be on
    /// its way, or may never come (docs/missed-moves.md).
    tw_on_live: FxHashMap<(u32, Quad), (u64, u64)>,
    addrs: Addrs,
    dests: Vec<DestAgg>,
    dest_free: Vec<u32>,
    dest_index: FxHashMap<DestKey, u32>,
    /// Outgoing connections per (netns, owner).
    procs: FxHashMap<(u32, u32), u32>,
    owners: Vec<OwnerInfo>,
    owner_index: FxHashMap<u32, Vec<u32>>,
    /// Ids in `owners` that nothing refers to, for reuse (`forget_unreferenced_owners`).
    owner_free: Vec<u32>,
    /// Owners made since the last sweep, and how many the next one waits for.
    owners_made: usize,
    owner_sweep_after: usize,
    /// bind() of a fixed port seen before the socket's first state change.
    pending_binds: FxHashMap<u64, u16>,
    /// Owner of each listening (netns, port) seen going to LISTEN: accepted sockets
    /// are created in softirq, where the event names no one, and belong to it.
    listeners: FxHashMap<(u32, u16), u32>,
    netns: FxHashMap<u32, NetnsConfig>,
    failures: VecDeque<Failure>,
    now_ns: u64,
    drift: Drift,
    /// A hook reports each TIME_WAIT socket's end; the 60 s guess is only a backstop.
    exact_timewait: bool,
    /// Highest use per destination, when asked for ([`Model::track_peaks`]).
    peaks: peaks::Peaks,
}

impl Model {
    pub fn new() -> Self {
        let mut m = Self::default();
        // Owner id 0 is "unknown".
        m.owners.push(OwnerInfo {
            pid: 0,
            comm: "".into(),
            cgroup_id: 0,
        });
        m
    }

    /// With a hook on the kernel freeing timewait sockets, entries end when the kernel
    /// says so; expiry by time stays only as a backstop for missed events.
    pub fn set_exact_timewait(&mut self, exact: bool) {
        self.exact_timewait = exact;
    }

    fn timewait_lifetime_ns(&self) -> u64 {
        if self.exact_timewait {
            2 * TIME_WAIT_NS
        } else {
            TIME_WAIT_NS
        }
    }

    /// Live full sockets tracked (LISTEN included).
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    #[cfg(test)]
    fn owner_pid(&self, sock: u64) -> Option<u32> {
        self.sockets
            .get(&sock)
            .map(|s| self.owners[s.owner as usize].pid)
    }

    /// The newest failure, with the holder the model named when it happened.
    pub fn last_failure(&self) -> Option<&Failure> {
        self.failures.back()
    }

    /// 4-tuples held in TIME_WAIT.
    pub fn timewait_count(&self) -> usize {
        self.timewait.len()
    }

    pub fn destination_count(&self) -> usize {
        self.dest_index.len()
    }

    /// Latest time seen (event time or tick), boot-time nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn cfg(&self, netns: u32) -> (u16, u16, &[(u16, u16)]) {
        match self.netns.get(&netns) {
            Some(c) => (c.port_range.0, c.port_range.1, &c.reserved),
            None => (DEFAULT_RANGE.0, DEFAULT_RANGE.1, &[]),
        }
    }

    fn capacity(&self, netns: u32) -> u32 {
        let (lo, hi, reserved) = self.cfg(netns);
        capacity::capacity(lo, hi, reserved)
    }

    fn in_range(&self, netns: u32, port: u16) -> bool {
        let (lo, hi, reserved) = self.cfg(netns);
        port != 0 && capacity::is_ephemeral(port, lo, hi, reserved)
    }

    /// Sets (or updates) a namespace's settings. A changed range re-counts `used`.
    pub fn set_netns_config(&mut self, inode: u32, cfg: NetnsConfig) {
        let changed = self
            .netns
            .get(&inode)
            .is_none_or(|old| old.port_range != cfg.port_range || old.reserved != cfg.reserved);
        self.netns.insert(inode, cfg);
        if changed {
            self.recount_used(inode);
        }
    }

    fn recount_used(&mut self, netns: u32) {
        let mut used: FxHashMap<u32, u32> = FxHashMap::default();
        let held = self
            .sockets
            .values()
            .filter(|s| s.netns == netns && s.dest != NO_DEST && s.state != TcpState::Close)
            .map(|s| (s.dest, s.quad.sport, s.explicit_bind))
            .chain(
                self.timewait
                    .iter()
                    .filter(|(k, t)| k.netns == netns && t.dest != NO_DEST)
                    .map(|(k, t)| (t.dest, k.quad.sport, t.explicit_bind)),
            )
            .collect::<Vec<_>>();
        for (dest, sport, explicit) in held {
            if !explicit && self.in_range(netns, sport) {
                *used.entry(dest).or_default() += 1;
            }
        }
        for (i, d) in self.dests.iter_mut().enumerate() {
            if d.key.netns == netns {
                d.used = used.get(&(i as u32)).copied().unwrap_or(0);
            }
        }
    }

    fn intern_owner(&mut self, pid: u32, comm: &str, cgroup_id: u64) -> u32 {
        if pid == 0 {
            return NO_OWNER;
        }
        if let Some(ids) = self.owner_index.get(&pid)
            && let Some(&id) = ids
                .iter()
                .find(|&&id| &*self.owners[id as usize].comm == comm)
        {
            return id;
        }
        // Every caller has stored the ids it interned before (in a socket, a TIME_WAIT
        // entry, a listener), so a sweep here sees all that are referred to.
        self.owners_made += 1;
        if self.owner_free.is_empty() && self.owners_made >= self.owner_sweep_after.max(1024) {
            self.forget_unreferenced_owners();
        }
        let info = OwnerInfo {
            pid,
            comm: comm.into(),
            cgroup_id,
        };
        let id = into_free_slot(&mut self.owners, &mut self.owner_free, info);
        self.owner_index.entry(pid).or_default().push(id);
        id
    }

    /// Frees the owners nothing refers to any more: processes whose sockets and
    /// TIME_WAIT entries are all gone, and closers interned for an event that did not
    /// keep them. Without this, a host where short-lived processes connect (a cron
    /// job, `curl` in a loop) grows the table by one owner per process for as long as
    /// `top` or `serve` runs. The next sweep waits for as many new owners as are in
    /// use, and for a quarter of the sockets and TIME_WAIT entries it walks, so its
    /// cost per new owner is a few entries.
    fn forget_unreferenced_owners(&mut self) {
        let mut used = vec![false; self.owners.len()];
        let mut mark = |id: u32| {
            if let Some(u) = used.get_mut(id as usize) {
                *u = true;
            }
        };
        mark(NO_OWNER);
        self.sockets.values().for_each(|s| mark(s.owner));
        self.timewait.values().for_each(|t| mark(t.owner));
        self.listeners.values().for_each(|&o| mark(o));
        self.procs.keys().for_each(|&(_, o)| mark(o));
        for &i in self.dest_index.values() {
            let d = &self.dests[i as usize];
            d.owners.iter().for_each(|&(o, _)| mark(o));
            d.clients.iter().for_each(|(o, _)| mark(*o));
        }
        self.owner_free.clear();
        for (id, _) in used.iter().enumerate().filter(|(_, u)| !**u) {
            let info = &mut self.owners[id];
            if info.pid != 0 {
                if let Some(ids) = self.owner_index.get_mut(&info.pid) {
                    ids.retain(|&i| i as usize != id);
                    if ids.is_empty() {
                        self.owner_index.remove(&info.pid);
                    }
                }
                *info = OwnerInfo {
                    pid: 0,
                    comm: "".into(),
                    cgroup_id: 0,
                };
            }
            self.owner_free.push(id as u32);
        }
        // Lowest ids last, so they are reused first.
        self.owner_free.reverse();
        let live = self.owners.len() - self.owner_free.len();
        self.owners_made = 0;
        self.owner_sweep_after = live.max((self.sockets.len() + self.timewait.len()) / 4);
    }

    /// Owners interned and not freed (id 0, "unknown", included).
    #[cfg(test)]
    fn owner_count(&self) -> usize {
        self.owners.len() - self.owner_free.len()
    }

    fn dest_for(&mut self, netns: u32, tuple: &Tuple) -> u32 {
        if tuple.dport == 0 {
            return NO_DEST;
        }
        let key = DestKey::of(netns, tuple);
        if let Some(&i) = self.dest_index.get(&key) {
            return i;
        }
        let agg = DestAgg {
            key,
            states: [0; 13],
            used: 0,
            owners: Vec::new(),
            rate: RateWindow::default(),
            clients: Vec::new(),
        };
        let i = into_free_slot(&mut self.dests, &mut self.dest_free, agg);
        self.dest_index.insert(key, i);
        i
    }

    /// Adds (`sign` = 1) or removes (-1) one holder of a port to the aggregates.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per field of Sock/TimeWait"
    )]
    fn count(
        &mut self,
        netns: u32,
        dest: u32,
        state: TcpState,
        sport: u16,
        explicit_bind: bool,
        owner: u32,
        active: bool,
        sign: i32,
    ) {
        if !holds_counted_port(active, state) {
            return;
        }
        let used = !explicit_bind && self.in_range(netns, sport);
        if dest != NO_DEST {
            let d = &mut self.dests[dest as usize];
            let bump = |v: &mut u32| *v = v.saturating_add_signed(sign);
            bump(&mut d.states[state as usize]);
            if used {
                bump(&mut d.used);
            }
            match d.owners.iter_mut().position(|(o, _)| *o == owner) {
                Some(i) => {
                    bump(&mut d.owners[i].1);
                    if d.owners[i].1 == 0 {
                        d.owners.swap_remove(i);
                    }
                }
                None if sign > 0 => d.owners.push((owner, 1)),
                None => {}
            }
            if used && sign > 0 {
                self.note_used_increase(dest);
            }
            if state == TcpState::TimeWait
                && let Some(c) = self.client(dest, owner)
            {
                c.time_wait = c.time_wait.saturating_add_signed(sign);
            }
        }
        if owner != NO_OWNER {
            let c = self.procs.entry((netns, owner)).or_default();
            *c = c.saturating_add_signed(sign);
            if *c == 0 {
                self.procs.remove(&(netns, owner));
            }
        }
    }

    fn count_sock(&mut self, s: &Sock, sign: i32) {
        self.count(
            s.netns,
            s.dest,
            s.state,
            s.quad.sport,
            s.explicit_bind,
            s.owner,
            s.active,
            sign,
        );
    }

    /// Moves a socket's counts from `before` (None: not counted yet) to `after`. Most
    /// events only change a socket's state; then only the two state counts move, and
    /// the namespace, owner and range lookups of an uncount and a count are skipped
    /// (the same result: the other aggregates would go down and back up by one).
    fn recount(&mut self, before: Option<&Sock>, after: &Sock) {
        // TIME_WAIT also moves its client's count (`count`): not a plain shift.
        let counted = |s: &Sock| {
            holds_counted_port(s.active, s.state)
                && s.dest != NO_DEST
                && s.state != TcpState::TimeWait
        };
        match before {
            Some(b)
                if counted(b)
                    && counted(after)
                    && b.netns == after.netns
                    && b.dest == after.dest
                    && b.owner == after.owner
                    && b.explicit_bind == after.explicit_bind
                    && b.quad.sport == after.quad.sport =>
            {
                let d = &mut self.dests[after.dest as usize];
                d.states[b.state as usize] = d.states[b.state as usize].saturating_sub(1);
                d.states[after.state as usize] = d.states[after.state as usize].saturating_add(1);
            }
            Some(b) => {
                self.count_sock(b, -1);
                self.count_sock(after, 1);
            }
            None => self.count_sock(after, 1),
        }
    }

    fn count_tw(&mut self, k: &TwKey, t: &TimeWait, sign: i32) {
        self.count(
            k.netns,
            t.dest,
            TcpState::TimeWait,
            k.quad.sport,
            t.explicit_bind,
            t.owner,
            t.active,
            sign,
        );
    }

    fn addr(t: &Tuple, bytes: [u8; 16]) -> Addr {
        Addr { v6: t.v6, bytes }
    }

    fn quad_acquire(&mut self, t: &Tuple) -> Quad {
        Quad {
            saddr: self.addrs.acquire(Self::addr(t, t.saddr)),
            daddr: self.addrs.acquire(Self::addr(t, t.daddr)),
            sport: t.sport,
            dport: t.dport,
        }
    }

    fn quad_release(&mut self, q: Quad) {
        self.addrs.release(q.saddr);
        self.addrs.release(q.daddr);
    }

    /// The interned form of `t`, if both its addresses are interned.
    fn quad_find(&self, t: &Tuple) -> Option<Quad> {
        Some(Quad {
            saddr: self.addrs.find(&Self::addr(t, t.saddr))?,
            daddr: self.addrs.find(&Self::addr(t, t.daddr))?,
            sport: t.sport,
            dport: t.dport,
        })
    }

    fn tuple_of(&self, q: &Quad) -> Tuple {
        let (s, d) = (self.addrs.get(q.saddr), self.addrs.get(q.daddr));
        Tuple {
            v6: s.v6,
            saddr: s.bytes,
            daddr: d.bytes,
            sport: q.sport,
            dport: q.dport,
        }
    }

    /// Records that `tuple` is held in TIME_WAIT (replacing an entry for the same
    /// 4-tuple).
    fn insert_timewait(&mut self, netns: u32, tuple: &Tuple, mut tw: TimeWait) {
        let quad = self.quad_acquire(tuple);
        tw.dest = if tw.active {
            self.dest_for(netns, tuple)
        } else {
            NO_DEST
        };
        self.insert_timewait_quad(netns, quad, tw);
    }

    /// [`Self::insert_timewait`] with the 4-tuple interned (the entry takes over
    /// `quad`'s address references) and `tw.dest` set.
    fn insert_timewait_quad(&mut self, netns: u32, quad: Quad, tw: TimeWait) {
        let key = TwKey { netns, quad };
        // One lookup of the (large, cache-cold) table, whether it replaces or not.
        match self.timewait.insert(key, tw) {
            Some(old) => {
                self.count_tw(&key, &old, -1);
                // The old entry's references.
                self.quad_release(key.quad);
            }
            None => {
                self.timewait_maybe.added(&key);
                self.fit_timewait_filter();
            }
        }
        self.count_tw(&key, &tw, 1);
        self.tw_queue.push_back((tw.expires_ns, key));
    }

    /// Resizes the TIME_WAIT table's filter when its keys call for it (rarely: see
    /// `MaybeSet::wants_resize`), from the table's keys.
    fn fit_timewait_filter(&mut self) {
        if self.timewait_maybe.wants_resize() {
            self.timewait_maybe.rebuild(self.timewait.keys());
        }
    }

    fn remove_timewait(&mut self, key: &TwKey) -> bool {
        if !self.timewait_maybe.may_hold(key) {
            return false;
        }
        match self.timewait.remove(key) {
            Some(tw) => {
                self.timewait_maybe.removed(key);
                self.fit_timewait_filter();
                self.count_tw(key, &tw, -1);
                self.quad_release(key.quad);
                true
            }
            None => false,
        }
    }

    /// Advances model time: expires TIME_WAIT entries and idle destinations.
    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        while let Some(&(expires, key)) = self.tw_queue.front() {
            if expires > self.now_ns {
                break;
            }
            self.tw_queue.pop_front();
            // Skip queue entries of a TIME_WAIT that was replaced or refreshed since.
            if self
                .timewait
                .get(&key)
                .is_some_and(|t| t.expires_ns == expires)
            {
                self.remove_timewait(&key);
            }
        }
    }

    /// Drops destination rows with nothing held and no recent allocation.
    fn prune_dests(&mut self) {
        let now = self.now_ns;
        let idle: Vec<u32> = self
            .dest_index
            .values()
            .copied()
            .filter(|&i| {
                let d = &self.dests[i as usize];
                d.total() == 0 && d.rate.idle(now)
            })
            .collect();
        for i in idle {
            let key = self.dests[i as usize].key;
            self.dest_index.remove(&key);
            self.dest_free.push(i);
        }
        // Keep the queue from growing without bound when entries are refreshed.
        if self.tw_queue.len() > 2 * self.timewait.len() + 1024 {
            let live = &self.timewait;
            self.tw_queue
                .retain(|(e, k)| live.get(k).is_some_and(|t| t.expires_ns == *e));
        }
    }

    /// Feeds one event.
    pub fn apply(&mut self, e: &TraceEvent) {
        self.tick(e.ts_ns);
        match e.kind {
            Kind::State => self.on_state(e),
            // The allocation is counted at the socket's own transition out of
            // SYN_SENT (`on_state`), which both paths report; the accounting path
            // does not send these.
            Kind::Connect => {}
            Kind::Bind => {
                if e.sport != 0 && e.sock != 0 {
                    match self.sockets.get_mut(&e.sock) {
                        Some(s) => s.explicit_bind = true,
                        None => {
                            // Bounded: binds whose socket never changes state (UDP-like
                            // use, failed listen) must not accumulate.
                            if self.pending_binds.len() > 65536 {
                                self.pending_binds.clear();
                            }
                            self.pending_binds.insert(e.sock, e.sport);
                        }
                    }
                }
            }
            Kind::ConnectError | Kind::BindError => self.on_failure(e),
            Kind::TimewaitEnd => {
                // The kernel freed it: its real expiry, or an early reuse.
                let tuple = Tuple::of(e);
                if self.drift.checks > 0 {
                    self.tw_ends.ended(e.netns, &tuple, e.ts_ns);
                }
                if let Some(quad) = self.quad_find(&tuple) {
                    self.remove_timewait(&TwKey {
                        netns: e.netns,
                        quad,
                    });
                }
            }
        }
    }

    fn on_state(&mut self, e: &TraceEvent) {
        let (Some(old), Some(new)) = (e.old_state, e.new_state) else {
            return;
        };
        if e.sock == 0 {
            return;
        }
        let tuple = Tuple::of(e);
        let listener = (e.netns, tuple.sport);
        let mut owner = self.intern_owner(e.pid, &e.comm, e.cgroup_id);
        // Who takes the socket: the task that connects or listens (this also replaces
        // a stale owner left by a freed socket at the same address), the listener for
        // an accepted socket. Other transitions only fill in an unknown owner: a close
        // names the closer, which may not be the owner.
        let claims = match (old, new) {
            (_, TcpState::SynSent | TcpState::Listen) => true,
            (TcpState::Listen, TcpState::SynRecv) => {
                if let Some(&o) = self.listeners.get(&listener) {
                    owner = o;
                }
                true
            }
            _ => false,
        };
        if old == TcpState::Listen && new == TcpState::Close {
            self.listeners.remove(&listener);
        }
        let key = e.sock;
        let mut existing = self.sockets.get(&key).copied();
        if existing.is_some() && old == TcpState::Close {
            // A new socket's first move, at the address of one still held: the kernel
            // freed that one, and its close (and any move into TIME_WAIT) never came.
            self.drift.closes_missed += 1;
        }
        if existing.is_none() {
            // A socket from the baseline, named by an event for the first time: by its
            // 4-tuple, or a listener (no peer, so no complete tuple) by address and
            // port as it closes.
            let tkey = TupleKey {
                netns: e.netns,
                tuple,
            };
            let synthetic = if tuple.complete() && !self.baseline.is_empty() {
                self.baseline.remove(&tkey)
            } else if old == TcpState::Listen && !self.baseline_listeners.is_empty() {
                self.take_baseline_listener(&tkey)
            } else {
                None
            };
            if let Some(s) = synthetic.and_then(|id| self.sockets.remove(&id)) {
                self.sockets.insert(key, s);
                existing = Some(s);
            }
        }
        // The socket as counted before this event: uncounted at the end, in one step
        // with counting it again when only its state moved (`recount`).
        let mut s = match existing {
            Some(s) => s,
            None => {
                if new == TcpState::Close {
                    // Never seen alive; an active close still leaves a TIME_WAIT.
                    if matches!(old, TcpState::FinWait2 | TcpState::Closing) && tuple.complete() {
                        let active = self.in_range(e.netns, tuple.sport);
                        self.insert_timewait(
                            e.netns,
                            &tuple,
                            TimeWait {
                                expires_ns: e.ts_ns + self.timewait_lifetime_ns(),
                                since_ns: e.ts_ns,
                                owner,
                                active,
                                explicit_bind: false,
                                fin_wait2: false,
                                dest: NO_DEST,
                            },
                        );
                    }
                    return;
                }
                // Client side if it is connecting, or (mid-life, unknown) if its local
                // port looks ephemeral; accepted children and listeners are not. A
                // socket first seen leaving SYN_RECV is a child whose clone the
                // accounting path left out: one of a listener with backlog 0, which
                // the kernel's test for an accepted socket (its inherited backlog)
                // misses (`portx_common::accounting_leaves_out`). It takes the
                // listener's owner, as at LISTEN -> SYN_RECV.
                let active = match (old, new) {
                    (_, TcpState::SynSent) => true,
                    (TcpState::Listen | TcpState::SynRecv, _) | (_, TcpState::Listen) => false,
                    _ => self.in_range(e.netns, tuple.sport),
                };
                let owner = match self.listeners.get(&listener) {
                    Some(&o) if old == TcpState::SynRecv && owner == NO_OWNER => o,
                    _ => owner,
                };
                let explicit_bind = self.pending_binds.remove(&key).is_some();
                Sock {
                    netns: e.netns,
                    quad: self.quad_acquire(&tuple),
                    state: old,
                    active,
                    explicit_bind,
                    owner,
                    dest: NO_DEST,
                    born_ms: 0,
                }
            }
        };
        if new == TcpState::Close {
            if let Some(before) = existing {
                self.count_sock(&before, -1);
            }
            self.follow_client(&mut s, old, new, e.ts_ns);
            self.sockets.remove(&key);
            // FIN_WAIT2 -> CLOSE and CLOSING -> CLOSE hand the 4-tuple to a timewait
            // socket (tcp_time_wait); other closes (RST, failed connect, LAST_ACK)
            // release it.
            if matches!(old, TcpState::FinWait2 | TcpState::Closing) {
                let full = if tuple.complete() {
                    tuple
                } else {
                    self.tuple_of(&s.quad)
                };
                if full.complete() {
                    let expires_ns = e.ts_ns + self.timewait_lifetime_ns();
                    self.hand_to_timewait(&s, &full, expires_ns, e.ts_ns, false);
                    return;
                }
            }
            self.quad_release(s.quad);
            return;
        }
        if owner != NO_OWNER && (claims || s.owner == NO_OWNER) {
            s.owner = owner;
        }
        if new == TcpState::Listen && s.owner != NO_OWNER {
            // Bounded like pending_binds: listeners whose close was never seen.
            if self.listeners.len() > 65536 {
                self.listeners.clear();
            }
            self.listeners.insert(listener, s.owner);
        }
        s.state = new;
        // The kernel fills in the tuple as the socket progresses (sport is 0 at
        // CLOSE->SYN_SENT); keep the most complete view.
        let mut moved = s.dest == NO_DEST;
        if tuple.sport != 0 || s.quad.sport == 0 {
            let was_complete = s.quad.complete();
            let (sa, da) = (self.addrs.get(s.quad.saddr), self.addrs.get(s.quad.daddr));
            if sa.bytes != tuple.saddr || da.bytes != tuple.daddr || sa.v6 != tuple.v6 {
                let q = self.quad_acquire(&tuple);
                self.quad_release(s.quad);
                s.quad = q;
                moved = true;
            }
            moved |= s.quad.dport != tuple.dport;
            s.quad.sport = tuple.sport;
            s.quad.dport = tuple.dport;
            if !was_complete && tuple.complete() {
                self.drop_baseline_twin(s.netns, &tuple);
            }
        }
        if !s.active {
            s.dest = NO_DEST;
        } else if moved {
            s.dest = self.dest_for(s.netns, &self.tuple_of(&s.quad));
        }
        if old == TcpState::SynSent && s.quad.complete() {
            // A new connection on a 4-tuple still in TIME_WAIT: tcp_tw_reuse let the
            // kernel free it early.
            self.remove_timewait(&TwKey {
                netns: s.netns,
                quad: s.quad,
            });
        }
        self.follow_client(&mut s, old, new, e.ts_ns);
        self.recount(existing.as_ref(), &s);
        if e.allocated_port() {
            self.on_allocation(&s, e.ts_ns);
        }
        self.sockets.insert(key, s);
    }

    /// One of the baseline listeners at `key` (several with SO_REUSEPORT), no longer
    /// listed.
    fn take_baseline_listener(&mut self, key: &TupleKey) -> Option<u64> {
        let ids = self.baseline_listeners.get_mut(key)?;
        let id = ids.pop();
        if ids.is_empty() {
            self.baseline_listeners.remove(key);
        }
        id
    }

    /// A socket first seen through buffered events (created while the baseline was
    /// taken) may also be in the baseline under its 4-tuple: the event-tracked one wins.
    fn drop_baseline_twin(&mut self, netns: u32, tuple: &Tuple) {
        if let Some(id) = self.baseline.remove(&TupleKey {
            netns,
            tuple: *tuple,
        }) && let Some(twin) = self.sockets.remove(&id)
        {
            self.count_sock(&twin, -1);
            self.quad_release(twin.quad);
        }
    }

    /// A client socket got its source port and an answer
    /// ([`TraceEvent::allocated_port`]): count the allocation toward its destination's
    /// rate and its client. A port the socket bound itself is not an allocation.
    fn on_allocation(&mut self, s: &Sock, ts_ns: u64) {
        if !s.active || s.explicit_bind || s.quad.sport == 0 || s.dest == NO_DEST {
            return;
        }
        let d = &mut self.dests[s.dest as usize];
        let level = d.used;
        d.rate.record(ts_ns, level);
        if let Some(c) = self.client(s.dest, s.owner) {
            c.open(ts_ns);
        }
    }

    /// The stats of `owner` toward `dest`, made on first use.
    fn client(&mut self, dest: u32, owner: u32) -> Option<&mut clients::ClientStats> {
        if dest == NO_DEST || owner == NO_OWNER {
            return None;
        }
        let list = &mut self.dests[dest as usize].clients;
        let i = match list.iter().position(|(o, _)| *o == owner) {
            Some(i) => i,
            None if list.len() < MAX_CLIENTS => {
                list.push((owner, Box::default()));
                list.len() - 1
            }
            None => {
                let (i, _) = list
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, c))| c.established)?;
                list[i] = (owner, Box::default());
                i
            }
        };
        Some(&mut list[i].1)
    }

    /// Closed socket `s` hands its 4-tuple `full` to a timewait socket (tcp_time_wait)
    /// that ends at `expires_ns`.
    fn hand_to_timewait(
        &mut self,
        s: &Sock,
        full: &Tuple,
        expires_ns: u64,
        since_ns: u64,
        fin_wait2: bool,
    ) {
        let mut tw = TimeWait {
            expires_ns,
            since_ns,
            owner: s.owner,
            active: s.active,
            explicit_bind: s.explicit_bind,
            fin_wait2,
            dest: NO_DEST,
        };
        if self.tuple_of(&s.quad) == *full && (!s.active || s.dest != NO_DEST) {
            // The usual case: the timewait socket takes over this one's interned
            // addresses and destination row.
            tw.dest = s.dest;
            self.insert_timewait_quad(s.netns, s.quad, tw);
        } else {
            self.insert_timewait(s.netns, full, tw);
            self.quad_release(s.quad);
        }
    }

    /// A client connection's life: established out of SYN_SENT, and its first close
    /// (by the client: FIN_WAIT1; by the server: CLOSE_WAIT; a reset: CLOSE).
    fn follow_client(&mut self, s: &mut Sock, old: TcpState, new: TcpState, ts_ns: u64) {
        if !s.active {
            return;
        }
        if old == TcpState::SynSent && new == TcpState::Established {
            s.born_ms = ms_of(ts_ns);
            if let Some(c) = self.client(s.dest, s.owner) {
                c.established_by(ts_ns, 1);
            }
        } else if old == TcpState::Established && s.born_ms != 0 {
            let life_ns = u64::from(ms_of(ts_ns).wrapping_sub(s.born_ms)) * 1_000_000;
            s.born_ms = 0;
            if let Some(c) = self.client(s.dest, s.owner) {
                c.established_by(ts_ns, -1);
                match new {
                    TcpState::FinWait1 => c.closed(ts_ns, life_ns, true),
                    TcpState::CloseWait => c.closed(ts_ns, life_ns, false),
                    _ => {}
                }
            }
        }
    }

    fn owner_of(&self, id: u32) -> &OwnerInfo {
        &self.owners[id as usize]
    }

    fn holder(
        &self,
        netns: u32,
        tuple: &Tuple,
        state: TcpState,
        owner: u32,
        ephemeral: bool,
    ) -> Holder {
        let o = self.owner_of(owner);
        Holder {
            pid: o.pid,
            comm: o.comm.to_string(),
            saddr: tuple.saddr().to_string(),
            sport: tuple.sport,
            daddr: tuple.daddr().to_string(),
            dport: tuple.dport,
            state: state.name().to_owned(),
            ephemeral: ephemeral && self.in_range(netns, tuple.sport),
            cgroup_id: o.cgroup_id,
            workload: None,
        }
    }

    /// Who holds local `port` in `netns`: a listener first, then a live socket, then
    /// a TIME_WAIT. A scan, but only on failures.
    fn port_holder(&self, netns: u32, port: u16) -> Option<Holder> {
        let live = |want_listen: bool| {
            self.sockets
                .values()
                .filter(|s| s.netns == netns && s.quad.sport == port)
                .find(|s| (s.state == TcpState::Listen) == want_listen)
                .map(|s| {
                    self.holder(
                        netns,
                        &self.tuple_of(&s.quad),
                        s.state,
                        s.owner,
                        s.active && !s.explicit_bind,
                    )
                })
        };
        live(true).or_else(|| live(false)).or_else(|| {
            self.timewait
                .iter()
                .find(|(k, _)| k.netns == netns && k.quad.sport == port)
                .map(|(k, t)| {
                    self.holder(
                        netns,
                        &self.tuple_of(&k.quad),
                        TcpState::TimeWait,
                        t.owner,
                        t.active && !t.explicit_bind,
                    )
                })
        })
    }

    /// The busiest destination matching `daddr:dport` in `netns` (any source address).
    fn busiest_dest(&self, netns: u32, daddr: IpAddr, dport: u16) -> Option<&DestAgg> {
        let want = ip_bytes(daddr);
        self.dest_index
            .iter()
            .filter(|(k, _)| k.netns == netns && k.daddr == want && k.dport == dport)
            .map(|(_, &i)| &self.dests[i as usize])
            .max_by_key(|d| d.used)
    }

    fn explain(&self, e: &TraceEvent, holder: Option<&Holder>) -> String {
        let (lo, hi, _) = self.cfg(e.netns);
        let error = e.error_name().unwrap_or("error");
        let call = if e.kind == Kind::ConnectError {
            "connect"
        } else {
            "bind"
        };
        match (error, holder) {
            ("EADDRNOTAVAIL", _) if e.kind == Kind::ConnectError => {
                let dest = self.busiest_dest(e.netns, e.daddr, e.dport);
                let (used, tw) =
                    dest.map_or((0, 0), |d| (d.used, d.states[TcpState::TimeWait as usize]));
                let who = holder.map_or(String::new(), |h| {
                    format!(", most by {}({})", h.comm, h.pid)
                });
                format!(
                    "no free source port toward {}: {used} of {} ports of ip_local_port_range {lo}-{hi} in use ({tw} in TIME_WAIT){who}",
                    endpoint(e.daddr, e.dport),
                    self.capacity(e.netns),
                )
            }
            ("EADDRINUSE", Some(h)) if h.ephemeral => format!(
                "port {} is inside ip_local_port_range {lo}-{hi} and {}({}) holds it as the ephemeral source port of a connection to {} ({}): reserve it (net.ipv4.ip_local_reserved_ports={}) or move the range",
                e.sport,
                h.comm,
                h.pid,
                endpoint(h.daddr.parse().unwrap_or(e.daddr), h.dport),
                h.state,
                e.sport
            ),
            ("EADDRINUSE", Some(h)) => format!(
                "port {} is already held by {}({}) in state {}",
                e.sport, h.comm, h.pid, h.state
            ),
            ("EADDRINUSE", None) => format!(
                "port {} is in use; its holder was not seen by portx (not TCP, or from before the baseline)",
                e.sport
            ),
            _ => format!(
                "{call}() to {} failed with {error}",
                endpoint(
                    if e.kind == Kind::ConnectError {
                        e.daddr
                    } else {
                        e.saddr
                    },
                    if e.kind == Kind::ConnectError {
                        e.dport
                    } else {
                        e.sport
                    }
                )
            ),
        }
    }

    fn on_failure(&mut self, e: &TraceEvent) {
        let holder = match (e.kind, e.errno.map(|n| n as i32)) {
            (Kind::BindError, Some(libc::EADDRINUSE)) => self.port_holder(e.netns, e.sport),
            (Kind::ConnectError, Some(libc::EADDRNOTAVAIL)) => self
                .busiest_dest(e.netns, e.daddr, e.dport)
                .and_then(|d| d.owners.iter().max_by_key(|(_, n)| *n))
                .and_then(|&(owner, _)| {
                    // A representative socket of the top owner toward that destination.
                    let want = self.addrs.find(&Addr {
                        v6: e.daddr.is_ipv6(),
                        bytes: ip_bytes(e.daddr),
                    })?;
                    self.sockets
                        .values()
                        .find(|s| {
                            s.netns == e.netns
                                && s.owner == owner
                                && s.active
                                && s.quad.daddr == want
                                && s.quad.dport == e.dport
                        })
                        .map(|s| {
                            let t = self.tuple_of(&s.quad);
                            self.holder(e.netns, &t, s.state, s.owner, !s.explicit_bind)
                        })
                }),
            _ => None,
        };
        let explanation = self.explain(e, holder.as_ref());
        let event = JsonEvent::from(e);
        // A repeat is counted in its entry, moved to newest: a retry loop would
        // otherwise fill the ring and push every other failure out.
        let (count, first_ts_ns, last_ts_ns) = match self
            .failures
            .iter()
            .position(|f| same_failure(&f.event, &event))
        {
            Some(i) => {
                let old = self.failures.remove(i).expect("position is in the ring");
                (
                    old.count + 1,
                    old.first_ts_ns.min(e.ts_ns),
                    old.last_ts_ns.max(e.ts_ns),
                )
            }
            None => {
                if self.failures.len() == MAX_FAILURES {
                    self.failures.pop_front();
                }
                (1, e.ts_ns, e.ts_ns)
            }
        };
        self.failures.push_back(Failure {
            event,
            holder,
            explanation,
            count,
            first_ts_ns,
            last_ts_ns,
        });
    }

    /// Loads a namespace's start-up dump. Apply the events buffered since attaching
    /// afterwards: they name baseline sockets by 4-tuple and supersede them.
    pub fn load_baseline(&mut self, netns: u32, sockets: &[BaselineSocket], now_ns: u64) {
        self.tick(now_ns);
        let listening = listening_ports(sockets);
        let config = self.netns.get(&netns).cloned().unwrap_or_default();
        // A namespace found after start-up is dumped while its events keep coming:
        // sockets those events already made are in the dump too, and count once.
        let known: rustc_hash::FxHashSet<Tuple> = self
            .sockets
            .values()
            .filter(|s| s.netns == netns && s.state != TcpState::Close)
            .map(|s| self.tuple_of(&s.quad))
            .collect();
        for b in sockets {
            if b.state != TcpState::TimeWait && known.contains(&b.tuple) {
                continue;
            }
            let owner = match &b.owner {
                Some((pid, comm, cg)) => self.intern_owner(*pid, comm, *cg),
                None => NO_OWNER,
            };
            let active = b.is_client(&listening, &config);
            let key = TupleKey {
                netns,
                tuple: b.tuple,
            };
            // timewait sockets (TIME_WAIT, and FIN_WAIT2 after an orphaned close) die
            // without any tracepoint: keep them with their own expiry.
            if b.state == TcpState::TimeWait || (b.orphan && b.state == TcpState::FinWait2) {
                self.insert_timewait(
                    netns,
                    &b.tuple,
                    TimeWait {
                        expires_ns: now_ns + u64::from(b.expires_ms) * 1_000_000,
                        // Its age from what is left of its 60 s (tcp_tw_reuse takes
                        // ports over a second old).
                        since_ns: now_ns.saturating_sub(
                            TIME_WAIT_NS.saturating_sub(u64::from(b.expires_ms) * 1_000_000),
                        ),
                        owner,
                        active,
                        explicit_bind: false,
                        fin_wait2: false,
                        dest: NO_DEST,
                    },
                );
                continue;
            }
            if self.baseline.contains_key(&key)
                || (b.sock != 0 && self.sockets.contains_key(&b.sock))
            {
                continue;
            }
            // A state the model wrote names its sockets: later events find them by
            // address, as they would have live.
            let id = if b.sock != 0 {
                b.sock
            } else {
                self.next_synthetic += 1;
                SYNTHETIC | self.next_synthetic
            };
            if b.state == TcpState::Listen && owner != NO_OWNER {
                self.listeners.insert((netns, b.tuple.sport), owner);
            }
            let mut s = Sock {
                netns,
                quad: self.quad_acquire(&b.tuple),
                state: b.state,
                active,
                explicit_bind: false,
                owner,
                dest: NO_DEST,
                born_ms: 0,
            };
            if active {
                s.dest = self.dest_for(netns, &b.tuple);
            }
            self.count_sock(&s, 1);
            self.sockets.insert(id, s);
            if b.sock == 0 && b.tuple.complete() {
                self.baseline.insert(key, id);
            } else if b.sock == 0 && b.state == TcpState::Listen {
                self.baseline_listeners.entry(key).or_default().push(id);
            }
        }
    }

    /// Forgets the baseline sockets of `netns` that the kernel no longer has (the
    /// drift check's finding, [`input::Input::BaselineGone`]). On the accounting path
    /// an accepted connection sends no close, so one that was open at start-up would
    /// otherwise stay in the model for good. A socket that an event has named since is
    /// no longer a baseline one and is left to its events. Returns how many went.
    pub fn forget_baseline(&mut self, netns: u32, gone: &[Tuple]) -> u64 {
        let mut forgotten = 0;
        for &tuple in gone {
            if let Some(id) = self.baseline.remove(&TupleKey { netns, tuple })
                && let Some(s) = self.sockets.remove(&id)
            {
                self.count_sock(&s, -1);
                self.quad_release(s.quad);
                forgotten += 1;
            }
        }
        self.drift.baseline_gone += forgotten;
        forgotten
    }

    /// Forgets a namespace that is gone: the prober found no process in it and no
    /// `ip netns` name for it, and let go of its handles (which kept it alive). Its
    /// settings, sockets and TIME_WAIT entries go with it (the kernel purges a dead
    /// namespace's TIME_WAIT sockets without an event), so a host that runs containers
    /// does not list every one it ever ran. Should it be in use after all (a process
    /// enters it), its next event makes the prober send a fresh baseline.
    pub fn forget_netns(&mut self, netns: u32) {
        self.netns.remove(&netns);
        let socks: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, s)| s.netns == netns)
            .map(|(&k, _)| k)
            .collect();
        for k in socks {
            if let Some(s) = self.sockets.remove(&k) {
                self.count_sock(&s, -1);
                self.quad_release(s.quad);
            }
        }
        let tws: Vec<TwKey> = self
            .timewait
            .keys()
            .filter(|k| k.netns == netns)
            .copied()
            .collect();
        for k in &tws {
            self.remove_timewait(k);
        }
        self.baseline.retain(|k, _| k.netns != netns);
        self.baseline_listeners.retain(|k, _| k.netns != netns);
        self.tw_on_live.retain(|(n, _), _| *n != netns);
        self.listeners.retain(|&(ns, _), _| ns != netns);
        // Its destination rows, empty now, go at once (a prune waits for their rate
        // window to go idle).
        let rows: Vec<(DestKey, u32)> = self
            .dest_index
            .iter()
            .filter(|(k, _)| k.netns == netns)
            .map(|(k, &i)| (*k, i))
            .collect();
        for (key, i) in rows {
            if self.dests[i as usize].total() == 0 {
                self.dest_index.remove(&key);
                self.dest_free.push(i);
            }
        }
    }

    /// Who holds ports toward a destination, most first.
    fn dest_owners(&self, d: &DestAgg) -> Vec<OwnerPorts> {
        self.dest_owners_by_id(d)
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    /// [`Self::dest_owners`], each with its owner id.
    fn dest_owners_by_id(&self, d: &DestAgg) -> Vec<(u32, OwnerPorts)> {
        let mut owners: Vec<(u32, OwnerPorts)> = d
            .owners
            .iter()
            .map(|&(o, n)| {
                let info = &self.owners[o as usize];
                let ports = OwnerPorts {
                    pid: info.pid,
                    comm: info.comm.to_string(),
                    ports: n,
                    cgroup_id: info.cgroup_id,
                    workload: None,
                    client: None,
                };
                (o, ports)
            })
            .collect();
        owners.sort_by(|(_, a), (_, b)| b.ports.cmp(&a.ports).then(a.pid.cmp(&b.pid)));
        owners
    }

    /// Namespaces the model knows (settings or sockets), ascending.
    pub fn netns_inodes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .netns
            .keys()
            .copied()
            .chain(self.sockets.values().map(|s| s.netns))
            .chain(self.timewait.keys().map(|k| k.netns))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The model's state of one namespace now, as a baseline a fresh model can load
    /// ([`Model::load_state`]) to know what was already held: live sockets with their
    /// owners and kernel addresses, and TIME_WAIT entries with their remaining time.
    /// Written at the start of every recording file, so each file stands alone.
    pub fn export_state(&self, netns: u32) -> input::NetnsState {
        let owner = |id: u32| {
            let o = &self.owners[id as usize];
            (id != NO_OWNER).then(|| (o.pid, o.comm.to_string(), o.cgroup_id))
        };
        let mut sockets: Vec<BaselineSocket> = self
            .sockets
            .iter()
            .filter(|(_, s)| s.netns == netns && s.state != TcpState::Close)
            .map(|(&id, s)| BaselineSocket {
                // Synthetic keys are the model's own: a reader matches those by tuple.
                sock: if id & SYNTHETIC != 0 { 0 } else { id },
                tuple: self.tuple_of(&s.quad),
                state: s.state,
                owner: owner(s.owner),
                expires_ms: 0,
                orphan: false,
            })
            .collect();
        sockets.extend(
            self.timewait
                .iter()
                .filter(|(k, _)| k.netns == netns)
                .map(|(k, t)| BaselineSocket {
                    sock: 0,
                    tuple: self.tuple_of(&k.quad),
                    state: TcpState::TimeWait,
                    owner: owner(t.owner),
                    expires_ms: (t.expires_ns.saturating_sub(self.now_ns) / 1_000_000)
                        .min(u64::from(u32::MAX)) as u32,
                    orphan: true,
                }),
        );
        input::NetnsState {
            netns,
            config: self.netns.get(&netns).cloned().unwrap_or_default(),
            at_ns: self.now_ns,
            sockets,
        }
    }

    /// Compares the model's TIME_WAIT entries in `netns` with the kernel's (a sock_diag
    /// dump that started at `dump_started_ns`) and corrects the model. Entries the model
    /// created after the dump started are left alone. Each entry the dump lists is
    /// marked as in FIN_WAIT2 or not (`fin_wait2`, those of `kernel` the kernel still
    /// has in FIN_WAIT2: a FIN from the peer moves one on to TIME_WAIT without any
    /// event, and until then connect() may not take it over whatever `tcp_tw_reuse`
    /// says). A timewait socket on a 4-tuple the model holds as a live socket is not
    /// added (see below). Returns (added, removed).
    /// https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp_ipv4.c (tcp_twsk_unique)
    pub fn reconcile_timewait(
        &mut self,
        netns: u32,
        kernel: &[(Tuple, u32)],
        dump_started_ns: u64,
        fin_wait2: &[Tuple],
    ) -> (u64, u64) {
        let in_fin_wait2: rustc_hash::FxHashSet<&Tuple> = fin_wait2.iter().collect();
        // Kernel tuples whose addresses are not interned match no model entry.
        let in_kernel: rustc_hash::FxHashSet<Quad> = kernel
            .iter()
            .filter_map(|(t, _)| self.quad_find(t))
            .collect();
        let stale: Vec<TwKey> = self
            .timewait
            .iter()
            .filter(|(k, t)| {
                k.netns == netns && t.since_ns < dump_started_ns && !in_kernel.contains(&k.quad)
            })
            .map(|(k, _)| *k)
            .collect();
        let removed = stale.len() as u64;
        for k in &stale {
            self.remove_timewait(k);
        }
        let mut added = 0;
        let mut queued = false;
        // Built when first needed: most checks find every entry known.
        let mut live: Option<FxHashMap<Quad, u64>> = None;
        // Live sockets whose 4-tuple this dump lists as a timewait socket, and those
        // of them whose close has not come in over a second: it never will.
        let mut on_live: FxHashMap<(u32, Quad), (u64, u64)> = FxHashMap::default();
        let mut missed: Vec<(u64, Tuple, u64, bool)> = Vec::new();
        for (tuple, expires_ms) in kernel {
            let expires_ns = dump_started_ns + u64::from(*expires_ms) * 1_000_000;
            let fin_wait2 = in_fin_wait2.contains(tuple);
            let quad = self.quad_find(tuple);
            let key = quad.map(|quad| TwKey { netns, quad });
            match key.and_then(|k| self.timewait.get_mut(&k).map(|t| (k, t))) {
                // Known: take the kernel's expiry where the model's is off (a baseline's
                // estimate, a FIN_WAIT2 timeout). Not for the few milliseconds every
                // dump differs by (its own length, jiffies): each refresh queues the
                // entry again, and a check of 100k entries every few milliseconds
                // would grow the queue faster than entries expire.
                Some((key, t)) => {
                    t.fin_wait2 = fin_wait2;
                    if t.expires_ns.abs_diff(expires_ns) > EXPIRY_SLACK_NS {
                        t.expires_ns = expires_ns;
                        self.tw_queue.push_back((expires_ns, key));
                        queued = true;
                    }
                }
                // The kernel freed it after the dump began: the events are right.
                None if self.tw_ends.since(netns, tuple, dump_started_ns) => {}
                // Past its expiry (the kernel says 0 left), the model's gone already:
                // the timer wheel frees a 60 s timewait socket up to a bucket late
                // (512 jiffies, 2 s at HZ=250), and every check in that window would
                // add it back for a moment, so that `added` grew with every socket.
                // https://elixir.bootlin.com/linux/v6.12/source/kernel/time/timer.c (calc_wheel_index)
                None if *expires_ms == 0 => {}
                None => {
                    // The kernel never holds a live socket and a timewait one on one
                    // 4-tuple, so where the model holds a live one the dump saw either
                    // - its own timewait socket: tcp_time_wait hashes it in the live
                    //   socket's place before tcp_done reports the move to CLOSE, so a
                    //   dump can list it before that event is stamped, and the event
                    //   makes the entry;
                    // - an earlier connection's, which this one took over
                    //   (tcp_tw_reuse) after the dump read it and before it ended.
                    // Added, the port would count twice. Listed again by a dump that
                    // began over a second after the first, though, the close never
                    // reached portx: the socket is closed into this timewait socket.
                    // https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp_minisocks.c (tcp_time_wait)
                    if let Some(q) = quad
                        && let Some(&sock) =
                            live.get_or_insert_with(|| self.live_quads(netns)).get(&q)
                    {
                        let first_ns = match self.tw_on_live.get(&(netns, q)) {
                            Some(&(k, first_ns)) if k == sock => first_ns,
                            _ => dump_started_ns,
                        };
                        if first_ns + MISSED_CLOSE_AFTER_NS <= dump_started_ns {
                            missed.push((sock, *tuple, expires_ns, fin_wait2));
                        } else {
                            on_live.insert((netns, q), (sock, first_ns));
                        }
                        continue;
                    }
                    added += 1;
                    let active = self.in_range(netns, tuple.sport);
                    self.insert_timewait(
                        netns,
                        tuple,
                        TimeWait {
                            expires_ns,
                            since_ns: dump_started_ns,
                            owner: NO_OWNER,
                            active,
                            explicit_bind: false,
                            fin_wait2,
                            dest: NO_DEST,
                        },
                    );
                }
            }
        }
        self.tw_on_live.retain(|(n, _), _| *n != netns);
        self.tw_on_live.extend(on_live);
        for (key, tuple, expires_ns, fin_wait2) in missed {
            let Some(mut s) = self.sockets.remove(&key) else {
                continue;
            };
            self.count_sock(&s, -1);
            let state = s.state;
            self.follow_client(&mut s, state, TcpState::Close, dump_started_ns);
            self.hand_to_timewait(&s, &tuple, expires_ns, dump_started_ns, fin_wait2);
            self.drift.closes_missed += 1;
            added += 1;
        }
        // The queue is FIFO by insertion; refreshed and added expiries may be earlier
        // than entries ahead of them, so keep it ordered.
        if queued || added > 0 {
            self.tw_queue
                .make_contiguous()
                .sort_unstable_by_key(|(e, _)| *e);
        }
        // Later dumps start later.
        self.tw_ends.forget_before(dump_started_ns);
        self.drift.checks += 1;
        self.drift.added += added;
        self.drift.removed += removed;
        (added, removed)
    }

    /// What the drift checks and the events found missing so far.
    pub fn drift(&self) -> &Drift {
        &self.drift
    }

    /// The 4-tuples of `netns`'s live sockets, and their keys.
    fn live_quads(&self, netns: u32) -> FxHashMap<Quad, u64> {
        self.sockets
            .iter()
            .filter(|(_, s)| s.netns == netns)
            .map(|(&k, s)| (s.quad, k))
            .collect()
    }

    /// The model as `portx top` shows it.
    pub fn snapshot(&mut self, view: View) -> Snapshot {
        self.prune_dests();
        let now = self.now_ns;
        let mut per_ns: BTreeMap<u32, NetnsUsage> = BTreeMap::new();
        let ns_entry = |m: &Model, inode: u32| -> NetnsUsage {
            let (lo, hi, _) = m.cfg(inode);
            NetnsUsage {
                inode,
                name: m.netns.get(&inode).and_then(|c| c.name.clone()),
                port_range: [lo, hi],
                capacity: m.capacity(inode),
                destinations: Vec::new(),
                processes: Vec::new(),
            }
        };
        let wanted = |inode: u32| view.netns.is_none_or(|n| n == inode);
        for &inode in self.netns.keys() {
            if wanted(inode) {
                per_ns.insert(inode, ns_entry(self, inode));
            }
        }
        let marks = self.timewait_marks(now);
        let mut listeners: FxHashMap<u32, Vec<u16>> = FxHashMap::default();
        for &(ns, port) in self.listeners.keys() {
            listeners.entry(ns).or_default().push(port);
        }
        for l in listeners.values_mut() {
            l.sort_unstable();
        }
        let mut diagnoses = Vec::new();
        // In slot order, so that 100k destinations are read front to back.
        let mut indices: Vec<u32> = self
            .dest_index
            .iter()
            .filter(|(k, _)| wanted(k.netns))
            .map(|(_, &i)| i)
            .collect();
        indices.sort_unstable();
        // Each destination's clients: owner, figures and ports in TIME_WAIT, in one
        // buffer for all.
        let mut views: Vec<(u32, ClientView, u32)> = Vec::new();
        // How each namespace's destinations rank, beside them.
        let mut rank_keys: FxHashMap<u32, Vec<DestRank>> = FxHashMap::default();
        for i in indices {
            let netns = self.dests[i as usize].key.netns;
            let capacity = self.capacity(netns);
            let d = &self.dests[i as usize];
            if d.total() == 0 {
                continue;
            }
            if let Some(pid) = view.pid
                && !d
                    .owners
                    .iter()
                    .any(|(o, _)| self.owners[*o as usize].pid == pid)
            {
                continue;
            }
            let t = Tuple {
                v6: d.key.v6,
                saddr: d.key.saddr,
                daddr: d.key.daddr,
                sport: 0,
                dport: d.key.dport,
            };
            let tw = marks.get(&i).copied().unwrap_or_default();
            // Timewait sockets still in FIN_WAIT2 are shown as the kernel (and ss) shows
            // them, not as TIME_WAIT: their server has not closed.
            let mut counts = d.states;
            let moved = tw.fin_wait2.min(counts[TcpState::TimeWait as usize]);
            counts[TcpState::TimeWait as usize] -= moved;
            counts[TcpState::FinWait2 as usize] += moved;
            // Inserted one by one: collecting sorts a buffer first, for 1-3 states.
            let mut states = BTreeMap::new();
            for (s, &n) in counts.iter().enumerate() {
                if n > 0
                    && let Some(s) = TcpState::from_u8(s as u8)
                {
                    states.insert(Cow::Borrowed(s.name()), n);
                }
            }
            let used = d.used;
            let tw_reuse = self.netns.get(&netns).and_then(|c| c.tcp.tw_reuse);
            let loopback = t.daddr().is_loopback() || t.saddr().is_loopback();
            let facts = diagnosis::DestFacts {
                netns,
                saddr: addr_string(t.saddr()),
                daddr: addr_string(t.daddr()),
                dport: t.dport,
                used,
                capacity,
                established: d.states[TcpState::Established as usize],
                time_wait: counts[TcpState::TimeWait as usize],
                fin_wait2: moved,
                reusable: tw.reusable,
                tw_reuse,
                reuse_applies: reuse_applies(tw_reuse, loopback),
                fin_timeout: self.netns.get(&netns).and_then(|c| c.tcp.fin_timeout),
                range: {
                    let (lo, hi, _) = self.cfg(netns);
                    (lo, hi)
                },
                listeners: listeners.get(&netns).map_or(&[], Vec::as_slice),
            };
            let d = &mut self.dests[i as usize];
            // Each client's figures (this also moves its windows on); a brief view builds
            // owners only where a diagnosis rule may apply.
            views.clear();
            views.extend(
                d.clients
                    .iter_mut()
                    .map(|(id, stats)| (*id, stats.view(now), stats.time_wait)),
            );
            let detailed =
                !view.brief || diagnosis::may_apply(&facts, views.iter().map(|(_, v, _)| v));
            let mut owners = if detailed {
                self.dest_owners_by_id(&self.dests[i as usize])
            } else {
                Vec::new()
            };
            let mut clients = Vec::new();
            for (owner, o) in &mut owners {
                let Some(&(_, v, time_wait)) = views.iter().find(|(id, _, _)| id == owner) else {
                    continue;
                };
                o.client = Some(Box::new(v));
                clients.push(diagnosis::ClientFacts {
                    who: diagnosis::Who {
                        pid: o.pid,
                        comm: o.comm.clone(),
                        cgroup_id: o.cgroup_id,
                    },
                    ports: o.ports,
                    time_wait,
                    view: v,
                });
            }
            let (steady, eta_s, rate_per_s) = if detailed {
                let d = &mut self.dests[i as usize];
                let steady = diagnosis::steady_state(&facts, &clients);
                diagnoses.extend(diagnosis::diagnose_with(&facts, &clients, steady));
                // A client measured to level off below capacity never exhausts it,
                // whatever the last seconds' growth says.
                let growth_eta = d.rate.eta(now, used, capacity);
                let eta_s = match steady {
                    Some(s) if s < f64::from(capacity) => None,
                    _ => growth_eta,
                };
                (steady, eta_s, d.rate.per_second(now, used))
            } else {
                (None, None, 0.0)
            };
            let reusable_here = facts.reusable;
            let usage = DestUsage {
                saddr: facts.saddr,
                daddr: facts.daddr,
                dport: t.dport,
                used,
                capacity,
                states,
                rate_per_s,
                eta_s,
                owners: owners.into_iter().map(|(_, o)| o).collect(),
                reusable: reusable_here,
                steady_state: steady,
            };
            per_ns
                .entry(netns)
                .or_insert_with(|| ns_entry(self, netns))
                .destinations
                .push(usage);
            let k = &self.dests[i as usize].key;
            rank_keys.entry(netns).or_default().push(DestRank {
                used: Reverse(used),
                sockets: Reverse(self.dests[i as usize].total()),
                v6: k.v6,
                daddr: k.daddr,
                dport: k.dport,
                saddr: k.saddr,
            });
        }
        for (&(netns, owner), &ports) in &self.procs {
            if !wanted(netns) {
                continue;
            }
            let o = &self.owners[owner as usize];
            if view.pid.is_some_and(|p| p != o.pid) {
                continue;
            }
            let usage = ProcessUsage {
                pid: o.pid,
                comm: o.comm.to_string(),
                cgroup_id: o.cgroup_id,
                ports,
                cgroup: None,
                workload: None,
            };
            per_ns
                .entry(netns)
                .or_insert_with(|| ns_entry(self, netns))
                .processes
                .push(usage);
        }
        let mut netns: Vec<NetnsUsage> = per_ns.into_values().collect();
        for ns in &mut netns {
            // Sorted as indices by their numeric rank: at 100k destinations, moving
            // the entries and comparing their address strings was most of the sort.
            let keys = rank_keys.remove(&ns.inode).unwrap_or_default();
            let mut order: Vec<usize> = (0..ns.destinations.len()).collect();
            order.sort_unstable_by(|&x, &y| keys[x].cmp(&keys[y]));
            permute_in_place(&mut ns.destinations, order);
            if view.max_destinations > 0 {
                ns.destinations.truncate(view.max_destinations);
            }
            ns.processes
                .sort_by(|a, b| b.ports.cmp(&a.ports).then(a.pid.cmp(&b.pid)));
        }
        let failures = self
            .failures
            .iter()
            .filter(|f| view.netns.is_none_or(|n| n == f.event.netns))
            .filter(|f| {
                view.pid.is_none_or(|p| {
                    p == f.event.pid || f.holder.as_ref().is_some_and(|h| h.pid == p)
                })
            })
            .cloned()
            .collect();
        Snapshot {
            // The model's clock is boot time; the caller, who knows the wall clock, says.
            time: String::new(),
            netns,
            failures,
            dropped_events: 0,
            skipped_runs: 0,
            drift: self.drift,
            hooks: Vec::new(),
            workloads: Vec::new(),
            diagnoses,
        }
    }

    /// What the TIME_WAIT entries of each destination are, in one pass over them:
    /// how many a new connect() may take over (over a second old, in a namespace where
    /// tcp_tw_reuse applies to them), and how many the last drift check found still in
    /// FIN_WAIT2.
    fn timewait_marks(&self, now_ns: u64) -> FxHashMap<u32, TimeWaitMarks> {
        let mut out: FxHashMap<u32, TimeWaitMarks> = FxHashMap::default();
        for (k, t) in &self.timewait {
            if t.dest == NO_DEST {
                continue;
            }
            if t.fin_wait2 {
                out.entry(t.dest).or_default().fin_wait2 += 1;
                continue;
            }
            if now_ns.saturating_sub(t.since_ns) < diagnosis::REUSE_AFTER_NS {
                continue;
            }
            let tw_reuse = self.netns.get(&k.netns).and_then(|c| c.tcp.tw_reuse);
            let tuple = self.tuple_of(&k.quad);
            let loopback = tuple.daddr().is_loopback() || tuple.saddr().is_loopback();
            if reuse_applies(tw_reuse, loopback) {
                out.entry(t.dest).or_default().reusable += 1;
            }
        }
        out
    }

    /// TIME_WAIT 4-tuples the model holds in `netns` (for tests and the drift check).
    pub fn timewait_tuples(&self, netns: u32) -> Vec<Tuple> {
        self.timewait
            .keys()
            .filter(|k| k.netns == netns)
            .map(|k| self.tuple_of(&k.quad))
            .collect()
    }
}

/// Whether two failures are one repeated failure: the same call failing with the
/// same error for the same process, namespace and addresses. Not the thread, socket or
/// connect()'s source port, which a retry changes; bind()'s port is what it asked for.
fn same_failure(a: &JsonEvent, b: &JsonEvent) -> bool {
    a.event == b.event
        && a.errno == b.errno
        && a.pid == b.pid
        && a.comm == b.comm
        && a.netns == b.netns
        && a.saddr == b.saddr
        && a.daddr == b.daddr
        && a.dport == b.dport
        && (a.event != Kind::BindError.as_str() || a.sport == b.sport)
}

#[cfg(test)]
mod tests;

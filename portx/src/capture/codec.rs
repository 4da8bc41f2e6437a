//! The compact encoding of a batch of events: the body of one events frame, before
//! compression (byte by byte in docs/capture-format.md).
//!
//! Owners, sockets and address pairs are interned in tables that both sides build as
//! they go (a reference is "new, inline" or "the k-th most recent entry"), timestamps
//! are deltas, and an event whose addresses and ports are those of its socket's
//! previous event says so in one bit. Everything restarts with each batch, so a frame
//! decodes alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::FxHashMap;

use crate::events::{Comm, Family, Kind, TcpState, TraceEvent};

/// At most this many events per batch: bounds what a reader buffers for one frame
/// (and the body, far below the frame limit). The encoder starts a new frame there.
pub const MAX_BATCH_EVENTS: usize = 65_536;

// Event head byte.
const KIND_MASK: u8 = 0x07;
const HAS_STATES: u8 = 0x08;
const HAS_ERRNO: u8 = 0x10;
const HAS_BOUND_PORT: u8 = 0x20;
const SAME_ENDPOINT: u8 = 0x40;
const HEAD_RESERVED: u8 = 0x80;

// Address-pair family byte.
const PAIR_V6: u8 = 0x01;
const PAIR_SADDR_V6: u8 = 0x02;
const PAIR_DADDR_V6: u8 = 0x04;
const PAIR_RESERVED: u8 = !0x07;

const fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::State => 0,
        Kind::Connect => 1,
        Kind::ConnectError => 2,
        Kind::Bind => 3,
        Kind::BindError => 4,
        Kind::TimewaitEnd => 5,
    }
}

const fn kind_of(code: u8) -> Option<Kind> {
    Some(match code {
        0 => Kind::State,
        1 => Kind::Connect,
        2 => Kind::ConnectError,
        3 => Kind::Bind,
        4 => Kind::BindError,
        5 => Kind::TimewaitEnd,
        _ => return None,
    })
}

fn state_code(s: Option<TcpState>) -> u8 {
    s.map_or(0, |s| s as u8)
}

/// Who an event is attributed to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Owner {
    pid: u32,
    tid: u32,
    comm: Comm,
    cgroup_id: u64,
}

/// Where: namespace and both addresses.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Pair {
    netns: u32,
    family: Family,
    saddr: IpAddr,
    daddr: IpAddr,
}

/// A pair and the ports: what `SAME_ENDPOINT` repeats.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Endpoint {
    pair: usize,
    sport: u16,
    dport: u16,
}

/// A reference to a table entry: 0 = a new entry follows inline, k = the entry added
/// k-th most recently (so recent entries, the common case, take one byte).
fn back_ref(len: usize, idx: usize) -> u64 {
    (len - idx) as u64
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_addr(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// Encodes one batch incrementally: `push` each event, then `finish`.
#[derive(Default)]
pub struct BatchEncoder {
    body: Vec<u8>,
    count: usize,
    prev_ts: u64,
    owners: FxHashMap<Owner, usize>,
    /// Socket address -> (index, its last endpoint).
    socks: FxHashMap<u64, (usize, Endpoint)>,
    prev_new_sock: u64,
    pairs: FxHashMap<Pair, usize>,
}

impl BatchEncoder {
    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, e: &TraceEvent) {
        let states = e.old_state.is_some() || e.new_state.is_some();
        let pair = Pair {
            netns: e.netns,
            family: e.family,
            saddr: e.saddr,
            daddr: e.daddr,
        };
        let pair_idx = self.pairs.get(&pair).copied();
        let known_sock = self.socks.get(&e.sock).copied();
        let same_endpoint = matches!((known_sock, pair_idx), (Some((_, last)), Some(p))
            if last == Endpoint { pair: p, sport: e.sport, dport: e.dport });

        let mut head = kind_code(e.kind);
        if states {
            head |= HAS_STATES;
        }
        if e.errno.is_some() {
            head |= HAS_ERRNO;
        }
        if e.bound_port.is_some() {
            head |= HAS_BOUND_PORT;
        }
        if same_endpoint {
            head |= SAME_ENDPOINT;
        }
        let b = &mut self.body;
        b.push(head);
        put_varint(b, zigzag(e.ts_ns.wrapping_sub(self.prev_ts) as i64));
        self.prev_ts = e.ts_ns;

        let owner = Owner {
            pid: e.pid,
            tid: e.tid,
            comm: e.comm,
            cgroup_id: e.cgroup_id,
        };
        match self.owners.get(&owner) {
            Some(&i) => put_varint(b, back_ref(self.owners.len(), i)),
            None => {
                b.push(0);
                put_varint(b, u64::from(e.pid));
                put_varint(b, u64::from(e.tid));
                put_varint(b, e.cgroup_id);
                let comm = e.comm.as_bytes();
                b.push(comm.len() as u8);
                b.extend_from_slice(comm);
                self.owners.insert(owner, self.owners.len());
            }
        }

        let sock_idx = match known_sock {
            Some((i, _)) => {
                put_varint(b, back_ref(self.socks.len(), i));
                i
            }
            None => {
                b.push(0);
                put_varint(b, zigzag(e.sock.wrapping_sub(self.prev_new_sock) as i64));
                self.prev_new_sock = e.sock;
                self.socks.len()
            }
        };

        let pair_idx = if same_endpoint {
            pair_idx.unwrap_or_default()
        } else {
            let idx = match pair_idx {
                Some(i) => {
                    put_varint(b, back_ref(self.pairs.len(), i));
                    i
                }
                None => {
                    b.push(0);
                    put_varint(b, u64::from(e.netns));
                    let mut fam = 0;
                    if e.family == Family::Ipv6 {
                        fam |= PAIR_V6;
                    }
                    if e.saddr.is_ipv6() {
                        fam |= PAIR_SADDR_V6;
                    }
                    if e.daddr.is_ipv6() {
                        fam |= PAIR_DADDR_V6;
                    }
                    b.push(fam);
                    put_addr(b, e.saddr);
                    put_addr(b, e.daddr);
                    let i = self.pairs.len();
                    self.pairs.insert(pair, i);
                    i
                }
            };
            b.extend_from_slice(&e.sport.to_le_bytes());
            b.extend_from_slice(&e.dport.to_le_bytes());
            idx
        };
        let endpoint = Endpoint {
            pair: pair_idx,
            sport: e.sport,
            dport: e.dport,
        };
        self.socks.insert(e.sock, (sock_idx, endpoint));

        if states {
            b.push(state_code(e.old_state) | (state_code(e.new_state) << 4));
        }
        if let Some(errno) = e.errno {
            put_varint(b, u64::from(errno));
        }
        if let Some(port) = e.bound_port {
            b.extend_from_slice(&port.to_le_bytes());
        }
        self.count += 1;
    }

    /// The batch's body (event count, then the events); the encoder is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 10);
        put_varint(&mut out, self.count as u64);
        out.append(&mut self.body);
        *self = Self {
            body: std::mem::take(&mut self.body),
            ..Self::default()
        };
        out
    }
}

/// Encodes a whole batch at once.
pub fn encode(events: &[TraceEvent]) -> Vec<u8> {
    let mut enc = BatchEncoder::default();
    for e in events {
        enc.push(e);
    }
    enc.finish()
}

/// A cursor over an untrusted body: every read is checked.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("body ends inside a field at byte {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let s = self.bytes(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("bad varint at byte {start}"))
    }

    fn varint_u32(&mut self) -> Result<u32, String> {
        let start = self.pos;
        u32::try_from(self.varint()?).map_err(|_| format!("value out of range at byte {start}"))
    }

    fn addr(&mut self, v6: bool) -> Result<IpAddr, String> {
        Ok(if v6 {
            let mut o = [0u8; 16];
            o.copy_from_slice(self.bytes(16)?);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let s = self.bytes(4)?;
            IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
        })
    }

    /// A back reference into a table of `len` entries: `None` = new entry inline.
    fn table_ref(&mut self, len: usize, what: &str) -> Result<Option<usize>, String> {
        let start = self.pos;
        match self.varint()? {
            0 => Ok(None),
            k => usize::try_from(k)
                .ok()
                .and_then(|k| len.checked_sub(k))
                .map(Some)
                .ok_or_else(|| {
                    format!("{what} reference {k} past the table ({len}) at byte {start}")
                }),
        }
    }
}

/// Decodes a batch body. Any inconsistency is an error naming the byte.
pub fn decode(body: &[u8]) -> Result<Vec<TraceEvent>, String> {
    let mut c = Cursor { b: body, pos: 0 };
    let count = c.varint()?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_BATCH_EVENTS)
        .ok_or_else(|| format!("{count} events in one frame (limit {MAX_BATCH_EVENTS})"))?;
    // Every event takes at least four bytes: a count beyond that is a lie.
    let mut out = Vec::with_capacity(count.min(body.len() / 4));
    let mut owners: Vec<Owner> = Vec::new();
    let mut socks: Vec<(u64, Option<Endpoint>)> = Vec::new();
    let mut pairs: Vec<Pair> = Vec::new();
    let mut prev_ts = 0u64;
    let mut prev_new_sock = 0u64;
    for _ in 0..count {
        let at = c.pos;
        let head = c.u8()?;
        if head & HEAD_RESERVED != 0 {
            return Err(format!("reserved bit set in event head at byte {at}"));
        }
        let kind = kind_of(head & KIND_MASK)
            .ok_or_else(|| format!("unknown event kind {} at byte {at}", head & KIND_MASK))?;
        let ts_ns = prev_ts.wrapping_add(unzigzag(c.varint()?) as u64);
        prev_ts = ts_ns;

        let owner = match c.table_ref(owners.len(), "owner")? {
            Some(i) => owners[i],
            None => {
                let pid = c.varint_u32()?;
                let tid = c.varint_u32()?;
                let cgroup_id = c.varint()?;
                let n = usize::from(c.u8()?);
                if n > portx_common::COMM_LEN {
                    return Err(format!("comm of {n} bytes at byte {}", c.pos));
                }
                let raw = c.bytes(n)?;
                let comm = Comm::from_raw(raw);
                if comm.as_bytes() != raw {
                    return Err(format!("comm not UTF-8 at byte {}", c.pos));
                }
                let o = Owner {
                    pid,
                    tid,
                    comm,
                    cgroup_id,
                };
                owners.push(o);
                o
            }
        };

        let sock_idx = match c.table_ref(socks.len(), "socket")? {
            Some(i) => i,
            None => {
                let sock = prev_new_sock.wrapping_add(unzigzag(c.varint()?) as u64);
                prev_new_sock = sock;
                socks.push((sock, None));
                socks.len() - 1
            }
        };

        let endpoint = if head & SAME_ENDPOINT != 0 {
            socks[sock_idx]
                .1
                .ok_or_else(|| format!("repeated endpoint of a new socket at byte {at}"))?
        } else {
            let pair = match c.table_ref(pairs.len(), "address")? {
                Some(i) => i,
                None => {
                    let netns = c.varint_u32()?;
                    let fam = c.u8()?;
                    if fam & PAIR_RESERVED != 0 {
                        return Err(format!("reserved address bits at byte {}", c.pos - 1));
                    }
                    let saddr = c.addr(fam & PAIR_SADDR_V6 != 0)?;
                    let daddr = c.addr(fam & PAIR_DADDR_V6 != 0)?;
                    pairs.push(Pair {
                        netns,
                        family: if fam & PAIR_V6 != 0 {
                            Family::Ipv6
                        } else {
                            Family::Ipv4
                        },
                        saddr,
                        daddr,
                    });
                    pairs.len() - 1
                }
            };
            Endpoint {
                pair,
                sport: c.u16()?,
                dport: c.u16()?,
            }
        };
        socks[sock_idx].1 = Some(endpoint);
        // Indices only ever point at entries pushed before.
        let p = pairs
            .get(endpoint.pair)
            .copied()
            .ok_or_else(|| format!("bad address reference at byte {at}"))?;

        let (old_state, new_state) = if head & HAS_STATES != 0 {
            let s = c.u8()?;
            let st = |v: u8| match v {
                0 => Ok(None),
                v => TcpState::from_u8(v)
                    .map(Some)
                    .ok_or_else(|| format!("unknown TCP state {v} at byte {}", c.pos - 1)),
            };
            (st(s & 0x0f)?, st(s >> 4)?)
        } else {
            (None, None)
        };
        let errno = if head & HAS_ERRNO != 0 {
            Some(c.varint_u32()?)
        } else {
            None
        };
        let bound_port = if head & HAS_BOUND_PORT != 0 {
            Some(c.u16()?)
        } else {
            None
        };
        out.push(TraceEvent {
            kind,
            ts_ns,
            pid: owner.pid,
            tid: owner.tid,
            comm: owner.comm,
            cgroup_id: owner.cgroup_id,
            netns: p.netns,
            sock: socks[sock_idx].0,
            family: p.family,
            saddr: p.saddr,
            sport: endpoint.sport,
            daddr: p.daddr,
            dport: endpoint.dport,
            old_state,
            new_state,
            errno,
            bound_port,
        });
    }
    if c.pos != body.len() {
        return Err(format!("{} bytes after the last event", body.len() - c.pos));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain IPv4 event; tests change what they need.
    pub(crate) fn ev(kind: Kind, ts_ns: u64, sock: u64) -> TraceEvent {
        TraceEvent {
            kind,
            ts_ns,
            pid: 4242,
            tid: 4243,
            comm: Comm::from("curl"),
            cgroup_id: 9876,
            netns: 4026531840,
            sock,
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 0,
            daddr: "10.0.0.5".parse().unwrap(),
            dport: 443,
            old_state: None,
            new_state: None,
            errno: None,
            bound_port: None,
        }
    }

    fn state(mut e: TraceEvent, old: TcpState, new: TcpState) -> TraceEvent {
        e.old_state = Some(old);
        e.new_state = Some(new);
        e
    }

    /// Every kind, both families, errno and bound port present and absent, a
    /// non-ASCII comm, states half known, timestamps going backwards.
    pub(crate) fn varied_events() -> Vec<TraceEvent> {
        use TcpState::*;
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut out = vec![
            state(
                ev(Kind::State, 1_000, 0xffff_8880_1234_5600),
                Close,
                SynSent,
            ),
            ev(Kind::Connect, 1_500, 0xffff_8880_1234_5600),
            state(
                ev(Kind::State, 900, 0xffff_8880_1234_5600),
                SynSent,
                Established,
            ),
        ];
        let mut e = ev(Kind::ConnectError, 2_000, 0xffff_8880_1234_5700);
        e.errno = Some(99);
        e.comm = Comm::from("caf\u{e9}-\u{1f600}");
        out.push(e);
        let mut e = ev(Kind::Bind, 3_000, 0);
        e.bound_port = Some(40_001);
        e.sport = 40_001;
        out.push(e);
        let mut e = ev(Kind::Bind, 3_100, 0);
        e.pid = 0;
        e.tid = 0;
        e.comm = Comm::default();
        out.push(e);
        let mut e = ev(Kind::BindError, 4_000, 1);
        e.errno = Some(98);
        e.family = Family::Ipv6;
        e.saddr = v6;
        e.daddr = "::1".parse().unwrap();
        e.netns = u32::MAX;
        out.push(e);
        let mut e = ev(Kind::TimewaitEnd, u64::MAX, u64::MAX);
        e.family = Family::Ipv6;
        e.saddr = v6;
        e.daddr = "10.1.1.1".parse().unwrap();
        e.cgroup_id = u64::MAX;
        e.pid = u32::MAX;
        out.push(e);
        let mut e = state(
            ev(Kind::State, 0, 0xffff_8880_1234_5600),
            FinWait1,
            FinWait2,
        );
        e.new_state = None;
        out.push(e);
        let mut e = ev(Kind::ConnectError, 5, 5);
        e.errno = Some(u32::MAX);
        e.bound_port = Some(0);
        out.push(e);
        out
    }

    #[test]
    fn round_trips_every_field() {
        let events = varied_events();
        let body = encode(&events);
        assert_eq!(decode(&body).unwrap(), events);
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::<TraceEvent>::new());
    }

    #[test]
    fn finish_restarts_the_tables() {
        let events = varied_events();
        let mut enc = BatchEncoder::default();
        events.iter().for_each(|e| enc.push(e));
        let first = enc.finish();
        assert!(enc.is_empty());
        events.iter().for_each(|e| enc.push(e));
        assert_eq!(enc.finish(), first);
    }

    #[test]
    fn rejects_damaged_bodies_without_panicking() {
        let body = encode(&varied_events());
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = body.clone();
        extra.push(0);
        assert!(decode(&extra).unwrap_err().contains("after the last event"));
        // A count past the limit is refused before anything is allocated.
        let mut big = Vec::new();
        put_varint(&mut big, MAX_BATCH_EVENTS as u64 + 1);
        assert!(decode(&big).unwrap_err().contains("limit"));
        for i in 0..body.len() {
            for bit in 0..8 {
                let mut b = body.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&b);
            }
        }
    }

    #[test]
    fn varints_are_bounded() {
        let mut b = Vec::new();
        put_varint(&mut b, u64::MAX);
        assert_eq!(b.len(), 10);
        let mut c = Cursor { b: &b, pos: 0 };
        assert_eq!(c.varint().unwrap(), u64::MAX);
        let over = [0xff; 11];
        assert!(Cursor { b: &over, pos: 0 }.varint().is_err());
        for v in [0i64, 1, -1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    /// A connect storm as the hooks see it: per connection the client socket goes
    /// CLOSE->SYN_SENT (port not yet chosen), SYN_SENT->ESTABLISHED, `connect`
    /// returns, FIN_WAIT1, FIN_WAIT2, CLOSE; the server's accepted socket goes
    /// SYN_RECV->ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE. A few clients, two
    /// addresses, events microseconds apart, slab-like socket addresses.
    pub(crate) fn storm(connections: u64) -> Vec<TraceEvent> {
        use TcpState::*;
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let server: IpAddr = "10.0.0.2".parse().unwrap();
        let comms = ["curl", "wrk", "python3", "loadgen"];
        // A small deterministic generator: no dependence on a random crate.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut ts = 1_000_000_000_000u64;
        let mut out = Vec::with_capacity(connections as usize * 10);
        for i in 0..connections {
            let worker = (i % 4) as usize;
            let pid = 3000 + worker as u32;
            let csock = 0xffff_8880_0000_0000 | ((rnd() & 0xff_ffff) << 8);
            let ssock = 0xffff_8880_0000_0000 | ((rnd() & 0xff_ffff) << 8);
            let port = 32768 + (i * 7 % 28000) as u16;
            let mut tick = || {
                ts += 1_000 + rnd() % 9_000;
                ts
            };
            let mk = |kind, ts_ns, sock, pid: u32, comm: &str, out: bool, sport, old, new| {
                let (saddr, daddr, sp, dp) = if out {
                    (client, server, sport, 8080)
                } else {
                    (server, client, 8080, port)
                };
                TraceEvent {
                    kind,
                    ts_ns,
                    pid,
                    tid: pid,
                    comm: Comm::from(comm),
                    cgroup_id: 4000 + u64::from(pid % 2),
                    netns: 4026531840,
                    sock,
                    family: Family::Ipv4,
                    saddr,
                    sport: sp,
                    daddr,
                    dport: dp,
                    old_state: old,
                    new_state: new,
                    errno: None,
                    bound_port: None,
                }
            };
            let c = comms[worker];
            let st = Kind::State;
            out.push(mk(
                st,
                tick(),
                csock,
                pid,
                c,
                true,
                0,
                Some(Close),
                Some(SynSent),
            ));
            out.push(mk(
                st,
                tick(),
                ssock,
                2000,
                "nginx",
                false,
                0,
                Some(SynRecv),
                Some(Established),
            ));
            out.push(mk(
                st,
                tick(),
                csock,
                pid,
                c,
                true,
                port,
                Some(SynSent),
                Some(Established),
            ));
            out.push(mk(
                Kind::Connect,
                tick(),
                csock,
                pid,
                c,
                true,
                port,
                None,
                None,
            ));
            out.push(mk(
                st,
                tick(),
                csock,
                pid,
                c,
                true,
                port,
                Some(Established),
                Some(FinWait1),
            ));
            out.push(mk(
                st,
                tick(),
                ssock,
                2000,
                "nginx",
                false,
                0,
                Some(Established),
                Some(CloseWait),
            ));
            out.push(mk(
                st,
                tick(),
                csock,
                pid,
                c,
                true,
                port,
                Some(FinWait1),
                Some(FinWait2),
            ));
            out.push(mk(
                st,
                tick(),
                ssock,
                2000,
                "nginx",
                false,
                0,
                Some(CloseWait),
                Some(LastAck),
            ));
            out.push(mk(
                st,
                tick(),
                csock,
                pid,
                c,
                true,
                port,
                Some(FinWait2),
                Some(Close),
            ));
            out.push(mk(
                st,
                tick(),
                ssock,
                2000,
                "nginx",
                false,
                0,
                Some(LastAck),
                Some(Close),
            ));
        }
        out
    }

    #[test]
    fn storm_round_trips() {
        let events = storm(500);
        assert_eq!(decode(&encode(&events)).unwrap(), events);
    }
}

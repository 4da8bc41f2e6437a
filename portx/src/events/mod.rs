//! Events: raw ring-buffer records decoded into typed events (here), filtered
//! ([`filter`]) and joined with their sockets' owners ([`sock_owners`]). Pure: no
//! kernel access.

pub mod compact;
pub mod filter;
pub mod reorder;
pub mod sock_owners;
pub mod tally;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use portx_common::{
    COMM_LEN, Event, EventKind,
    uapi::{AF_INET, AF_INET6},
};

/// What happened, as named in the JSON `event` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    State,
    Connect,
    ConnectError,
    Bind,
    BindError,
    /// A TIME_WAIT socket was freed (needs a hook on `inet_twsk_kill`).
    TimewaitEnd,
}

impl Kind {
    /// The kind of a record from the kernel.
    pub const fn of(kind: EventKind) -> Self {
        match kind {
            EventKind::State => Self::State,
            EventKind::Connect => Self::Connect,
            EventKind::ConnectError => Self::ConnectError,
            EventKind::Bind => Self::Bind,
            EventKind::BindError => Self::BindError,
            EventKind::TimewaitEnd => Self::TimewaitEnd,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::Connect => "connect",
            Self::ConnectError => "connect_error",
            Self::Bind => "bind",
            Self::BindError => "bind_error",
            Self::TimewaitEnd => "timewait_end",
        }
    }

    pub const fn is_error(self) -> bool {
        matches!(self, Self::ConnectError | Self::BindError)
    }
}

/// TCP states, `include/net/tcp_states.h`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum TcpState {
    Established = 1,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Symbolic names of the errnos connect() and bind() return.
pub fn errno_name(errno: u32) -> Option<&'static str> {
    Some(match errno as i32 {
        libc::EPERM => "EPERM",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// A decoded event. Ports are host order; for `state` events the owner fields come
/// from the socket's owner (learned in process context), not from the CPU's current task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub kind: Kind,
    /// Boot-time clock, nanoseconds.
    pub ts_ns: u64,
    /// 0 when the owner is unknown (a socket that existed before portx started).
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    pub netns: u32,
    /// Kernel socket address (0 when unknown): stable identity for the socket's life.
    pub sock: u64,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old_state: Option<TcpState>,
    pub new_state: Option<TcpState>,
    /// Positive errno on `*_error` events.
    pub errno: Option<u32>,
    /// `bind`: the port the socket got (what port 0 turned into).
    pub bound_port: Option<u16>,
}

impl TraceEvent {
    pub fn error_name(&self) -> Option<&'static str> {
        self.errno.and_then(errno_name)
    }

    /// Whether this is a socket's move out of SYN_SENT with a source port, whatever
    /// the answer: its SYN went out. `serve` counts connection attempts here (the
    /// accounting path sends no `connect` events, and a non-blocking connect() that
    /// is refused or times out leaves nothing else).
    pub fn left_syn_sent_with_port(&self) -> bool {
        self.kind == Kind::State && self.old_state == Some(TcpState::SynSent) && self.sport != 0
    }

    /// [`Self::left_syn_sent_with_port`] into anything but CLOSE: the peer answered
    /// and the port stays held. The model's allocation rate counts these.
    pub fn allocated_port(&self) -> bool {
        self.left_syn_sent_with_port() && self.new_state != Some(TcpState::Close)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record is {0} bytes, expected {1}")]
    Size(usize, usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown address family {0}")]
    Family(u16),
}

fn addr(family: Family, raw: [u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(raw)),
    }
}

/// A task's command name, held inline (at most `COMM_LEN` bytes, as the kernel keeps
/// it): decoding an event allocates nothing, which at hundreds of thousands of events
/// a second is most of the decoder's cost.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// From the kernel's NUL-padded bytes. Bytes that are not UTF-8 become `?`, so
    /// the name stays printable and within its 16 bytes.
    pub fn from_raw(raw: &[u8]) -> Self {
        let raw = &raw[..raw.len().min(COMM_LEN)];
        let mut bytes = [0; COMM_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Self::from_padded(bytes)
    }

    /// [`Self::from_raw`] of exactly `COMM_LEN` bytes, what every record carries: the
    /// name's end and an all-ASCII test as word operations (this runs once per event).
    pub fn from_padded(bytes: [u8; COMM_LEN]) -> Self {
        const ONES: u128 = u128::from_ne_bytes([0x01; COMM_LEN]);
        const HIGH: u128 = u128::from_ne_bytes([0x80; COMM_LEN]);
        let w = u128::from_le_bytes(bytes);
        // The lowest byte that is zero sets its high bit here (a borrow can only mark
        // bytes above it): the name's end.
        let zeros = w.wrapping_sub(ONES) & !w & HIGH;
        let len = (zeros.trailing_zeros() / 8).min(COMM_LEN as u32) as u8;
        let keep = if len as usize == COMM_LEN {
            u128::MAX
        } else {
            (1u128 << (u32::from(len) * 8)) - 1
        };
        let mut c = Self {
            bytes: (w & keep).to_le_bytes(),
            len,
        };
        if w & keep & HIGH != 0 && std::str::from_utf8(&c.bytes[..usize::from(len)]).is_err() {
            for b in &mut c.bytes[..usize::from(len)] {
                if !b.is_ascii() {
                    *b = b'?';
                }
            }
        }
        c
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `from_raw`, the only constructor besides `Default` (empty), leaves
        // only UTF-8 in `bytes[..len]` (ASCII where the input was not UTF-8). Checking
        // again here cost the model a UTF-8 scan per owner it looked up.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[..usize::from(self.len)]) }
    }
}

impl From<&str> for Comm {
    /// Truncated to `COMM_LEN` bytes at a character boundary.
    fn from(s: &str) -> Self {
        let mut end = s.len().min(COMM_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self::from_raw(&s.as_bytes()[..end])
    }
}

impl std::ops::Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<TraceEvent, DecodeError> {
    if compact::is_compact(bytes) {
        let slot: &[u8; portx_common::SLOT_BYTES] = bytes
            .try_into()
            .map_err(|_| DecodeError::Size(bytes.len(), portx_common::SLOT_BYTES))?;
        return compact::decode_slot(slot);
    }
    let raw = full_event(bytes).ok_or(DecodeError::Size(bytes.len(), size_of::<Event>()))?;
    decode_event(&raw)
}

/// A full record's bytes as the record; `None` if they are too few.
#[inline]
fn full_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data and read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// A record as read from the ring, kept for decoding later (per-CPU batches are put
/// back in time order first): a compact state change as its slot, as it came; any
/// other event as the full record.
pub enum RawRecord {
    Compact([u8; portx_common::SLOT_BYTES]),
    /// Boxed: these are few on the path that holds records (failures, IPv6 owners),
    /// and held records stay the size of a slot.
    Full(Box<Event>),
}

impl RawRecord {
    /// `None` if `bytes` is too short for what it starts as.
    #[inline]
    pub fn read(bytes: &[u8]) -> Option<Self> {
        if compact::is_compact(bytes) {
            return Some(Self::Compact(bytes.try_into().ok()?));
        }
        Some(Self::Full(Box::new(full_event(bytes)?)))
    }

    #[inline]
    pub fn ts_ns(&self) -> u64 {
        match self {
            Self::Compact(s) => compact::ts_ns(s),
            Self::Full(e) => e.header.ts_ns,
        }
    }

    #[inline]
    pub fn decode(&self) -> Result<TraceEvent, DecodeError> {
        match self {
            Self::Compact(s) => compact::decode_slot(s),
            Self::Full(e) => decode_event(e),
        }
    }
}

/// Decodes an already-copied record.
pub fn decode_event(raw: &Event) -> Result<TraceEvent, DecodeError> {
    let h = &raw.header;
    let kind = Kind::of(EventKind::from_u32(h.kind).ok_or(DecodeError::Kind(h.kind))?);
    let family = match raw.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        other => return Err(DecodeError::Family(other)),
    };
    let is_state = kind == Kind::State;
    Ok(TraceEvent {
        kind,
        ts_ns: h.ts_ns,
        pid: h.owner.pid,
        tid: h.owner.tid,
        comm: Comm::from_padded(h.owner.comm),
        cgroup_id: h.owner.cgroup_id,
        netns: h.netns,
        sock: raw.skaddr,
        family,
        saddr: addr(family, raw.saddr),
        sport: raw.sport,
        daddr: addr(family, raw.daddr),
        dport: raw.dport,
        old_state: if is_state {
            TcpState::from_u8(raw.old_state)
        } else {
            None
        },
        new_state: if is_state {
            TcpState::from_u8(raw.new_state)
        } else {
            None
        },
        errno: kind.is_error().then_some(raw.errno),
        bound_port: (kind == Kind::Bind && raw.bound_port != 0).then_some(raw.bound_port),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use portx_common::{EventHeader, Owner};

    use super::*;

    pub(crate) fn raw_event(kind: EventKind) -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Event {
            header: EventHeader {
                kind: kind as u32,
                netns: 4026531840,
                ts_ns: 123_456_789,
                owner: Owner {
                    pid: 42,
                    tid: 43,
                    cgroup_id: 7,
                    comm,
                },
            },
            skaddr: 0xffff_8880_0000_1000,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000,
            dport: 3306,
            family: AF_INET,
            protocol: 6,
            old_state: 7,
            new_state: 2,
            bound_port: 0,
            errno: 0,
        }
    }

    fn bytes(e: &Event) -> Vec<u8> {
        // SAFETY: Event is POD.
        unsafe { std::slice::from_raw_parts((e as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    #[test]
    fn comm_is_held_inline_and_stays_printable() {
        assert_eq!(Comm::from_raw(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(Comm::from_raw(&[0; 16]).as_str(), "");
        // Not UTF-8 (a name cut inside a multi-byte character): non-ASCII bytes show
        // as '?', the rest is kept.
        assert_eq!(Comm::from_raw(b"w\xc3\0").as_str(), "w?");
        assert_eq!(Comm::from_raw(b"a\xffb\xc3\xa9").as_str(), "a?b??");
        // Valid UTF-8 is kept as it is.
        assert_eq!(Comm::from_raw("caf\u{e9}".as_bytes()).as_str(), "caf\u{e9}");
        // From a longer string: cut to 16 bytes, at a character boundary.
        assert_eq!(
            Comm::from("0123456789abcdefXYZ").as_str(),
            "0123456789abcdef"
        );
        assert_eq!(
            Comm::from("0123456789abcde\u{e9}").as_str(),
            "0123456789abcde"
        );
        assert_eq!(format!("{:?}", Comm::from("x\"y")), r#""x\"y""#);
    }

    #[test]
    fn a_whole_comm_field_reads_as_its_name_up_to_the_first_nul() {
        // What follows the NUL (a kernel that did not pad) is not part of the name,
        // nor of its equality.
        let mut raw = *b"nginx\0garbage\xff\xfe\0";
        assert_eq!(Comm::from_padded(raw), "nginx");
        assert_eq!(Comm::from_padded(raw), Comm::from("nginx"));
        // No NUL at all: all 16 bytes.
        raw = *b"0123456789abcdef";
        assert_eq!(Comm::from_padded(raw), "0123456789abcdef");
        // A NUL first: empty.
        raw[0] = 0;
        assert_eq!(Comm::from_padded(raw), Comm::default());
        // Not UTF-8 within the name, as from_raw says.
        let mut odd = [0u8; 16];
        odd[..5].copy_from_slice(b"a\xffb\xc3\xa9");
        assert_eq!(Comm::from_padded(odd), "a?b??");
        let mut ok = [0u8; 16];
        ok[..5].copy_from_slice("caf\u{e9}".as_bytes());
        assert_eq!(Comm::from_padded(ok), "caf\u{e9}");
    }

    #[test]
    fn decodes_a_state_event() {
        let ev = decode(&bytes(&raw_event(EventKind::State))).unwrap();
        assert_eq!(ev.kind, Kind::State);
        assert_eq!((ev.pid, ev.tid, ev.comm.as_str()), (42, 43, "curl"));
        assert_eq!(ev.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.daddr, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((ev.sport, ev.dport), (40000, 3306));
        assert_eq!(ev.old_state, Some(TcpState::Close));
        assert_eq!(ev.new_state, Some(TcpState::SynSent));
        assert_eq!(ev.errno, None);
        assert_eq!(ev.netns, 4026531840);
    }

    #[test]
    fn decodes_errors_and_ipv6() {
        let mut raw = raw_event(EventKind::ConnectError);
        raw.family = AF_INET6;
        raw.daddr = Ipv6Addr::LOCALHOST.octets();
        raw.errno = 99;
        let ev = decode(&bytes(&raw)).unwrap();
        assert_eq!(ev.kind, Kind::ConnectError);
        assert_eq!(ev.family, Family::Ipv6);
        assert_eq!(ev.daddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(ev.errno, Some(99));
        assert_eq!(ev.error_name(), Some("EADDRNOTAVAIL"));
        // States are only meaningful on state events.
        assert_eq!(ev.old_state, None);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let b = bytes(&raw_event(EventKind::Bind));
        assert_eq!(decode(&b[..50]), Err(DecodeError::Size(50, 104)));
        let mut raw = raw_event(EventKind::Bind);
        raw.header.kind = 99;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::Kind(99)));
        let mut raw = raw_event(EventKind::Bind);
        raw.family = 1;
        assert_eq!(decode(&bytes(&raw)), Err(DecodeError::Family(1)));
    }

    #[test]
    fn names_states_and_errnos() {
        assert_eq!(TcpState::from_u8(6).unwrap().name(), "TIME_WAIT");
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(errno_name(98), Some("EADDRINUSE"));
        assert_eq!(errno_name(9999), None);
    }
}

//! The accounting path's compact state-change records (`portx_common::CompactV4`,
//! `CompactV6`: one 64-byte slot of a per-CPU batch), decoded straight from their slot
//! into the event a full record would have given (the tests hold the two side by
//! side).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::events::{Comm, DecodeError, Family, Kind, TcpState, TraceEvent};
use portx_common::{CompactV4, CompactV6, SLOT_BYTES, compact};

/// Whether a record starts with a compact record's first word (an event kind is below
/// `1 << 16`, a compact head at least that).
pub fn is_compact(bytes: &[u8]) -> bool {
    first_word(bytes).is_some_and(|w| w >> 16 != 0)
}

fn first_word(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// A compact record's timestamp, where both forms keep it.
#[inline]
pub fn ts_ns(slot: &[u8; SLOT_BYTES]) -> u64 {
    const AT: usize = std::mem::offset_of!(CompactV4, ts_ns);
    const _: () = assert!(AT == std::mem::offset_of!(CompactV6, ts_ns));
    u64::from_ne_bytes(slot[AT..AT + 8].try_into().expect("8 bytes"))
}

/// The event a compact record stands for, decoded straight from its slot: the same
/// event the full record it stands for decodes to (the tests hold the two side by
/// side), without building that record (this runs for nearly every event of the
/// accounting path). An unknown tag is an error.
#[inline]
pub fn decode_slot(slot: &[u8; SLOT_BYTES]) -> Result<TraceEvent, DecodeError> {
    let head = u32::from_ne_bytes([slot[0], slot[1], slot[2], slot[3]]);
    let (old_state, new_state) = (
        TcpState::from_u8((head >> 8) as u8),
        TcpState::from_u8(head as u8),
    );
    // (netns, time, socket), (family, source, destination), (source, destination port)
    let state = |(netns, ts_ns, sock), (family, saddr, daddr), (sport, dport)| TraceEvent {
        kind: Kind::State,
        ts_ns,
        pid: 0,
        tid: 0,
        comm: Comm::default(),
        cgroup_id: 0,
        netns,
        sock,
        family,
        saddr,
        sport,
        daddr,
        dport,
        old_state,
        new_state,
        errno: None,
        bound_port: None,
    };
    match head >> 16 {
        compact::V4 => {
            // SAFETY: a whole slot; plain old data, read unaligned.
            let c: CompactV4 = unsafe { std::ptr::read_unaligned(slot.as_ptr().cast()) };
            let (saddr, daddr) = (Ipv4Addr::from(c.saddr), Ipv4Addr::from(c.daddr));
            Ok(TraceEvent {
                pid: c.pid,
                cgroup_id: c.cgroup_id,
                comm: Comm::from_padded(c.comm),
                ..state(
                    (c.netns, c.ts_ns, c.skaddr),
                    (Family::Ipv4, saddr.into(), daddr.into()),
                    (c.sport, c.dport),
                )
            })
        }
        compact::V6 => {
            // SAFETY: as above.
            let c: CompactV6 = unsafe { std::ptr::read_unaligned(slot.as_ptr().cast()) };
            let (saddr, daddr) = (Ipv6Addr::from(c.saddr), Ipv6Addr::from(c.daddr));
            Ok(state(
                (c.netns, c.ts_ns, c.skaddr),
                (Family::Ipv6, saddr.into(), daddr.into()),
                (c.sport, c.dport),
            ))
        }
        _ => Err(DecodeError::Kind(head)),
    }
}

/// The bytes of a plain-old-data record, as the kernel writes it.
#[cfg(test)]
pub(crate) fn bytes_of<T: Copy>(r: &T) -> Vec<u8> {
    // SAFETY: T is plain old data (the `portx_common` records).
    unsafe { std::slice::from_raw_parts((r as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use portx_common::{
        COMM_LEN, Event, EventHeader, EventKind, Owner, compact_head,
        uapi::{
            AF_INET, AF_INET6, IPPROTO_TCP, TCP_CLOSE, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_SYN_SENT,
        },
    };

    use super::*;
    use crate::events::{decode, decode_event};

    /// The full record a compact one stands for, `None` if `bytes` is not one: what
    /// [`decode_slot`] must agree with. The protocol is not carried (nothing on the
    /// accounting path reads it): TCP. The owner of an IPv4 record has no thread id.
    fn expand(bytes: &[u8]) -> Option<Event> {
        if bytes.len() != SLOT_BYTES {
            return None;
        }
        let head = first_word(bytes)?;
        let (old_state, new_state) = ((head >> 8) as u8, head as u8);
        let state = |netns, ts_ns, owner, skaddr, family, saddr, daddr, sport, dport| Event {
            header: EventHeader {
                kind: EventKind::State as u32,
                netns,
                ts_ns,
                owner,
            },
            skaddr,
            saddr,
            daddr,
            sport,
            dport,
            family,
            protocol: IPPROTO_TCP,
            old_state,
            new_state,
            bound_port: 0,
            errno: 0,
        };
        match head >> 16 {
            compact::V4 => {
                // SAFETY: length checked; plain old data, read unaligned.
                let c: CompactV4 = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                let owner = Owner {
                    pid: c.pid,
                    tid: 0,
                    cgroup_id: c.cgroup_id,
                    comm: c.comm,
                };
                Some(state(
                    c.netns,
                    c.ts_ns,
                    owner,
                    c.skaddr,
                    AF_INET,
                    widen(c.saddr),
                    widen(c.daddr),
                    c.sport,
                    c.dport,
                ))
            }
            compact::V6 => {
                // SAFETY: as above.
                let c: CompactV6 = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                Some(state(
                    c.netns,
                    c.ts_ns,
                    Owner::default(),
                    c.skaddr,
                    AF_INET6,
                    c.saddr,
                    c.daddr,
                    c.sport,
                    c.dport,
                ))
            }
            _ => None,
        }
    }

    /// An IPv4 address in the full record's 16-byte field (the first 4 bytes).
    fn widen(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn comm(name: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    #[test]
    fn an_ipv4_state_change_reads_as_the_full_event_it_stands_for() {
        let c = CompactV4 {
            head: compact_head(compact::V4, TCP_CLOSE, TCP_SYN_SENT),
            netns: 4026531840,
            ts_ns: 123_456_789,
            skaddr: 0xffff_8880_0000_1000,
            cgroup_id: 7,
            saddr: [10, 0, 0, 1],
            daddr: [10, 0, 0, 2],
            sport: 40000,
            dport: 3306,
            pid: 42,
            comm: comm("curl"),
        };
        let b = bytes_of(&c);
        assert!(is_compact(&b));
        assert_eq!(ts_ns(&b.clone().try_into().unwrap()), 123_456_789);
        let ev = decode(&b).unwrap();
        assert_eq!(ev.kind, crate::events::Kind::State);
        assert_eq!(
            (ev.netns, ev.ts_ns, ev.sock),
            (4026531840, 123_456_789, 0xffff_8880_0000_1000)
        );
        assert_eq!(
            (ev.pid, ev.tid, ev.cgroup_id, ev.comm.as_str()),
            (42, 0, 7, "curl")
        );
        assert_eq!(ev.family, Family::Ipv4);
        assert_eq!(ev.saddr.to_string(), "10.0.0.1");
        assert_eq!(ev.daddr.to_string(), "10.0.0.2");
        assert_eq!((ev.sport, ev.dport), (40000, 3306));
        assert_eq!(
            (ev.old_state, ev.new_state),
            (Some(TcpState::Close), Some(TcpState::SynSent))
        );
        // The same answer as the full record the trace path sends for it.
        let full = expand(&b).unwrap();
        assert_eq!(decode_event(&full).unwrap(), ev);
    }

    #[test]
    fn an_ipv6_state_change_without_owner_reads_as_one() {
        let mut saddr = [0; 16];
        saddr[15] = 1;
        let mut daddr = [0; 16];
        daddr[..2].copy_from_slice(&[0xfd, 0x00]);
        daddr[15] = 2;
        let c = CompactV6 {
            head: compact_head(compact::V6, TCP_ESTABLISHED, TCP_FIN_WAIT1),
            netns: 1,
            ts_ns: 5,
            skaddr: 9,
            saddr,
            daddr,
            sport: 50000,
            dport: 443,
            _pad: 0,
        };
        let ev = decode(&bytes_of(&c)).unwrap();
        assert_eq!(ev.family, Family::Ipv6);
        assert_eq!(ev.saddr.to_string(), "::1");
        assert_eq!(ev.daddr.to_string(), "fd00::2");
        assert_eq!((ev.pid, ev.comm.as_str()), (0, ""));
        assert_eq!(
            (ev.old_state, ev.new_state),
            (Some(TcpState::Established), Some(TcpState::FinWait1))
        );
        let full = expand(&bytes_of(&c)).unwrap();
        assert_eq!(decode_event(&full).unwrap(), ev);
        assert_eq!(ts_ns(&bytes_of(&c).try_into().unwrap()), 5);
    }

    #[test]
    fn a_full_event_or_an_unknown_tag_is_not_taken_for_a_compact_record() {
        let full = bytes_of(&crate::events::tests::raw_event(EventKind::State));
        assert!(!is_compact(&full));
        assert!(expand(&full[..SLOT_BYTES]).is_none());
        let mut odd = bytes_of(&CompactV4::default());
        odd[..4].copy_from_slice(&compact_head(9, 1, 2).to_ne_bytes());
        assert!(is_compact(&odd));
        assert!(expand(&odd).is_none());
        assert!(decode(&odd).is_err());
        // Cut short.
        let mut short = bytes_of(&CompactV4::default());
        short[..4].copy_from_slice(&compact_head(compact::V4, 1, 2).to_ne_bytes());
        assert!(expand(&short[..40]).is_none());
        assert!(!is_compact(&[1, 0]));
    }
}

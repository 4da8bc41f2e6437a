//! Framing: `type u16 | flags u16 | len u32 | crc32c u32 | body[len]`, little endian
//! (see docs/capture-format.md). One frame is one write unit: its checksum tells a
//! complete frame from a torn or damaged one, its length lets a reader skip it.

use std::{borrow::Cow, io::Read};

/// Bytes before the body.
pub const HEADER_LEN: usize = 12;
/// No frame body (stored or decompressed) is larger: a garbage length is corruption,
/// not an allocation.
pub const MAX_BODY: u32 = 64 << 20;
/// Flag bit 0: the stored body is one zstd frame.
pub const FLAG_ZSTD: u16 = 1;
/// Flags this version understands; a frame with any other bit set is skipped.
pub const KNOWN_FLAGS: u16 = FLAG_ZSTD;
/// zstd level: fast, and most of the gain on event batches.
const ZSTD_LEVEL: i32 = 3;
/// Bodies shorter than this are stored plain: compression would not pay.
const COMPRESS_MIN: usize = 128;
/// The largest zstd window a reader accepts (16 MiB): bounds the decoder's memory
/// whatever a damaged frame header claims. Level 3 uses far less.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// The frame types of format version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameType {
    Header = 1,
    State = 2,
    Settings = 3,
    TimeWait = 4,
    Events = 5,
    Counters = 6,
    Trigger = 7,
    End = 8,
    Cgroups = 9,
    BaselineGone = 10,
    NetnsGone = 11,
}

impl FrameType {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Header,
            2 => Self::State,
            3 => Self::Settings,
            4 => Self::TimeWait,
            5 => Self::Events,
            6 => Self::Counters,
            7 => Self::Trigger,
            8 => Self::End,
            9 => Self::Cgroups,
            10 => Self::BaselineGone,
            11 => Self::NetnsGone,
            _ => return None,
        })
    }
}

/// The fixed part of a frame, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub ty: u16,
    pub flags: u16,
    pub len: u32,
    pub crc: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            ty: u16_at(0),
            flags: u16_at(2),
            len: u32_at(4),
            crc: u32_at(8),
        }
    }

    /// The checksum of a frame with this header's first 8 bytes and `body`.
    fn crc_of(ty: u16, flags: u16, len: u32, body: &[u8]) -> u32 {
        let mut head = [0u8; 8];
        head[..2].copy_from_slice(&ty.to_le_bytes());
        head[2..4].copy_from_slice(&flags.to_le_bytes());
        head[4..].copy_from_slice(&len.to_le_bytes());
        crc32c::crc32c_append(crc32c::crc32c(&head), body)
    }

    /// Whether `body` (as stored) is the one this header was written with.
    pub fn checks(&self, body: &[u8]) -> bool {
        body.len() == self.len as usize
            && Self::crc_of(self.ty, self.flags, self.len, body) == self.crc
    }
}

/// Appends one frame of type `ty` holding `body`, compressed when that makes it
/// smaller. `body` must not exceed [`MAX_BODY`] (the encoders keep far below it).
pub fn write_frame(out: &mut Vec<u8>, ty: FrameType, body: &[u8]) {
    let compressed = if body.len() >= COMPRESS_MIN {
        zstd::bulk::compress(body, ZSTD_LEVEL)
            .ok()
            .filter(|c| c.len() < body.len())
    } else {
        None
    };
    let (flags, stored) = match &compressed {
        Some(c) => (FLAG_ZSTD, c.as_slice()),
        None => (0, body),
    };
    write_raw(out, ty as u16, flags, stored);
}

/// Appends a frame with exactly these fields (tests use it for foreign frames).
pub fn write_raw(out: &mut Vec<u8>, ty: u16, flags: u16, stored: &[u8]) {
    // Bodies are bounded by MAX_BODY, far below u32::MAX.
    let len = u32::try_from(stored.len()).unwrap_or(u32::MAX);
    out.reserve(HEADER_LEN + stored.len());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&FrameHeader::crc_of(ty, flags, len, stored).to_le_bytes());
    out.extend_from_slice(stored);
}

/// The body as encoded, from the body as stored.
pub fn unpack(flags: u16, stored: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if flags & FLAG_ZSTD == 0 {
        return Ok(Cow::Borrowed(stored));
    }
    let mut dec = zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|e| format!("zstd: {e}"))?
        .single_frame();
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::new();
    // One byte over the limit tells "too large" from "exactly the limit".
    dec.take(u64::from(MAX_BODY) + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() > MAX_BODY as usize {
        return Err(format!("decompressed body exceeds {MAX_BODY} bytes"));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_type_flags_length_and_checksum() {
        let mut out = Vec::new();
        write_frame(&mut out, FrameType::Counters, b"abc");
        assert_eq!(out.len(), HEADER_LEN + 3);
        let h = FrameHeader::parse(out[..HEADER_LEN].try_into().unwrap());
        assert_eq!((h.ty, h.flags, h.len), (6, 0, 3));
        assert!(h.checks(&out[HEADER_LEN..]));
        assert!(!h.checks(b"abd"));
        assert!(!h.checks(b"ab"));
        // The checksum is CRC-32C over the first 8 bytes and the body.
        let mut covered = out[..8].to_vec();
        covered.extend_from_slice(b"abc");
        assert_eq!(h.crc, crc32c::crc32c(&covered));
        // The standard CRC-32C check value, as the format document defines it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn large_repetitive_bodies_are_compressed_and_unpacked() {
        let body = vec![7u8; 10_000];
        let mut out = Vec::new();
        write_frame(&mut out, FrameType::State, &body);
        let h = FrameHeader::parse(out[..HEADER_LEN].try_into().unwrap());
        assert_eq!(h.flags, FLAG_ZSTD);
        assert!(out.len() < 200);
        assert!(h.checks(&out[HEADER_LEN..]));
        assert_eq!(unpack(h.flags, &out[HEADER_LEN..]).unwrap(), &body[..]);
        assert!(unpack(FLAG_ZSTD, b"not zstd").is_err());
        assert_eq!(unpack(0, b"plain").unwrap(), &b"plain"[..]);
    }

    #[test]
    fn frame_types_are_numbered_as_documented() {
        for v in 1..=11 {
            assert_eq!(FrameType::from_u16(v).map(|t| t as u16), Some(v));
        }
        assert_eq!(FrameType::from_u16(0), None);
        assert_eq!(FrameType::from_u16(12), None);
    }
}

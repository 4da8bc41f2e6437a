//! Reading capture files frame by frame: every complete frame before the first torn
//! or damaged one is returned, whatever the input; nothing is allocated beyond the
//! frame size limit.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, BufReader, Read},
    path::Path,
};

use super::{
    MAGIC, Record, body, codec,
    frame::{self, FrameHeader, FrameType, HEADER_LEN, KNOWN_FLAGS, MAX_BODY},
};
use crate::{events::TraceEvent, model::input::Input};

/// Why a file cannot be read at all (not a capture file, unreadable); one line, with
/// the file and, once it is open, the offset.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{what}", offset.map_or(String::new(), |o| format!("offset {o}: ")))]
pub struct CaptureError {
    pub file: String,
    /// None when the file could not be opened.
    pub offset: Option<u64>,
    pub what: String,
}

/// How far a file could be read. A torn or corrupt frame ends the reading: what came
/// before it is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStatus {
    /// Complete frames read (unknown ones included).
    pub frames: u64,
    /// Bytes of the magic and of those frames.
    pub bytes: u64,
    /// An incomplete last frame (a write cut by kill -9, a power cut, a full disk):
    /// its offset.
    pub torn_tail: Option<u64>,
    /// A complete frame whose checksum or content is wrong: its offset and why.
    pub corrupt: Option<(u64, String)>,
    /// Frames of types (or with flags) this version does not know, skipped.
    pub unknown_frames: u64,
}

/// Reads records from a capture. Two reads per frame (header, body): give it a
/// buffered reader ([`Reader::open`] does).
pub struct Reader<R: Read> {
    r: R,
    name: String,
    status: ReadStatus,
    /// Events of the current events frame not yet returned.
    pending: VecDeque<TraceEvent>,
    done: bool,
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        let f = File::open(path).map_err(|e| CaptureError {
            file: name.clone(),
            offset: None,
            what: e.to_string(),
        })?;
        Self::new(BufReader::with_capacity(256 << 10, f), &name)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes it got.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What one frame held.
enum Frame {
    Record(Record),
    Events(Vec<TraceEvent>),
    Skipped,
}

impl<R: Read> Reader<R> {
    /// Checks the magic: a foreign or empty file is an error here.
    pub fn new(mut r: R, name: &str) -> Result<Self, CaptureError> {
        // At its start: the offset says nothing.
        let err = |what: String| CaptureError {
            file: name.to_owned(),
            offset: None,
            what,
        };
        let mut m = [0u8; MAGIC.len()];
        let got = read_full(&mut r, &mut m).map_err(|e| err(e.to_string()))?;
        if got < m.len() || m != MAGIC {
            return Err(err(format!(
                "not a portx capture (magic {:?}, expected {:?})",
                String::from_utf8_lossy(&m[..got]),
                String::from_utf8_lossy(&MAGIC)
            )));
        }
        Ok(Self {
            r,
            name: name.to_owned(),
            status: ReadStatus {
                bytes: MAGIC.len() as u64,
                ..ReadStatus::default()
            },
            pending: VecDeque::new(),
            done: false,
        })
    }

    pub fn status(&self) -> &ReadStatus {
        &self.status
    }

    fn io_error(&self, e: io::Error) -> CaptureError {
        CaptureError {
            file: self.name.clone(),
            offset: Some(self.status.bytes),
            what: e.to_string(),
        }
    }

    /// Reads the next frame; `Ok(None)` at the end (clean, torn or corrupt: the
    /// status says which).
    fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let offset = self.status.bytes;
        let mut hb = [0u8; HEADER_LEN];
        let got = read_full(&mut self.r, &mut hb)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            self.status.torn_tail = Some(offset);
            return Ok(None);
        }
        let h = FrameHeader::parse(&hb);
        if h.len > MAX_BODY {
            self.status.corrupt = Some((offset, format!("frame length {} over the limit", h.len)));
            return Ok(None);
        }
        // Grows with what is really there: a torn frame claiming 64 MiB costs only
        // the bytes present.
        let mut stored = Vec::new();
        (&mut self.r)
            .take(u64::from(h.len))
            .read_to_end(&mut stored)?;
        if stored.len() < h.len as usize {
            self.status.torn_tail = Some(offset);
            return Ok(None);
        }
        if !h.checks(&stored) {
            self.status.corrupt = Some((offset, "checksum mismatch".into()));
            return Ok(None);
        }
        self.status.frames += 1;
        self.status.bytes = offset + (HEADER_LEN + stored.len()) as u64;
        let ty = match FrameType::from_u16(h.ty) {
            Some(ty) if h.flags & !KNOWN_FLAGS == 0 => ty,
            // A newer writer's frame type, or an encoding this version cannot
            // undo: the checksum says it is intact, so skip it.
            _ => {
                self.status.unknown_frames += 1;
                return Ok(Some(Frame::Skipped));
            }
        };
        let decoded = frame::unpack(h.flags, &stored).and_then(|b| match ty {
            FrameType::Events => codec::decode(&b).map(Frame::Events),
            _ => body::decode(ty, &b).map(Frame::Record),
        });
        match decoded {
            Ok(f) => Ok(Some(f)),
            Err(why) => {
                self.status.frames -= 1;
                self.status.bytes = offset;
                self.status.corrupt = Some((offset, why));
                Ok(None)
            }
        }
    }
}

impl<R: Read> Iterator for Reader<R> {
    /// An `Err` only for an I/O error; torn and corrupt frames end the iteration and
    /// are in [`Reader::status`].
    type Item = Result<Record, CaptureError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(Record::Input(Input::Event(e))));
            }
            if self.done {
                return None;
            }
            match self.next_frame() {
                Ok(Some(Frame::Record(r))) => return Some(Ok(r)),
                Ok(Some(Frame::Events(ev))) => self.pending = ev.into(),
                Ok(Some(Frame::Skipped)) => {}
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(self.io_error(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::capture::{
        frame::{FLAG_ZSTD, write_raw},
        testdata,
        writer::Encoder,
    };

    fn read_all(bytes: &[u8]) -> Result<(Vec<Record>, ReadStatus), CaptureError> {
        let mut r = Reader::new(bytes, "test")?;
        let recs = r.by_ref().collect::<Result<Vec<_>, _>>()?;
        Ok((recs, r.status().clone()))
    }

    #[test]
    fn every_record_round_trips() {
        let (file, frames) = testdata::sample_file();
        let (recs, st) = read_all(&file).unwrap();
        let want: Vec<Record> = frames.into_iter().flat_map(|(_, r)| r).collect();
        assert_eq!(recs, want);
        assert_eq!(st.frames, 14);
        assert_eq!(st.bytes, file.len() as u64);
        assert_eq!(
            (st.torn_tail, st.corrupt, st.unknown_frames),
            (None, None, 0)
        );
        // Every non-event kind, each alone.
        let mut enc = Encoder::new();
        for r in testdata::non_event_records() {
            let mut out = MAGIC.to_vec();
            enc.record(&r, &mut out);
            assert_eq!(read_all(&out).unwrap().0, vec![r]);
        }
    }

    #[test]
    fn foreign_and_empty_files_are_refused_at_their_start() {
        for bytes in [&b""[..], b"PORTX", b"PK\x03\x04 zip file"] {
            let e = read_all(bytes).err().unwrap();
            assert_eq!(e.offset, None);
            assert!(e.what.starts_with("not a portx capture (magic"), "{e}");
            // One line: the file, then why; no offset at the start.
            assert!(
                e.to_string().starts_with("test: not a portx capture"),
                "{e}"
            );
        }
        assert!(read_all(b"PORTXCAP").unwrap().0.is_empty());
    }

    #[test]
    fn a_cut_at_every_offset_keeps_the_complete_frames() {
        let (file, frames) = testdata::sample_file();
        for cut in 0..=file.len() {
            let res = read_all(&file[..cut]);
            if cut < MAGIC.len() {
                assert!(res.is_err(), "cut {cut}");
                continue;
            }
            let (recs, st) = res.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let complete = frames.iter().take_while(|(end, _)| *end <= cut);
            let want: Vec<Record> = complete.clone().flat_map(|(_, r)| r.clone()).collect();
            assert_eq!(recs, want, "cut {cut}");
            let last_end = complete.last().map_or(MAGIC.len(), |(end, _)| *end);
            assert_eq!(st.bytes, last_end as u64, "cut {cut}");
            assert_eq!(st.corrupt, None, "cut {cut}");
            let torn = (cut > last_end).then_some(last_end as u64);
            assert_eq!(st.torn_tail, torn, "cut {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_is_corruption_at_its_frame() {
        let (file, frames) = testdata::sample_file();
        let mut start = MAGIC.len();
        for (i, (end, _)) in frames.iter().enumerate() {
            for pos in [start + 1, start + HEADER_LEN, end - 1] {
                let mut bad = file.clone();
                bad[pos] ^= 0x20;
                let (recs, st) = read_all(&bad).unwrap();
                let want: Vec<Record> = frames[..i].iter().flat_map(|(_, r)| r.clone()).collect();
                assert_eq!(recs, want, "frame {i} byte {pos}");
                let (at, why) = st.corrupt.clone().unwrap();
                assert_eq!(at, start as u64, "frame {i} byte {pos}: {why}");
                assert_eq!(st.torn_tail, None);
            }
            start = *end;
        }
    }

    #[test]
    fn length_over_the_limit_is_corruption_not_an_allocation() {
        let mut f = MAGIC.to_vec();
        write_raw(&mut f, 6, 0, b"");
        f[12..16].copy_from_slice(&(MAX_BODY + 1).to_le_bytes());
        let st = read_all(&f).unwrap().1;
        assert_eq!(st.corrupt.unwrap().0, 8);
        // Within the limit but past the end: a torn tail, read as far as it goes.
        f[12..16].copy_from_slice(&MAX_BODY.to_le_bytes());
        assert_eq!(read_all(&f).unwrap().1.torn_tail, Some(8));
    }

    #[test]
    fn unknown_types_and_flags_are_skipped_and_counted() {
        let (file, frames) = testdata::sample_file();
        let mut f = file[..frames[0].0].to_vec();
        write_raw(&mut f, 999, 0, b"from the future");
        write_raw(&mut f, 6, 0x8000, b"an encoding not known");
        f.extend_from_slice(&file[frames[0].0..]);
        let (recs, st) = read_all(&f).unwrap();
        assert_eq!(recs, read_all(&file).unwrap().0);
        assert_eq!((st.unknown_frames, st.frames), (2, 16));
        assert_eq!(st.corrupt, None);
    }

    #[test]
    fn intact_frames_with_bad_content_are_corrupt() {
        for (ty, flags, body) in [
            (5u16, 0u16, &b"\x01\xff"[..]),
            (1, 0, b""),
            (6, FLAG_ZSTD, b"not zstd"),
            (8, 0, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        ] {
            let mut f = MAGIC.to_vec();
            write_raw(&mut f, ty, flags, body);
            let (recs, st) = read_all(&f).unwrap();
            assert!(recs.is_empty());
            assert_eq!(st.corrupt.as_ref().map(|c| c.0), Some(8), "type {ty}");
            assert_eq!((st.frames, st.bytes), (0, 8));
        }
    }

    #[test]
    fn io_errors_are_reported_once() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = self.0.min(buf.len());
                buf[..n].copy_from_slice(&MAGIC[..n]);
                self.0 -= n;
                Ok(n)
            }
        }
        let mut r = Reader::new(Failing(8), "f").unwrap();
        let e = r.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        assert!(r.next().is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&tail);
            let (_, st) = read_all(&f).unwrap();
            prop_assert!(st.bytes <= f.len() as u64);
        }

        #[test]
        fn mutated_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let (mut f, _) = testdata::sample_file();
            for (at, v) in edits {
                let i = MAGIC.len() + at.index(f.len() - MAGIC.len());
                f[i] = v;
            }
            let keep = MAGIC.len() + cut.index(f.len() - MAGIC.len() + 1);
            f.truncate(keep);
            let (_, st) = read_all(&f).unwrap();
            prop_assert!(st.bytes <= f.len() as u64);
        }

        #[test]
        fn valid_frames_with_arbitrary_bodies_never_panic(
            ty in 1u16..=9,
            zstd in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            // A right checksum gets the garbage past the CRC, into the decoders.
            let mut f = MAGIC.to_vec();
            let stored = if zstd { zstd::bulk::compress(&body, 1).unwrap_or_default() } else { body };
            write_raw(&mut f, ty, if zstd { FLAG_ZSTD } else { 0 }, &stored);
            let _ = read_all(&f).unwrap();
        }
    }
}

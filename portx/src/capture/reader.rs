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
/// the file and the offset.
#[derive(Debug, thiserror::Error)]
#[error("{file}: offset {offset}: {what}")]
pub struct CaptureError {
    pub file: String,
    pub offset: u64,
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
            offset: 0,
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
        let err = |what: String| CaptureError {
            file: name.to_owned(),
            offset: 0,
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
            offset: self.status.bytes,
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

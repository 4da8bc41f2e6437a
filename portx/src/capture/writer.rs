//! Writing frames: an [`Encoder`] turns records into frame bytes (no I/O, shared by
//! files and the flight ring); [`CaptureFile`] and [`RotatingSet`] put them on disk.
//! CONTRACT STUB: signatures are the interface other modules use.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{FileHeader, Record};
use crate::events::TraceEvent;

/// Turns records into frame bytes. Events are batched: [`Encoder::push_event`]
/// buffers, [`Encoder::flush_events`] emits one events frame.
#[derive(Default)]
pub struct Encoder {}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }
    /// The magic followed by the header frame: the start of every file.
    pub fn file_start(&mut self, _h: &FileHeader, _out: &mut Vec<u8>) {
        unimplemented!()
    }
    pub fn push_event(&mut self, _e: &TraceEvent) {
        unimplemented!()
    }
    /// Events buffered and not yet framed.
    pub fn pending_events(&self) -> usize {
        unimplemented!()
    }
    /// Appends one events frame holding every buffered event (nothing when none);
    /// returns how many events it holds.
    pub fn flush_events(&mut self, _out: &mut Vec<u8>) -> usize {
        unimplemented!()
    }
    /// Appends the frame of a non-event record (an `Input::Event` is pushed instead),
    /// after flushing buffered events so the order is kept.
    pub fn record(&mut self, _r: &Record, _out: &mut Vec<u8>) {
        unimplemented!()
    }
}

/// One capture file on disk: created 0600, never over an existing file unless
/// `force`. Writes are whole buffers of whole frames; after an error (a full disk)
/// what was written before stays readable, a torn last frame at worst.
pub struct CaptureFile {}

impl CaptureFile {
    pub fn create(_path: &Path, _force: bool) -> io::Result<Self> {
        unimplemented!()
    }
    pub fn write(&mut self, _bytes: &[u8]) -> io::Result<()> {
        unimplemented!()
    }
    /// fdatasync: a power cut then loses nothing written before.
    pub fn sync(&mut self) -> io::Result<()> {
        unimplemented!()
    }
    pub fn bytes(&self) -> u64 {
        unimplemented!()
    }
    pub fn path(&self) -> &Path {
        unimplemented!()
    }
}

/// When a rotating set starts a new file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Start a new file once the current one has this many bytes.
    pub max_bytes: Option<u64>,
    /// Start a new file at every multiple of this many seconds of wall-clock time
    /// (aligned to the clock, so an idle recorder rotates too).
    pub every_s: Option<u64>,
    /// Keep at most this many files (the oldest removed).
    pub max_files: Option<usize>,
}

/// Files named `STEM-YYYYMMDDTHHMMSSZ.portx` (UTC start time) in one folder.
pub struct RotatingSet {}

impl RotatingSet {
    /// Starts the first file at wall-clock time `wall_ns`, writing `start` (file start,
    /// state) first.
    pub fn create(
        _base: &Path,
        _policy: RotationPolicy,
        _force: bool,
        _wall_ns: i64,
        _start: &[u8],
    ) -> io::Result<Self> {
        unimplemented!()
    }
    /// Whether the current file should end now.
    pub fn due(&self, _wall_ns: i64) -> bool {
        unimplemented!()
    }
    /// Ends the current file (its last bytes `end` written first) and starts the next
    /// one with `start`; removes the oldest beyond `max_files`. Returns the new path.
    pub fn rotate(&mut self, _end: &[u8], _wall_ns: i64, _start: &[u8]) -> io::Result<PathBuf> {
        unimplemented!()
    }
    pub fn current(&mut self) -> &mut CaptureFile {
        unimplemented!()
    }
    /// Every file written so far that still exists, oldest first.
    pub fn files(&self) -> Vec<PathBuf> {
        unimplemented!()
    }
}

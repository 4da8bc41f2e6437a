//! Reading capture files frame by frame. CONTRACT STUB: signatures are the interface.

use std::{io::Read, path::Path};

use super::Record;

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
    pub frames: u64,
    pub bytes: u64,
    /// An incomplete last frame (a write cut by kill -9, a power cut, a full disk):
    /// its offset.
    pub torn_tail: Option<u64>,
    /// A complete frame whose checksum or content is wrong: its offset and why.
    pub corrupt: Option<(u64, String)>,
    /// Frames of types this version does not know, skipped.
    pub unknown_frames: u64,
}

pub struct Reader<R: Read> {
    _r: R,
}

impl Reader<std::io::BufReader<std::fs::File>> {
    pub fn open(_path: &Path) -> Result<Self, CaptureError> {
        unimplemented!()
    }
}

impl<R: Read> Reader<R> {
    /// Checks the magic: a foreign or empty file is an error here.
    pub fn new(_r: R, _name: &str) -> Result<Self, CaptureError> {
        unimplemented!()
    }
    pub fn status(&self) -> &ReadStatus {
        unimplemented!()
    }
}

impl<R: Read> Iterator for Reader<R> {
    /// An `Err` only for an I/O error; torn and corrupt frames end the iteration and
    /// are in [`Reader::status`].
    type Item = Result<Record, CaptureError>;
    fn next(&mut self) -> Option<Self::Item> {
        unimplemented!()
    }
}

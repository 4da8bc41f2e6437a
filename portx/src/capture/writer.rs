//! Writing frames: an [`Encoder`] turns records into frame bytes (no I/O, shared by
//! files and the flight ring); [`CaptureFile`] puts them on disk and [`RotatingSet`]
//! (in `rotate`) spreads them over files.

use std::{
    fs::{File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

pub use super::rotate::{RotatingSet, RotationPolicy};
use super::{
    FileHeader, MAGIC, Record, body,
    codec::{BatchEncoder, MAX_BATCH_EVENTS},
    frame::{self, FrameType},
};
use crate::{events::TraceEvent, model::input::Input};

/// Turns records into frame bytes. Events are batched: [`Encoder::push_event`]
/// buffers, [`Encoder::flush_events`] emits the events frame (more than one when the
/// batch outgrew [`MAX_BATCH_EVENTS`]).
#[derive(Default)]
pub struct Encoder {
    batch: BatchEncoder,
    /// Events frames completed when a batch reached its limit, not yet handed out.
    full: Vec<u8>,
    full_events: usize,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The magic followed by the header frame: the start of every file. Nothing else
    /// writes the magic: [`Encoder::record`] of a header is the frame alone.
    pub fn file_start(&mut self, h: &FileHeader, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        self.record(&Record::Header(Box::new(h.clone())), out);
    }

    pub fn push_event(&mut self, e: &TraceEvent) {
        self.batch.push(e);
        if self.batch.len() >= MAX_BATCH_EVENTS {
            self.full_events += self.batch.len();
            frame::write_frame(&mut self.full, FrameType::Events, &self.batch.finish());
        }
    }

    /// Events buffered and not yet handed out.
    pub fn pending_events(&self) -> usize {
        self.full_events + self.batch.len()
    }

    /// Appends the events frame(s) holding every buffered event (nothing when none);
    /// returns how many events they hold.
    pub fn flush_events(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.pending_events();
        out.append(&mut self.full);
        self.full_events = 0;
        if !self.batch.is_empty() {
            frame::write_frame(out, FrameType::Events, &self.batch.finish());
        }
        n
    }

    /// Appends the frame of a non-event record (an `Input::Event` is pushed instead),
    /// after flushing buffered events so the order is kept.
    pub fn record(&mut self, r: &Record, out: &mut Vec<u8>) {
        if let Record::Input(Input::Event(e)) = r {
            self.push_event(e);
            return;
        }
        self.flush_events(out);
        if let Some((ty, b)) = body::encode(r) {
            frame::write_frame(out, ty, &b);
        }
    }
}

/// One capture file on disk: created 0600, never over an existing file unless
/// `force`. Writes are whole buffers of whole frames; after an error (a full disk)
/// what was written before stays readable, a torn last frame at worst.
pub struct CaptureFile {
    file: File,
    path: PathBuf,
    bytes: u64,
}

impl CaptureFile {
    pub fn create(path: &Path, force: bool) -> io::Result<Self> {
        let mut o = OpenOptions::new();
        o.write(true).mode(0o600);
        if force {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        let file = o.open(path)?;
        // `mode` applies only to a file created here: one overwritten with `force`
        // keeps its old bits unless they are set. Recordings name processes and
        // peers: owner only.
        file.set_permissions(Permissions::from_mode(0o600))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            bytes: 0,
        })
    }

    /// Appends `bytes`. On an error (ENOSPC) the bytes before stay as they were;
    /// [`CaptureFile::bytes`] then counts what the file really holds.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.bytes += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Ok(m) = self.file.metadata() {
                    self.bytes = m.len();
                }
                Err(e)
            }
        }
    }

    /// fdatasync: a power cut then loses nothing written before.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

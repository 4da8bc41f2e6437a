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

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::capture::{codec, reader::Reader, testdata};

    /// A fresh folder under the temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("portx-capture-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_connect_storm_takes_at_most_16_bytes_per_event() {
        let events = codec::tests::storm(10_000);
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        for e in &events {
            enc.push_event(e);
        }
        assert_eq!(enc.pending_events(), events.len());
        assert_eq!(enc.flush_events(&mut out), events.len());
        assert_eq!(enc.pending_events(), 0);
        let raw = codec::encode(&events).len();
        let per_event = out.len() as f64 / events.len() as f64;
        println!(
            "connect storm: {} events, {} bytes on disk = {per_event:.2} bytes/event \
             ({:.2} before zstd, in one batch)",
            events.len(),
            out.len(),
            raw as f64 / events.len() as f64
        );
        assert!(per_event <= 16.0, "{per_event:.2} bytes/event");
        // Split in frames at the batch limit, and read back exactly.
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&out);
        let mut r = Reader::new(file.as_slice(), "storm").unwrap();
        let back: Vec<TraceEvent> = r
            .by_ref()
            .map(|rec| match rec {
                Ok(Record::Input(Input::Event(e))) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            r.status().frames as usize,
            events.len().div_ceil(MAX_BATCH_EVENTS)
        );
        assert_eq!(back, events);
    }

    #[test]
    fn records_keep_their_order_around_buffered_events() {
        let mut enc = Encoder::new();
        let mut out = MAGIC.to_vec();
        let events = codec::tests::varied_events();
        let recs = testdata::non_event_records();
        let mut want = Vec::new();
        enc.record(&Record::Input(Input::Event(events[0].clone())), &mut out);
        enc.push_event(&events[1]);
        enc.record(&recs[5], &mut out);
        enc.push_event(&events[2]);
        let n = enc.flush_events(&mut out);
        assert_eq!(n, 1);
        assert_eq!(enc.flush_events(&mut out), 0, "nothing more to flush");
        for r in [&events[0], &events[1]] {
            want.push(Record::Input(Input::Event(r.clone())));
        }
        want.push(recs[5].clone());
        want.push(Record::Input(Input::Event(events[2].clone())));
        let got: Vec<Record> = Reader::new(out.as_slice(), "t")
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn the_magic_is_written_once_by_file_start() {
        let h = testdata::header();
        let mut enc = Encoder::new();
        let mut start = Vec::new();
        enc.file_start(&h, &mut start);
        assert!(start.starts_with(&MAGIC));
        let mut frame = Vec::new();
        enc.record(&Record::Header(Box::new(h)), &mut frame);
        assert_eq!(&start[MAGIC.len()..], &frame[..]);
    }

    #[test]
    fn files_are_0600_and_not_overwritten_without_force() {
        let dir = TempDir::new("file");
        let p = dir.0.join("x.portx");
        let mut f = CaptureFile::create(&p, false).unwrap();
        f.write(&MAGIC).unwrap();
        f.write(b"12").unwrap();
        f.sync().unwrap();
        assert_eq!((f.bytes(), f.path()), (10, p.as_path()));
        drop(f);
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let e = CaptureFile::create(&p, false).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap().len(), 10, "left alone");
        // With force: truncated, and 0600 even if it was not.
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        let f = CaptureFile::create(&p, true).unwrap();
        assert_eq!(f.bytes(), 0);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.len(), m.mode() & 0o777), (0, 0o600));
    }
}

//! Writing capture files on a thread of their own: `write` and `fdatasync` can take
//! tens of milliseconds when the disk is busy, and the loop that drains the ring
//! buffer must not wait for them (a connect storm fills a 16 MiB ring in about 0.4 s).
//!
//! The loop hands over whole frames; the thread writes and syncs them in order. A
//! bounded queue keeps memory bounded: a disk slower than the events makes the loop
//! wait, and then the kernel counts what the ring could not take (drops are never
//! silent). The first error (a full disk) stops the thread; the loop learns it at its
//! next hand-over and stops with it.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use super::writer::{CaptureFile, RotatingSet};

/// Where frames go.
pub enum Target {
    File(CaptureFile),
    Rotating(RotatingSet),
}

impl Target {
    fn current(&mut self) -> &mut CaptureFile {
        match self {
            Self::File(f) => f,
            Self::Rotating(r) => r.current(),
        }
    }
}

enum Job {
    /// Frames for the current file, then an fdatasync.
    Write(Vec<u8>),
    /// `end` closes the current file of the set, `start` begins the next.
    Rotate {
        end: Vec<u8>,
        wall_ns: i64,
        start: Vec<u8>,
    },
}

/// What the loop can read of the thread without waiting.
#[derive(Default)]
struct Shared {
    /// The first error, as one line naming the file.
    error: Mutex<Option<String>>,
    /// The current file and the files of the set so far.
    paths: Mutex<(PathBuf, Vec<PathBuf>)>,
    bytes: AtomicU64,
    /// The rotating set's size or time bound is reached.
    rotation_due: AtomicBool,
}

/// Frames up to this many hand-overs wait for the disk (each about a second of
/// events, or 65536 events at most).
const QUEUE: usize = 8;

pub struct DiskWriter {
    jobs: Option<mpsc::SyncSender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    rotating: bool,
}

fn describe(e: &std::io::Error, path: &std::path::Path) -> String {
    format!(
        "writing {}: {e}; what was written before is readable (portx report)",
        path.display()
    )
}

impl DiskWriter {
    /// Starts the thread; `wall_ns` gives the wall clock for rotation checks.
    pub fn start(mut target: Target, wall_ns: fn() -> i64) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let files = match &target {
            Target::File(f) => vec![f.path().to_owned()],
            Target::Rotating(r) => r.files(),
        };
        *lock(&shared.paths) = (target.current().path().to_owned(), files);
        shared
            .bytes
            .store(target.current().bytes(), Ordering::Relaxed);
        let rotating = matches!(target, Target::Rotating(_));
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let sh = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("portx-disk".into())
            .spawn(move || {
                for job in rx {
                    let r = match job {
                        // Nothing to write: only the rotation check below (an idle
                        // recorder still rotates on the clock).
                        Job::Write(b) if b.is_empty() => Ok(()),
                        Job::Write(b) => {
                            let f = target.current();
                            f.write(&b)
                                .and_then(|()| f.sync())
                                .map_err(|e| describe(&e, f.path()))
                        }
                        Job::Rotate {
                            end,
                            wall_ns,
                            start,
                        } => match &mut target {
                            Target::Rotating(set) => set
                                .rotate(&end, wall_ns, &start)
                                .map(|_| ())
                                .map_err(|e| describe(&e, set.current().path())),
                            Target::File(_) => Ok(()),
                        },
                    };
                    if let Err(e) = r {
                        *lock(&sh.error) = Some(e);
                        return;
                    }
                    let (path, files) = match &mut target {
                        Target::File(f) => (f.path().to_owned(), vec![f.path().to_owned()]),
                        Target::Rotating(set) => {
                            sh.rotation_due.store(set.due(wall_ns()), Ordering::Relaxed);
                            (set.current().path().to_owned(), set.files())
                        }
                    };
                    sh.bytes.store(target.current().bytes(), Ordering::Relaxed);
                    *lock(&sh.paths) = (path, files);
                }
            })?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
            shared,
            rotating,
        })
    }

    /// The thread's first error, if it has stopped on one.
    fn check(&self) -> Result<(), String> {
        match lock(&self.shared.error).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn send(&self, job: Job) -> Result<(), String> {
        self.check()?;
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            // The thread ended: it says why.
            self.check()?;
            return Err("the capture writer thread stopped".into());
        }
        Ok(())
    }

    /// Hands frames over; empty ones too (every flush), so that the thread checks
    /// the rotation bounds even while nothing happens.
    pub fn write(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.send(Job::Write(bytes))
    }

    pub fn rotate(&self, end: Vec<u8>, wall_ns: i64, start: Vec<u8>) -> Result<(), String> {
        self.send(Job::Rotate {
            end,
            wall_ns,
            start,
        })
    }

    /// A rotating set whose current file has reached its size or time bound (as of
    /// the last hand-over).
    pub fn rotation_due(&self) -> bool {
        self.rotating && self.shared.rotation_due.swap(false, Ordering::Relaxed)
    }

    /// Waits until every frame handed over is on disk; then what was written (see
    /// [`DiskWriter::describe`]), or the first error.
    pub fn finish(mut self) -> Result<String, String> {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.check()?;
        Ok(self.describe())
    }

    /// The current file, its bytes, and the set's files.
    pub fn describe(&self) -> String {
        let (path, files) = lock(&self.shared.paths).clone();
        if !self.rotating {
            return format!(
                "{}: {} bytes",
                path.display(),
                self.shared.bytes.load(Ordering::Relaxed)
            );
        }
        let bytes: u64 = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        format!(
            "{} files, {bytes} bytes, the newest {}",
            files.len(),
            path.display()
        )
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic on the thread would poison it; the data is still what it was.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("portx-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_in_order_and_reports_the_size() {
        let d = tmp("order");
        let p = d.join("x.portx");
        let w =
            DiskWriter::start(Target::File(CaptureFile::create(&p, false).unwrap()), || 0).unwrap();
        for i in 0..20u8 {
            w.write(vec![i; 1000]).unwrap();
        }
        w.finish().unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 20_000);
        assert!(
            b.chunks(1000)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&x| x == i as u8))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! A rotating set of capture files: `STEM-YYYYMMDDTHHMMSSZ.EXT` next to the path the
//! user gave, a new file by size or at wall-clock boundaries, the oldest removed
//! beyond a count.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::{civil, writer::CaptureFile};

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
pub struct RotatingSet {
    dir: PathBuf,
    stem: String,
    ext: String,
    policy: RotationPolicy,
    force: bool,
    current: CaptureFile,
    /// Where the current file's period ends (`every_s`), wall-clock ns.
    boundary_ns: Option<i128>,
    /// Files of this set, oldest first, the current one last.
    files: Vec<PathBuf>,
}

/// The first multiple of `every_s` seconds since the epoch after `wall_ns`.
fn next_boundary(wall_ns: i64, every_s: Option<u64>) -> Option<i128> {
    let period = i128::from(every_s.filter(|&s| s > 0)?) * 1_000_000_000;
    Some((i128::from(wall_ns).div_euclid(period) + 1) * period)
}

impl RotatingSet {
    /// Starts the first file at wall-clock time `wall_ns`, writing `start` (file start,
    /// state) first.
    pub fn create(
        base: &Path,
        policy: RotationPolicy,
        force: bool,
        wall_ns: i64,
        start: &[u8],
    ) -> io::Result<Self> {
        let dir = match base.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = base
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let ext = base
            .extension()
            .map_or_else(|| "portx".to_owned(), |e| e.to_string_lossy().into_owned());
        let path = dir.join(format!("{stem}-{}.{ext}", civil::compact_utc(wall_ns)));
        let mut current = CaptureFile::create(&path, force)?;
        current.write(start)?;
        Ok(Self {
            dir,
            stem,
            ext,
            policy,
            force,
            current,
            boundary_ns: next_boundary(wall_ns, policy.every_s),
            files: vec![path],
        })
    }

    /// Whether the current file should end now: its size reached the bound, or a
    /// wall-clock boundary passed since it started.
    pub fn due(&self, wall_ns: i64) -> bool {
        self.policy
            .max_bytes
            .is_some_and(|m| self.current.bytes() >= m)
            || self.boundary_ns.is_some_and(|b| i128::from(wall_ns) >= b)
    }

    /// The name of a file starting at `wall_ns`: `-N` added when this set already
    /// has a file of that second. A foreign file of that name is overwritten only
    /// with `force` (creating it fails otherwise).
    fn name_for(&self, wall_ns: i64) -> PathBuf {
        let t = civil::compact_utc(wall_ns);
        let mut path = self.dir.join(format!("{}-{t}.{}", self.stem, self.ext));
        let mut n = 1;
        while self.files.contains(&path) {
            path = self.dir.join(format!("{}-{t}-{n}.{}", self.stem, self.ext));
            n += 1;
        }
        path
    }

    /// Ends the current file (its last bytes `end` written first) and starts the next
    /// one with `start`; removes the oldest beyond `max_files`. Returns the new path.
    /// An error writing `end` leaves the current file current; the old files are
    /// removed before the new one is created, so a full disk gets the room back.
    pub fn rotate(&mut self, end: &[u8], wall_ns: i64, start: &[u8]) -> io::Result<PathBuf> {
        self.current.write(end)?;
        self.current.sync()?;
        let path = self.name_for(wall_ns);
        if let Some(max) = self.policy.max_files {
            // The new file takes one of the `max` places (at least one: itself).
            let excess = self.files.len().saturating_sub(max.max(1) - 1);
            self.remove_oldest(excess);
        }
        let mut next = CaptureFile::create(&path, self.force)?;
        next.write(start)?;
        self.current = next;
        self.files.push(path.clone());
        self.boundary_ns = next_boundary(wall_ns, self.policy.every_s);
        Ok(path)
    }

    /// Removes the `n` oldest files. One that cannot be removed (permissions changed
    /// under us) stays listed, and the set keeps recording.
    fn remove_oldest(&mut self, n: usize) {
        let mut kept = Vec::new();
        for old in self.files.drain(..n.min(self.files.len())) {
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => kept.push(old),
            }
        }
        kept.append(&mut self.files);
        self.files = kept;
    }

    pub fn current(&mut self) -> &mut CaptureFile {
        &mut self.current
    }

    /// Every file written so far that still exists, oldest first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.iter().filter(|p| p.exists()).cloned().collect()
    }
}

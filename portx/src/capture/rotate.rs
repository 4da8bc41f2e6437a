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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::capture::writer::tests::TempDir;

    const S: i64 = 1_000_000_000;
    /// 2024-03-01T00:00:00Z.
    const T0: i64 = 1_709_251_200 * S;

    fn names(set: &RotatingSet) -> Vec<String> {
        let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        set.files().iter().map(name).collect()
    }

    #[test]
    fn rotates_by_size() {
        let dir = TempDir::new("size");
        let policy = RotationPolicy {
            max_bytes: Some(100),
            ..RotationPolicy::default()
        };
        let mut set =
            RotatingSet::create(&dir.0.join("x.portx"), policy, false, T0, b"start").unwrap();
        assert_eq!(names(&set), ["x-20240301T000000Z.portx"]);
        assert!(!set.due(T0 + 3600 * S), "no time bound");
        set.current().write(&[0; 94]).unwrap();
        assert!(!set.due(T0));
        set.current().write(&[0]).unwrap();
        assert!(set.due(T0));
        let p = set.rotate(b"end", T0 + S / 2, b"start").unwrap();
        // Same second: `-1` added.
        assert_eq!(p, dir.0.join("x-20240301T000000Z-1.portx"));
        assert!(!set.due(T0));
        assert_eq!(set.current().bytes(), 5);
        set.rotate(b"", T0 + S / 2, b"").unwrap();
        set.rotate(b"", T0 + 61 * S, b"").unwrap();
        assert_eq!(
            names(&set),
            [
                "x-20240301T000000Z.portx",
                "x-20240301T000000Z-1.portx",
                "x-20240301T000000Z-2.portx",
                "x-20240301T000101Z.portx"
            ]
        );
        assert_eq!(std::fs::read(&set.files()[0]).unwrap().len(), 5 + 95 + 3);
        for f in set.files() {
            assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn rotates_at_wall_clock_boundaries_even_when_idle() {
        let dir = TempDir::new("time");
        let policy = RotationPolicy {
            every_s: Some(3600),
            ..RotationPolicy::default()
        };
        // Started at 00:59:30: the file ends at 01:00:00, not an hour later.
        let start = T0 + 3570 * S;
        let mut set = RotatingSet::create(&dir.0.join("rec"), policy, false, start, b"").unwrap();
        assert!(!set.due(T0 + 3599 * S + (S - 1)));
        assert!(set.due(T0 + 3600 * S));
        // Checked late (the timer was slow): still one rotation, then aligned again.
        set.rotate(b"", T0 + 3605 * S, b"").unwrap();
        assert!(!set.due(T0 + 7199 * S));
        assert!(set.due(T0 + 7200 * S));
        assert_eq!(
            names(&set),
            ["rec-20240301T005930Z.portx", "rec-20240301T010005Z.portx"]
        );
    }

    #[test]
    fn keeps_at_most_max_files() {
        let dir = TempDir::new("max");
        let policy = RotationPolicy {
            max_files: Some(2),
            ..RotationPolicy::default()
        };
        let base = dir.0.join("x.portx");
        let mut set = RotatingSet::create(&base, policy, false, T0, b"a").unwrap();
        let first = set.files()[0].clone();
        for i in 1..5 {
            set.rotate(b"", T0 + i * 60 * S, b"b").unwrap();
            assert!(set.files().len() <= 2);
        }
        assert!(!first.exists());
        assert_eq!(
            names(&set),
            ["x-20240301T000300Z.portx", "x-20240301T000400Z.portx"]
        );
        // A file of another run next to it is not part of the set.
        let other = dir.0.join("x-20000101T000000Z.portx");
        std::fs::write(&other, b"").unwrap();
        set.rotate(b"", T0 + 300 * S, b"").unwrap();
        assert!(other.exists());
        // max_files 1 (or 0): only the new file is kept.
        let policy = RotationPolicy {
            max_files: Some(0),
            ..RotationPolicy::default()
        };
        let mut one = RotatingSet::create(&dir.0.join("y"), policy, false, T0, b"").unwrap();
        one.rotate(b"", T0 + S, b"").unwrap();
        assert_eq!(names(&one), ["y-20240301T000001Z.portx"]);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = TempDir::new("force");
        let existing = dir.0.join("x-20240301T000000Z.portx");
        std::fs::write(&existing, b"keep me").unwrap();
        let base = dir.0.join("x.portx");
        let policy = RotationPolicy::default();
        let e = RotatingSet::create(&base, policy, false, T0, b"new")
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
        let set = RotatingSet::create(&base, policy, true, T0, b"new").unwrap();
        assert_eq!(std::fs::read(&existing).unwrap(), b"new");
        assert_eq!(set.files(), [existing]);
    }
}

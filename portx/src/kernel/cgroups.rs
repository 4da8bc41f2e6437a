//! Naming cgroup ids on the running host: the id the BPF side reports
//! (`bpf_get_current_cgroup_id()`, the kernfs node id of the cgroup2 directory) to
//! the cgroup's path, and the path to a workload ([`crate::workload`]).
//!
//! Lazily, once per id: an id is looked up the first time it is seen, by
//! `open_by_handle_at()` (kernfs exports cgroup2 directories by their id since 5.5:
//! <https://elixir.bootlin.com/linux/v6.12/source/fs/kernfs/mount.c>, `kernfs_fh_to_dentry`;
//! systemd's `cg_path_from_cgroupid()` does the same), which needs
//! `CAP_DAC_READ_SEARCH`; without it, by one walk of the cgroup2 tree that names every
//! cgroup in it, repeated for an unknown id at most once per [`REWALK_EVERY`]. A cgroup
//! removed before it was looked up stays unnamed.
//!
//! `--host-root DIR`: where the host's `/proc`, `/sys/fs/cgroup` and `/var/log` are
//! when portx runs in a container (a DaemonSet mounting them under `/host`).

use std::{
    collections::HashMap,
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::workload::{Named, Names, kubelet};

/// An unknown id makes a new walk of the tree (or a new read of the kubelet's logs)
/// at most this often: a storm of events from a cgroup already gone costs nothing.
pub const REWALK_EVERY: Duration = Duration::from_secs(1);

/// `statfs` type of cgroup2 (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Handle type of a kernfs node (include/linux/exportfs.h: FILEID_KERNFS).
const FILEID_KERNFS: i32 = 0xfe;

/// Where the host's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl Default for HostRoot {
    fn default() -> Self {
        Self(PathBuf::from("/"))
    }
}

/// The host root this run was given (`--host-root`), for code far from the command
/// line (the `/proc` owner scan).
static HOST_ROOT: std::sync::OnceLock<HostRoot> = std::sync::OnceLock::new();

/// Takes `--host-root DIR` for this run: checks it, remembers it, and inside a
/// container with a cgroup namespace of its own, enters the host's (that of the
/// host's pid 1), so `/proc/PID/cgroup` shows host paths rather than
/// `/../../kubepods/...` (cgroup_namespaces(7)). Call before any thread starts:
/// namespaces are per thread, and threads inherit them.
pub fn use_host_root(dir: &Path) -> anyhow::Result<HostRoot> {
    anyhow::ensure!(
        dir.is_dir(),
        "--host-root {}: not a directory",
        dir.display()
    );
    let host = HostRoot::new(dir);
    let _ = HOST_ROOT.set(host.clone());
    if !host.is_host() {
        enter_host_cgroupns(&host)?;
    }
    Ok(host)
}

fn enter_host_cgroupns(host: &HostRoot) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let theirs = host.join("/proc/1/ns/cgroup");
    let same = match (
        std::fs::metadata(&theirs),
        std::fs::metadata("/proc/self/ns/cgroup"),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        // No host /proc there (or no cgroup namespaces): nothing to enter.
        _ => return Ok(()),
    };
    if same {
        return Ok(());
    }
    let ns =
        std::fs::File::open(&theirs).with_context(|| format!("opening {}", theirs.display()))?;
    // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWCGROUP) } != 0 {
        anyhow::bail!(
            "entering the host's cgroup namespace ({}): {} (needs CAP_SYS_ADMIN; the DaemonSet has it)",
            theirs.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

impl HostRoot {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// The run's `--host-root`, `/` when none was given.
    pub fn current() -> Self {
        HOST_ROOT.get().cloned().unwrap_or_default()
    }

    /// `path` (absolute, on the host) under the host root.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        let rel = path.as_ref().strip_prefix("/").unwrap_or(path.as_ref());
        self.0.join(rel)
    }

    pub fn is_host(&self) -> bool {
        self.0 == Path::new("/")
    }
}

/// The host's cgroup2 hierarchy as this process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Tree {
    /// Where its top is mounted, host root included.
    pub dir: PathBuf,
    /// Which cgroup that top is (not `/` for a mount of a sub-tree, as in a container
    /// with its own cgroup namespace).
    pub root: String,
}

impl Cgroup2Tree {
    /// Finds the host's cgroup2 mount: from the mount table when the host root is `/`
    /// (wherever it is mounted: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
    /// hybrid host), else at the usual places under the host root.
    pub fn find(host: &HostRoot) -> Option<Self> {
        if host.is_host()
            && let Some((root, dir)) = std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|m| super::proc_owners::find_cgroup2_mount(&m))
        {
            // Canonical, so the links of fds opened by handle strip to the path.
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            return Some(Self { dir, root });
        }
        if host.is_host() {
            return None;
        }
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(|p| host.join(p))
            .find(|d| is_cgroup2(d))
            .map(|dir| Self {
                dir: std::fs::canonicalize(&dir).unwrap_or(dir),
                root: "/".to_owned(),
            })
    }

    /// The cgroup path (as in `/proc/PID/cgroup`) of directory `dir` in this tree.
    fn path_of(&self, dir: &Path) -> Option<String> {
        let rel = dir.strip_prefix(&self.dir).ok()?.to_str()?;
        let top = self.root.trim_end_matches('/');
        Some(if rel.is_empty() {
            if top.is_empty() {
                "/".to_owned()
            } else {
                top.to_owned()
            }
        } else {
            format!("{top}/{rel}")
        })
    }

    /// The directory of cgroup `path` (as in `/proc/PID/cgroup`), if this tree shows it.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path
        } else {
            match path.strip_prefix(self.root.as_str())? {
                "" => "/",
                rest if rest.starts_with('/') => rest,
                _ => return None,
            }
        };
        Some(self.dir.join(rel.trim_start_matches('/')))
    }

    /// The cgroup v2 id of cgroup `path`: the inode number of its directory (kernfs
    /// node id; <https://elixir.bootlin.com/linux/v6.12/source/fs/kernfs/inode.c>).
    pub fn id_of(&self, path: &str) -> Option<u64> {
        Some(std::fs::metadata(self.dir_of(path)?).ok()?.ino())
    }
}

fn is_cgroup2(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed statfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// `struct file_handle` with room for a kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

/// Opens the cgroup directory with id `id` by its file handle.
fn open_by_id(mount: &OwnedFd, id: u64) -> std::io::Result<OwnedFd> {
    let mut h = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid mount fd and a file_handle whose handle_bytes match its size;
    // the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &raw mut h,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How ids are being looked up (`--verbose` says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// `open_by_handle_at()`, one call per id.
    Handle,
    /// Walks of the cgroup2 tree.
    Walk,
    /// No cgroup2 mount found: nothing is named.
    None,
}

/// Lookup work done, for `--verbose` and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    pub handle_lookups: u64,
    pub walks: u64,
    pub dirs_walked: u64,
    pub kubelet_reads: u64,
}

/// Cgroup ids kept named at most. Ids are never reused, so a host that starts
/// containers or transient units (a cron job's scope) would grow the cache for as
/// long as `serve` runs; past this it starts again (the live ones are looked up
/// again, a handle lookup each).
const MAX_NAMED_IDS: usize = 8192;

/// Names cgroup ids on this host, remembering each.
pub struct CgroupNames {
    host: HostRoot,
    tree: Option<Cgroup2Tree>,
    mount_fd: Option<OwnedFd>,
    lookup: Lookup,
    /// Every id looked up, named or not (`None`: not found when last looked for).
    by_id: HashMap<u64, Option<Arc<Named>>>,
    /// From the last walk: ids not yet asked for, so a walk is paid once for all.
    walked: HashMap<u64, String>,
    last_walk: Option<Instant>,
    kubelet: kubelet::Index,
    last_kubelet_read: Option<Instant>,
    pub stats: LookupStats,
}

impl CgroupNames {
    pub fn new(host: HostRoot) -> Self {
        let tree = Cgroup2Tree::find(&host);
        let mount_fd = tree
            .as_ref()
            .and_then(|t| std::fs::File::open(&t.dir).ok().map(OwnedFd::from));
        let mut names = Self {
            host,
            tree,
            mount_fd,
            lookup: Lookup::None,
            by_id: HashMap::new(),
            walked: HashMap::new(),
            last_walk: None,
            kubelet: kubelet::Index::default(),
            last_kubelet_read: None,
            stats: LookupStats::default(),
        };
        // The kubelet's logs are read when the first pod is named (`name_path`).
        names.lookup = names.probe_lookup();
        names
    }

    /// Handles when they work here (the tree's own top resolves), walks otherwise.
    fn probe_lookup(&self) -> Lookup {
        let (Some(tree), Some(fd)) = (&self.tree, &self.mount_fd) else {
            return Lookup::None;
        };
        let top = std::fs::metadata(&tree.dir).map(|m| m.ino()).ok();
        let works = top.is_some_and(|id| matches!(self.path_by_handle(fd, id), Ok(Some(_))));
        if works { Lookup::Handle } else { Lookup::Walk }
    }

    pub fn lookup(&self) -> Lookup {
        self.lookup
    }

    /// Looks ids up by walking the tree, as without `CAP_DAC_READ_SEARCH` (the bench
    /// measures both ways).
    pub fn force_walk(&mut self) {
        if self.lookup == Lookup::Handle {
            self.lookup = Lookup::Walk;
        }
    }

    /// One line for `--verbose`.
    pub fn describe(&self) -> String {
        match (&self.tree, self.lookup) {
            (Some(t), Lookup::Handle) => {
                format!("cgroup names: {} (by file handle)", t.dir.display())
            }
            (Some(t), _) => format!("cgroup names: {} (by walking the tree)", t.dir.display()),
            (None, _) => "cgroup names: no cgroup2 mount found; cgroups are shown by id".to_owned(),
        }
    }

    /// `Ok(None)`: no such cgroup (any more); `Err`: handles do not work here.
    fn path_by_handle(&self, fd: &OwnedFd, id: u64) -> std::io::Result<Option<String>> {
        let dir = match open_by_id(fd, id) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => return Ok(None),
            Err(e) => return Err(e),
        };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        Ok(self.tree.as_ref().and_then(|t| t.path_of(&link)))
    }

    /// Walks the tree, keeping every cgroup's path by id.
    fn walk(&mut self) {
        let Some(tree) = &self.tree else {
            return;
        };
        self.stats.walks += 1;
        self.last_walk = Some(Instant::now());
        self.walked.clear();
        let mut stack = vec![tree.dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            self.stats.dirs_walked += 1;
            if let Some(path) = tree.path_of(&dir) {
                self.walked.insert(meta.ino(), path);
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }

    fn path_of_id(&mut self, id: u64) -> Option<String> {
        match self.lookup {
            Lookup::None => None,
            Lookup::Handle => {
                self.stats.handle_lookups += 1;
                match self.path_by_handle(self.mount_fd.as_ref()?, id) {
                    Ok(p) => p,
                    // CAP_DAC_READ_SEARCH gone (`portx serve` drops what it does not
                    // need): walks from now on.
                    Err(_) => {
                        self.lookup = Lookup::Walk;
                        self.path_of_id(id)
                    }
                }
            }
            Lookup::Walk => {
                if let Some(p) = self.walked.remove(&id) {
                    return Some(p);
                }
                if self.last_walk.is_some_and(|t| t.elapsed() < REWALK_EVERY) {
                    return None;
                }
                self.walk();
                self.walked.remove(&id)
            }
        }
    }

    /// Reads the kubelet's log layout again (a new pod's names).
    fn read_kubelet_logs(&mut self) {
        self.last_kubelet_read = Some(Instant::now());
        self.stats.kubelet_reads += 1;
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let pods = names(&self.host.join("/var/log/pods"));
        let containers_dir = self.host.join("/var/log/containers");
        let links: Vec<(String, Option<String>)> = names(&containers_dir)
            .into_iter()
            .map(|n| {
                let target = std::fs::read_link(containers_dir.join(&n))
                    .ok()
                    .and_then(|t| t.to_str().map(str::to_owned));
                (n, target)
            })
            .collect();
        self.kubelet = kubelet::Index::from_entries(
            pods.iter().map(String::as_str),
            links.iter().map(|(n, t)| (n.as_str(), t.as_deref())),
        );
    }

    fn name_path(&mut self, path: &str) -> Named {
        let mut named = Named::new(path, &self.kubelet);
        if !self.kubelet.knows(&named.workload)
            && self
                .last_kubelet_read
                .is_none_or(|t| t.elapsed() >= REWALK_EVERY)
        {
            self.read_kubelet_logs();
            named = Named::new(path, &self.kubelet);
        }
        named
    }
}

impl Names for CgroupNames {
    fn name(&mut self, cgroup_id: u64) -> Option<Arc<Named>> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(known) = self.by_id.get(&cgroup_id) {
            match known {
                Some(n) => return Some(n.clone()),
                // Looked for and not found: again only after REWALK_EVERY, by path_of_id.
                None if self.lookup != Lookup::Walk => return None,
                None => {}
            }
        }
        let named = self
            .path_of_id(cgroup_id)
            .map(|p| Arc::new(self.name_path(&p)));
        if self.by_id.len() >= MAX_NAMED_IDS {
            self.by_id.clear();
        }
        self.by_id.insert(cgroup_id, named.clone());
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_root_joins_host_paths() {
        let h = HostRoot::new("/host");
        assert_eq!(
            h.join("/proc/1/cgroup"),
            PathBuf::from("/host/proc/1/cgroup")
        );
        assert!(!h.is_host());
        assert_eq!(
            HostRoot::default().join("/var/log"),
            PathBuf::from("/var/log")
        );
    }

    #[test]
    fn tree_paths_map_both_ways() {
        let t = Cgroup2Tree {
            dir: PathBuf::from("/sys/fs/cgroup/unified"),
            root: "/".into(),
        };
        let d = t.dir_of("/system.slice/a.service").unwrap();
        assert_eq!(
            d,
            PathBuf::from("/sys/fs/cgroup/unified/system.slice/a.service")
        );
        assert_eq!(t.path_of(&d).as_deref(), Some("/system.slice/a.service"));
        assert_eq!(
            t.path_of(Path::new("/sys/fs/cgroup/unified")).as_deref(),
            Some("/")
        );
        assert_eq!(t.path_of(Path::new("/elsewhere")), None);
        // A mount of a sub-tree (a container's cgroup namespace seen from the host).
        let t = Cgroup2Tree {
            dir: PathBuf::from("/mnt"),
            root: "/kubepods".into(),
        };
        assert_eq!(
            t.path_of(Path::new("/mnt/pod1")).as_deref(),
            Some("/kubepods/pod1")
        );
        assert_eq!(t.path_of(Path::new("/mnt")).as_deref(), Some("/kubepods"));
        assert_eq!(t.dir_of("/kubepods/pod1"), Some(PathBuf::from("/mnt/pod1")));
        assert_eq!(t.dir_of("/kubepodsx"), None);
        assert_eq!(t.dir_of("/other"), None);
    }

    /// This machine's own cgroup names itself, by handle or by walk alike (the test
    /// runs unprivileged too: then by walk, or not at all without cgroup2).
    #[test]
    fn names_this_process_cgroup() {
        let mut names = CgroupNames::new(HostRoot::default());
        let Some(tree) = names
            .tree
            .clone()
            .filter(|_| names.lookup() != Lookup::None)
        else {
            return;
        };
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let want = crate::kernel::proc_owners::cgroup_v2_path(&text).unwrap();
        let Some(id) = tree.id_of(want) else {
            return;
        };
        let n = names.name(id).expect("own cgroup named");
        assert_eq!(n.cgroup, want);
        // Cached: the second lookup does no work.
        let before = names.stats;
        assert_eq!(names.name(id).unwrap().cgroup, want);
        assert_eq!(names.stats, before);
        // An id that is no cgroup stays unnamed.
        assert_eq!(names.name(u64::MAX - 7), None);
        // The cache is bounded, and names the live cgroup again after it restarts.
        for i in 0..MAX_NAMED_IDS as u64 + 10 {
            let _ = names.name(u64::MAX - 100 - i);
        }
        assert!(names.by_id.len() <= MAX_NAMED_IDS, "{}", names.by_id.len());
        assert_eq!(names.name(id).unwrap().cgroup, want);
    }
}

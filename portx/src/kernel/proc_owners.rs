//! Who owns the sockets that existed before portx started: one scan of
//! `/proc/*/fd` at start-up (later owners come from the BPF side).
//!
//! Socket inodes are global (sockfs), so one map covers every network namespace.

use std::{collections::HashMap, os::unix::ffi::OsStrExt as _, path::PathBuf};

use super::cgroups::{Cgroup2Tree, HostRoot};

/// The process a socket is attributed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcOwner {
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id (what `bpf_get_current_cgroup_id()` returns); 0 when unknown.
    pub cgroup_id: u64,
}

/// `socket:[12345]` (the target of a `/proc/PID/fd/N` link) to the socket's inode.
fn parse_socket_link(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The cgroup v2 path in a `/proc/PID/cgroup` file: its `0::/path` line. `None` for
/// a process in a removed cgroup (the kernel appends " (deleted)").
pub(crate) fn cgroup_v2_path(proc_cgroup: &str) -> Option<&str> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) = b
                .get(i + 1..i + 4)
                .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap_or("x"), 8))
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup2 mount in a `/proc/self/mountinfo` text
/// (`ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS`):
/// the cgroup the mount shows at its top (not "/" for a mount of a sub-tree), and
/// where it is mounted.
pub(crate) fn find_cgroup2_mount(mountinfo: &str) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut f = mount.split(' ').skip(3);
        let root = unescape_mountinfo(f.next()?);
        let mount_point = PathBuf::from(unescape_mountinfo(f.next()?));
        Some((root, mount_point))
    })
}

/// Reads cgroup ids, stat'ing each cgroup directory once.
struct CgroupIds {
    tree: Option<Cgroup2Tree>,
    cache: HashMap<String, u64>,
}

impl CgroupIds {
    fn new() -> Self {
        Self {
            tree: Cgroup2Tree::find(&HostRoot::current()),
            cache: HashMap::new(),
        }
    }

    /// The cgroup v2 id of `pid`, 0 when unknown.
    fn of(&mut self, pid: u32) -> u64 {
        let Some(tree) = &self.tree else {
            return 0;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return 0;
        };
        let Some(path) = cgroup_v2_path(&text) else {
            return 0;
        };
        if let Some(&id) = self.cache.get(path) {
            return id;
        }
        let id = tree.id_of(path).unwrap_or(0);
        self.cache.insert(path.to_owned(), id);
        id
    }
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default()
}

/// Scans `/proc/*/fd` once, mapping each socket inode to one owning process (the
/// lowest pid when several share it). Processes that vanish or deny access are
/// skipped. Only thread-group leaders are scanned: a thread with its own fd table
/// (clone without CLONE_FILES) is not seen.
///
/// With `netns`, only processes now in that network namespace (one readlink of
/// `/proc/PID/ns/net` each, where listing a process's descriptors takes one per fd):
/// what opening one namespace needs on a host of many (a pod's, on a node of
/// hundreds), at the cost of a socket made there by a process that has since moved
/// to another namespace, which is then not attributed.
pub fn socket_owners(netns: Option<u32>) -> HashMap<u64, ProcOwner> {
    let mut owners = HashMap::new();
    // Ascending, so the first owner recorded is the lowest pid.
    let Ok(pids) = crate::kernel::sockdiag::pids() else {
        return owners;
    };
    let mut cgroups = CgroupIds::new();
    for pid in pids {
        if let Some(want) = netns
            && crate::kernel::sockdiag::netns_of_pid(pid) != Some(want)
        {
            continue;
        }
        let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
        let Ok(fds) = std::fs::read_dir(&fd_dir) else {
            continue;
        };
        // Read lazily: most processes own no socket not already attributed.
        let mut owner: Option<ProcOwner> = None;
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd_dir.join(fd.file_name())) else {
                continue;
            };
            let Some(inode) = parse_socket_link(link.as_os_str().as_bytes()) else {
                continue;
            };
            if owners.contains_key(&inode) {
                continue;
            }
            let o = owner.get_or_insert_with(|| ProcOwner {
                pid,
                comm: comm_of(pid),
                cgroup_id: cgroups.of(pid),
            });
            owners.insert(inode, o.clone());
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsFd as _, os::unix::fs::MetadataExt as _, path::Path};

    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link(b"socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link(b"pipe:[12345]"), None);
        assert_eq!(parse_socket_link(b"/dev/null"), None);
        assert_eq!(parse_socket_link(b"socket:[]"), None);
        assert_eq!(parse_socket_link(b"socket:[12"), None);
    }

    #[test]
    fn parses_proc_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/x/y\n0::/system.slice/ssh.service\n";
        assert_eq!(cgroup_v2_path(hybrid), Some("/system.slice/ssh.service"));
        assert_eq!(cgroup_v2_path("0::/\n"), Some("/"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
        assert_eq!(cgroup_v2_path("0::/gone (deleted)\n"), None);
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let mi = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        let (root, dir) = find_cgroup2_mount(mi).unwrap();
        assert_eq!(
            (root.as_str(), dir.as_path()),
            ("/", Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_cgroup2_mount(&mi[..mi.find("41 ").unwrap()]), None);

        let (root, dir) =
            find_cgroup2_mount("50 1 0:38 /pod\\0401 /mnt/my\\040cg rw - cgroup2 none rw\n")
                .unwrap();
        assert_eq!(root, "/pod 1");
        assert_eq!(dir, Path::new("/mnt/my cg"));
        let sub = Cgroup2Tree { dir, root };
        assert_eq!(sub.dir_of("/pod 1/c"), Some(PathBuf::from("/mnt/my cg/c")));
        assert_eq!(sub.dir_of("/pod 1"), Some(PathBuf::from("/mnt/my cg/")));
        assert_eq!(sub.dir_of("/pod 10"), None);
        assert_eq!(sub.dir_of("/other"), None);
    }

    #[test]
    fn owns_our_own_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = crate::kernel::sockdiag::tests::socket_inode(l.as_fd());
        let owners = socket_owners(None);
        let me = owners.get(&inode).expect("our listener has no owner");
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.comm, comm_of(std::process::id()));
        assert!(!me.comm.is_empty());
        if let Some(tree) = CgroupIds::new().tree {
            let path = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            let dir = tree.dir_of(cgroup_v2_path(&path).unwrap()).unwrap();
            let ino = std::fs::metadata(dir).unwrap().ino();
            assert_eq!(me.cgroup_id, ino);
            assert_ne!(ino, 0);
        }
        // Asked for this process's namespace: found; for another: not looked at.
        let here =
            crate::kernel::sockdiag::netns_of_pid(std::process::id()).expect("our own namespace");
        assert_eq!(
            socket_owners(Some(here)).get(&inode).map(|o| o.pid),
            Some(std::process::id())
        );
        assert!(!socket_owners(Some(here.wrapping_add(1))).contains_key(&inode));
    }
}

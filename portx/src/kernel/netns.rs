//! Naming network namespaces the way users do: a name from `ip netns`, a path to a
//! namespace file, or the inode number itself.

use std::{
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// Where `ip netns add NAME` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetnsError {
    #[error("no network namespace named `{0}` (not in {NETNS_RUN_DIR}; see `ip netns list`)")]
    UnknownName(String),
    #[error("cannot read network namespace file {0}: {1}")]
    Path(PathBuf, String),
    #[error(
        "{0}: {1}; --netns takes /proc/PID/ns/net, /run/netns/NAME, a name from `ip netns` or an inode"
    )]
    NotNetns(PathBuf, &'static str),
    #[error("`{0}` is not a network namespace inode (must fit in 32 bits)")]
    BadInode(String),
    #[error("empty network namespace argument")]
    Empty,
}

/// How the user named a namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum NetnsSpec {
    Inode(u32),
    Path(PathBuf),
    Name(String),
}

impl NetnsSpec {
    pub fn parse(arg: &str) -> Result<Self, NetnsError> {
        if arg.is_empty() {
            Err(NetnsError::Empty)
        } else if arg.bytes().all(|b| b.is_ascii_digit()) {
            arg.parse()
                .map(Self::Inode)
                .map_err(|_| NetnsError::BadInode(arg.to_owned()))
        } else if arg.contains('/') {
            Ok(Self::Path(PathBuf::from(arg)))
        } else {
            Ok(Self::Name(arg.to_owned()))
        }
    }

    /// The namespace's inode number (what the kernel calls `ns.inum`).
    pub fn resolve(&self) -> Result<u32, NetnsError> {
        match self {
            Self::Inode(i) => Ok(*i),
            Self::Path(p) => inode_of(p),
            Self::Name(n) => {
                let path = Path::new(NETNS_RUN_DIR).join(n);
                if !path.exists() {
                    return Err(NetnsError::UnknownName(n.clone()));
                }
                inode_of(&path)
            }
        }
    }
}

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`, Linux 4.11): the `CLONE_NEW*` kind of namespace
/// an open namespace file refers to; any other file fails (ENOTTY).
/// https://elixir.bootlin.com/linux/v6.12/source/include/uapi/linux/nsfs.h
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The inode of the network namespace file at `path`. Another kind of namespace, or
/// any other file, is said to be one: its inode would filter on nothing, silently.
fn inode_of(path: &Path) -> Result<u32, NetnsError> {
    let unreadable = |e: std::io::Error| NetnsError::Path(path.to_path_buf(), e.to_string());
    let file = std::fs::File::open(path).map_err(unreadable)?;
    // SAFETY: an ioctl without an argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns(
            path.to_path_buf(),
            namespace_kind(kind),
        ));
    }
    let meta = file.metadata().map_err(unreadable)?;
    u32::try_from(meta.ino()).map_err(|_| NetnsError::BadInode(meta.ino().to_string()))
}

/// What `NS_GET_NSTYPE` said a file is, in words.
fn namespace_kind(kind: libc::c_int) -> &'static str {
    match kind {
        libc::CLONE_NEWNET => "a network namespace",
        libc::CLONE_NEWNS => "a mount namespace, not a network one",
        libc::CLONE_NEWPID => "a pid namespace, not a network one",
        libc::CLONE_NEWUSER => "a user namespace, not a network one",
        libc::CLONE_NEWUTS => "a UTS namespace, not a network one",
        libc::CLONE_NEWIPC => "an IPC namespace, not a network one",
        libc::CLONE_NEWCGROUP => "a cgroup namespace, not a network one",
        0x80 => "a time namespace, not a network one", // CLONE_NEWTIME
        _ => "not a namespace file",
    }
}

/// Resolves a `--netns` argument to an inode.
pub fn resolve(arg: &str) -> Result<u32, NetnsError> {
    NetnsSpec::parse(arg)?.resolve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            NetnsSpec::parse("4026531840"),
            Ok(NetnsSpec::Inode(4026531840))
        );
        assert_eq!(
            NetnsSpec::parse("/proc/1/ns/net"),
            Ok(NetnsSpec::Path("/proc/1/ns/net".into()))
        );
        assert_eq!(NetnsSpec::parse("blue"), Ok(NetnsSpec::Name("blue".into())));
        assert_eq!(NetnsSpec::parse(""), Err(NetnsError::Empty));
        assert!(matches!(
            NetnsSpec::parse("99999999999"),
            Err(NetnsError::BadInode(_))
        ));
    }

    #[test]
    fn resolves_paths_and_reports_unknown_names() {
        // Our own namespace file is readable without privileges.
        let own = resolve("/proc/self/ns/net").unwrap();
        let expected = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(u64::from(own), expected);
        let err = resolve("portx-no-such-ns").unwrap_err();
        assert_eq!(err, NetnsError::UnknownName("portx-no-such-ns".into()));
        assert!(err.to_string().contains("ip netns list"));
        assert!(matches!(
            resolve("/nonexistent/ns"),
            Err(NetnsError::Path(..))
        ));
    }

    #[test]
    fn other_namespaces_and_plain_files_are_refused() {
        let err = resolve("/proc/self/ns/mnt").unwrap_err();
        assert_eq!(
            err,
            NetnsError::NotNetns(
                "/proc/self/ns/mnt".into(),
                "a mount namespace, not a network one"
            )
        );
        assert!(err.to_string().contains("--netns takes"), "{err}");
        assert_eq!(
            resolve("/proc/self/ns/uts"),
            Err(NetnsError::NotNetns(
                "/proc/self/ns/uts".into(),
                "a UTS namespace, not a network one"
            ))
        );
        assert_eq!(
            resolve("/proc/self/stat"),
            Err(NetnsError::NotNetns(
                "/proc/self/stat".into(),
                "not a namespace file"
            ))
        );
    }
}

//! Naming network namespaces the way users do: a name from `ip netns`, a path to a
//! namespace file, or the inode number itself.

use std::{
    os::unix::fs::MetadataExt as _,
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

fn inode_of(path: &Path) -> Result<u32, NetnsError> {
    let meta =
        std::fs::metadata(path).map_err(|e| NetnsError::Path(path.to_path_buf(), e.to_string()))?;
    u32::try_from(meta.ino()).map_err(|_| NetnsError::BadInode(meta.ino().to_string()))
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
}

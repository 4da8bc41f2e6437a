//! Kernel struct offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The tracepoints do not carry the network namespace, and the syscall tracepoints do
//! not carry the socket; the BPF side reads both through kernel structs whose layout
//! changes between builds, so their offsets are looked up here and passed in as globals.

use std::{
    cell::RefCell, collections::HashMap, io::Write as _, os::fd::FromRawFd as _, path::Path,
};

use btf_rs::{Backend, Btf, BtfType as _, Struct, Type};
use portx_common::{KernelOffsets, NO_OFFSET};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF is not available at {0} (portx needs a kernel built with CONFIG_DEBUG_INFO_BTF=y): {1}"
    )]
    Unavailable(String, String),
    #[error("BTF: no struct named `{0}`")]
    NoStruct(String),
    #[error("BTF: struct `{0}` has no member `{1}`")]
    NoMember(String, String),
    #[error("BTF: `{0}.{1}` is a bitfield")]
    Bitfield(String, String),
    #[error("BTF: `{0}.{1}` is not a struct or union")]
    NotAStruct(String, String),
    #[error("BTF: {0}")]
    Parse(String),
}

/// The kernel's type information.
pub struct KernelBtf {
    btf: Btf,
    /// Type ids by name: each lookup is a scan of every type (see [`KernelBtf::from_file`]).
    ids: RefCell<HashMap<String, Vec<u32>>>,
}

impl KernelBtf {
    /// Reads the BTF without parsing all of it. btf-rs's default backend decodes every
    /// type of vmlinux (~150k) into owned values: most of portx's start-up CPU and
    /// ~40 MiB of its peak RSS, for the couple of dozen lookups portx makes. Its mmap
    /// backend only indexes them, but /sys/kernel/btf/vmlinux can be mapped only on
    /// recent kernels, so the bytes are copied into a memfd and that is mapped.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            BtfError::Unavailable(path.display().to_string(), e.to_string())
        };
        let bytes = std::fs::read(path).map_err(|e| unavailable(&e))?;
        match Self::mapped_copy(&bytes) {
            Ok(btf) => Ok(Self::with(btf)),
            // No memfd or /proc: parse it all.
            Err(_) => Self::fully_parsed(&bytes).map_err(|e| unavailable(&e)),
        }
    }

    fn with(btf: Btf) -> Self {
        Self {
            btf,
            ids: RefCell::default(),
        }
    }

    fn fully_parsed(bytes: &[u8]) -> Result<Self, btf_rs::Error> {
        Ok(Self::with(Btf::from_bytes(bytes)?))
    }

    fn mapped_copy(bytes: &[u8]) -> anyhow::Result<Btf> {
        // SAFETY: a NUL-terminated name and valid flags; the fd is checked.
        let fd = unsafe { libc::memfd_create(c"portx-vmlinux-btf".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            anyhow::bail!("memfd_create: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(bytes)?;
        // btf-rs maps the file it opens; the mapping outlives both descriptors.
        Ok(Btf::from_file_with_backend(
            format!("/proc/self/fd/{fd}"),
            Backend::Mmap,
        )?)
    }

    /// Type ids named `name`, remembered.
    fn ids_by_name(&self, name: &str) -> Result<Vec<u32>, BtfError> {
        if let Some(ids) = self.ids.borrow().get(name) {
            return Ok(ids.clone());
        }
        let ids = self
            .btf
            .resolve_ids_by_name(name)
            .map_err(|e| BtfError::Parse(e.to_string()))?;
        self.ids.borrow_mut().insert(name.to_owned(), ids.clone());
        Ok(ids)
    }

    fn types_by_name(&self, name: &str) -> Result<Vec<Type>, BtfError> {
        self.ids_by_name(name)?
            .into_iter()
            .map(|id| self.type_by_id(id))
            .collect()
    }

    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Byte offset of `path` (member names, descending into nested structs) inside
    /// `struct <outer>`. Anonymous structs and unions are searched transparently, as C
    /// member access does (`sk->__sk_common.skc_num` sits in an anonymous union).
    pub fn member_offset(&self, outer: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut current = self.find_struct(outer)?;
        let mut current_name = outer.to_owned();
        let mut bits = 0u32;
        for (i, member) in path.iter().enumerate() {
            let (offset, type_id) = self
                .find_member(&current, member)?
                .ok_or_else(|| BtfError::NoMember(current_name.clone(), (*member).to_owned()))?;
            bits += offset;
            if i + 1 < path.len() {
                current = match self.strip(self.type_by_id(type_id)?)? {
                    Type::Struct(s) | Type::Union(s) => s,
                    _ => return Err(BtfError::NotAStruct(current_name, (*member).to_owned())),
                };
                current_name = (*member).to_owned();
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield(outer.to_owned(), path.join(".")));
        }
        Ok(bits / 8)
    }

    fn find_struct(&self, name: &str) -> Result<Struct, BtfError> {
        let types = self
            .types_by_name(name)
            .map_err(|_| BtfError::NoStruct(name.to_owned()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Bit offset and type id of `name` in `st`, looking through anonymous members.
    fn find_member(&self, st: &Struct, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
        for m in &st.members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            let type_id = m
                .get_type_id()
                .ok_or_else(|| BtfError::Parse("member without type".into()))?;
            if member_name == name {
                if m.bitfield_size().is_some_and(|s| s != 0) {
                    return Err(BtfError::Bitfield(String::new(), name.to_owned()));
                }
                return Ok(Some((m.bit_offset(), type_id)));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) =
                    self.strip(self.type_by_id(type_id)?)?
                && let Some((off, id)) = self.find_member(&inner, name)?
            {
                return Ok(Some((m.bit_offset() + off, id)));
            }
        }
        Ok(None)
    }

    fn type_by_id(&self, id: u32) -> Result<Type, BtfError> {
        self.btf
            .resolve_type_by_id(id)
            .map_err(|e| BtfError::Parse(e.to_string()))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut t: Type) -> Result<Type, BtfError> {
        for _ in 0..16 {
            t = match &t {
                Type::Typedef(x) => self.chained(x)?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => self.chained(x)?,
                Type::TypeTag(x) => self.chained(x)?,
                _ => return Ok(t),
            };
        }
        Err(BtfError::Parse("typedef chain too long".into()))
    }

    fn chained<T: btf_rs::BtfType + ?Sized>(&self, t: &T) -> Result<Type, BtfError> {
        self.btf
            .resolve_chained_type(t)
            .map_err(|e| BtfError::Parse(e.to_string()))
    }

    /// Parameter names of kernel function `name`, or `None` if this kernel's BTF has
    /// no such function (inlined, renamed or absent).
    pub fn func_params(&self, name: &str) -> Option<Vec<String>> {
        let types = self.types_by_name(name).ok()?;
        types.into_iter().find_map(|t| match t {
            Type::Func(f) => match self.btf.resolve_chained_type(&f).ok()? {
                Type::FuncProto(p) => Some(
                    p.parameters
                        .iter()
                        .map(|a| self.btf.resolve_name(a).unwrap_or_default())
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        })
    }

    /// Resolves every offset the BPF programs use. Members this kernel lacks are left
    /// as [`NO_OFFSET`] (the BPF side then skips that read) and reported in the list.
    pub fn kernel_offsets(&self) -> (KernelOffsets, Vec<BtfError>) {
        let mut missing = Vec::new();
        let mut get = |outer: &str, path: &[&str]| match self.member_offset(outer, path) {
            Ok(off) => off,
            Err(e) => {
                missing.push(e);
                NO_OFFSET
            }
        };
        let offsets = KernelOffsets {
            sock_net: get("sock", &["__sk_common", "skc_net", "net"]),
            net_inum: get("net", &["ns", "inum"]),
            sock_num: get("sock", &["__sk_common", "skc_num"]),
            sock_rcv_saddr: get("sock", &["__sk_common", "skc_rcv_saddr"]),
            sock_v6_rcv_saddr: get("sock", &["__sk_common", "skc_v6_rcv_saddr"]),
            task_nsproxy: get("task_struct", &["nsproxy"]),
            nsproxy_net_ns: get("nsproxy", &["net_ns"]),
            task_files: get("task_struct", &["files"]),
            files_fdt: get("files_struct", &["fdt"]),
            fdt_max_fds: get("fdtable", &["max_fds"]),
            fdt_fd: get("fdtable", &["fd"]),
            file_private_data: get("file", &["private_data"]),
            socket_type: get("socket", &["type"]),
            socket_sk: get("socket", &["sk"]),
            sock_family: get("sock", &["__sk_common", "skc_family"]),
            sock_dport: get("sock", &["__sk_common", "skc_dport"]),
            sock_daddr: get("sock", &["__sk_common", "skc_daddr"]),
            sock_v6_daddr: get("sock", &["__sk_common", "skc_v6_daddr"]),
            sock_protocol: get("sock", &["sk_protocol"]),
            inet_sport: get("inet_sock", &["inet_sport"]),
            sock_max_ack_backlog: get("sock", &["sk_max_ack_backlog"]),
            task_comm: get("task_struct", &["comm"]),
            task_cgroups: get("task_struct", &["cgroups"]),
            css_set_dfl_cgrp: get("css_set", &["dfl_cgrp"]),
            cgroup_kn: get("cgroup", &["kn"]),
            kernfs_node_id: get("kernfs_node", &["id"]),
            regs_args: match SYSCALL_ARG_REGS {
                Some(regs) => regs.map(|r| get("pt_regs", &[r])),
                None => [NO_OFFSET; 3],
            },
        };
        (offsets, missing)
    }
}

/// The `pt_regs` members that hold a syscall's first three arguments, still there when
/// it returns (the return value goes to `ax`). Only x86_64 is known here; elsewhere
/// connect() is stashed at its entry instead.
/// https://elixir.bootlin.com/linux/v6.12/source/arch/x86/entry/entry_64.S (the syscall ABI)
const SYSCALL_ARG_REGS: Option<[&str; 3]> = if cfg!(target_arch = "x86_64") {
    Some(["di", "si", "dx"])
} else {
    None
};

#[cfg(test)]
mod tests {
    use super::*;

    // /sys/kernel/btf/vmlinux is world-readable, so these run without root. They
    // check relations that hold on every kernel rather than one kernel's numbers.
    fn btf() -> Option<KernelBtf> {
        match KernelBtf::from_sys() {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("skipping test - {e}");
                None
            }
        }
    }

    #[test]
    fn mapped_copy_reads_what_a_full_parse_reads() {
        let Some(mapped) = btf() else { return };
        let bytes = std::fs::read(VMLINUX_BTF).unwrap();
        let parsed = KernelBtf::fully_parsed(&bytes).unwrap();
        let (a, missing_a) = mapped.kernel_offsets();
        let (b, missing_b) = parsed.kernel_offsets();
        assert_eq!(a, b);
        assert_eq!(missing_a.len(), missing_b.len());
        assert_eq!(
            mapped.func_params("inet_bind"),
            parsed.func_params("inet_bind")
        );
        assert!(mapped.func_params("inet_bind").is_some());
    }

    #[test]
    fn resolves_all_offsets_on_this_kernel() {
        let Some(btf) = btf() else { return };
        let (o, missing) = btf.kernel_offsets();
        assert!(missing.is_empty(), "{missing:?}");
        // struct sock starts with struct sock_common.
        assert_eq!(
            btf.member_offset("sock", &["__sk_common"]).unwrap(),
            0,
            "sock_common is first in struct sock"
        );
        assert_eq!(
            o.sock_num,
            btf.member_offset("sock_common", &["skc_num"]).unwrap()
        );
        // skc_dport and skc_num share a 32-bit word (skc_portpair): num follows dport.
        assert_eq!(
            o.sock_num,
            btf.member_offset("sock_common", &["skc_dport"]).unwrap() + 2
        );
        assert!(o.task_files > 0 && o.task_nsproxy > 0);
        assert_ne!(o.socket_type, o.socket_sk);
    }

    #[test]
    fn function_signatures_from_btf() {
        let Some(btf) = btf() else { return };
        // Stable across kernels since 4.x; the hooks rely on these positions.
        let bind = btf.func_params("inet_bind").expect("inet_bind in BTF");
        assert_eq!(&bind[..2], ["sock", "uaddr"]);
        let connect = btf.func_params("__inet_hash_connect").expect("in BTF");
        assert_eq!(connect.get(1).map(String::as_str), Some("sk"));
        assert_eq!(btf.func_params("portx_no_such_function"), None);
    }

    #[test]
    fn missing_members_are_errors_not_guesses() {
        let Some(btf) = btf() else { return };
        assert!(matches!(
            btf.member_offset("sock", &["no_such_member"]),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("no_such_struct_portx", &["x"]),
            Err(BtfError::NoStruct(..))
        ));
        assert!(matches!(
            btf.member_offset("sock", &["__sk_common", "skc_num", "deeper"]),
            Err(BtfError::NotAStruct(..))
        ));
    }

    #[test]
    fn unreadable_btf_is_a_clear_error() {
        let err = KernelBtf::from_file(Path::new("/nonexistent/vmlinux"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}

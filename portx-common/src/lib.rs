//! Types shared by the BPF programs (`portx-ebpf`) and the loader (`portx`).
//!
//! Everything here is `#[repr(C)]` with explicit padding, and each size is asserted
//! at compile time so the two sides cannot drift apart silently.
#![no_std]

/// Length of a task's `comm` (`TASK_COMM_LEN` in the kernel).
pub const COMM_LEN: usize = 16;

/// Offset value meaning "this kernel does not have the field".
pub const NO_OFFSET: u32 = u32::MAX;

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP/MPTCP socket changed state (`sock:inet_sock_set_state`).
    State = 1,
    /// `connect()` returned 0 or EINPROGRESS: a source port was allocated.
    Connect = 2,
    /// `connect()` failed.
    ConnectError = 3,
    /// `bind()` succeeded.
    Bind = 4,
    /// `bind()` failed.
    BindError = 5,
    /// A TIME_WAIT socket was freed (only with a hook on `inet_twsk_kill`).
    TimewaitEnd = 6,
}

impl EventKind {
    /// Every kind, in value order.
    pub const ALL: [Self; 6] = [
        Self::State,
        Self::Connect,
        Self::ConnectError,
        Self::Bind,
        Self::BindError,
        Self::TimewaitEnd,
    ];

    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::State,
            2 => Self::Connect,
            3 => Self::ConnectError,
            4 => Self::Bind,
            5 => Self::BindError,
            6 => Self::TimewaitEnd,
            _ => return None,
        })
    }
}

/// The process that owns a socket, learned in process context and carried by
/// socket address so that softirq-context events can name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Thread group id (what userspace calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// cgroup v2 id (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<Owner>() == 32);

/// Common header of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Network namespace inode of the socket (or of the task when the socket is unknown).
    pub netns: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ts_ns: u64,
    pub owner: Owner,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 48);

/// One record in the ring buffer. Addresses are in network byte order, ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub header: EventHeader,
    /// Kernel address of the `struct sock` (0 when unknown): the socket's identity for its life.
    pub skaddr: u64,
    /// IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_TCP` or `IPPROTO_MPTCP` (0 when unknown).
    pub protocol: u16,
    /// TCP states (`TCP_ESTABLISHED` = 1 ...), only for [`EventKind::State`].
    pub old_state: u8,
    pub new_state: u8,
    /// `bind`: the local port the socket got (differs from `sport` for port 0).
    pub bound_port: u16,
    /// Positive errno for failures, 0 otherwise.
    pub errno: u32,
}
const _: () = assert!(core::mem::size_of::<Event>() == 104);

/// Where fields sit inside tracepoint records, read from tracefs `format` files at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTpOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

/// `syscalls:sys_enter_connect` / `sys_enter_bind`: the fd, the user sockaddr pointer, its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysEnterOffsets {
    pub fd: u32,
    pub addr: u32,
    pub addrlen: u32,
}

/// Offsets inside kernel structs, resolved from the running kernel's BTF.
/// Each is a byte offset, or [`NO_OFFSET`] when the kernel lacks the member.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock.__sk_common.skc_net.net`
    pub sock_net: u32,
    /// `net.ns.inum`
    pub net_inum: u32,
    /// `sock.__sk_common.skc_num` (local port, host order)
    pub sock_num: u32,
    /// `sock.__sk_common.skc_rcv_saddr`
    pub sock_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`
    pub sock_v6_rcv_saddr: u32,
    /// `task_struct.nsproxy`
    pub task_nsproxy: u32,
    /// `nsproxy.net_ns`
    pub nsproxy_net_ns: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `socket.type`
    pub socket_type: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_family`
    pub sock_family: u32,
    /// `sock.__sk_common.skc_dport` (network order)
    pub sock_dport: u32,
    /// `sock.__sk_common.skc_daddr`
    pub sock_daddr: u32,
    /// `sock.__sk_common.skc_v6_daddr`
    pub sock_v6_daddr: u32,
    /// `sock.sk_protocol` (a plain u16 since 5.6; a bitfield before, then unusable)
    pub sock_protocol: u32,
    /// `inet_sock.inet_sport` (network order): what the plain tracepoint reports.
    /// Unlike `skc_num` it survives `inet_put_port()`, which runs before the state
    /// store (and so before the tracepoint) on a transition to CLOSE on 6.1/6.12.
    pub inet_sport: u32,
    /// `sock.sk_max_ack_backlog`: a listener's backlog, which a socket accepted from it
    /// inherits (`sk_clone_lock` copies the whole `struct sock`); 0 on a socket that
    /// connect()ed, which never listened.
    pub sock_max_ack_backlog: u32,
    /// `task_struct.comm`: read with two loads through `bpf_get_current_task_btf()` on
    /// the tp_btf path, where `bpf_get_current_comm()` costs a helper call and a
    /// byte-wise copy.
    pub task_comm: u32,
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id`: the
    /// current cgroup id in four loads on the tp_btf path.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `pt_regs` members holding a syscall's first three arguments at its exit
    /// (x86_64 `di`, `si`, `dx`; the syscall returns in `ax`), for
    /// `sys_exit_connect_regs`. [`NO_OFFSET`] where unknown: that program is then not used.
    pub regs_args: [u32; 3],
}

/// Everything the BPF programs need to know about the running kernel, set as one
/// read-only global (`CONFIG`) before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub state_tp: StateTpOffsets,
    pub connect_tp: SysEnterOffsets,
    pub bind_tp: SysEnterOffsets,
    /// Offset of `ret` in `sys_exit_connect` / `sys_exit_bind`.
    pub exit_ret: u32,
    pub kernel: KernelOffsets,
    /// Unread ring-buffer bytes above which an ordinary event wakes the reader; below
    /// it only failures do, and the reader drains on a short timer. 0: every event
    /// may wake it (the kernel's default).
    pub wakeup_bytes: u32,
    /// Which events the programs emit at all.
    pub filter: KernelFilter,
    /// 1: the accounting path (`top`, `serve`): only what changes the port accounting
    /// reaches the ring. A socket accepted from a listener, which holds no ephemeral
    /// port, is left out (but for its close into TIME_WAIT), told apart by its
    /// inherited backlog without a map; a successful connect() is not sent (the
    /// socket's own transition out of SYN_SENT carries its port).
    /// 0: every transition and result, as `trace` and `record` show them.
    pub accounting: u32,
}

/// The part of a trace filter the BPF programs apply before reserving ring-buffer
/// space, so a narrowed trace costs little more than the programs' entry.
/// Userspace applies the whole filter again; this one only ever lets more through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFilter {
    /// Bit `1 << kind` for each [`EventKind`] emitted.
    pub kinds: u32,
    /// Network namespace inode; 0: any.
    pub netns: u32,
    /// A port on either side of the 4-tuple; 0: any.
    pub port: u16,
    pub _pad: u16,
}

impl KernelFilter {
    /// Every event.
    pub const ALL: Self = Self {
        kinds: u32::MAX,
        netns: 0,
        port: 0,
        _pad: 0,
    };

    /// Only failed connect() and bind() calls.
    pub const ERROR_KINDS: u32 =
        (1 << EventKind::ConnectError as u32) | (1 << EventKind::BindError as u32);

    /// Whether events of this kind go to the ring buffer at all.
    #[inline(always)]
    pub const fn keeps_kind(&self, kind: EventKind) -> bool {
        self.kinds & (1 << kind as u32) != 0
    }

    /// Whether an event of this kind, namespace and ports goes to the ring buffer.
    /// A state event with no local port yet (`CLOSE -> SYN_SENT`: the port is picked
    /// after it) passes a port filter: it names the socket's owner, which userspace
    /// carries to the socket's later events, the ones with the port.
    #[inline(always)]
    pub const fn passes(&self, kind: EventKind, netns: u32, sport: u16, dport: u16) -> bool {
        self.keeps_kind(kind)
            && (self.netns == 0 || self.netns == netns)
            && (self.port == 0
                || self.port == sport
                || self.port == dport
                || (matches!(kind, EventKind::State) && sport == 0))
    }
}

impl Config {
    /// A config with every offset unknown; the BPF side treats it as "read nothing".
    pub const UNSET: Self = Self {
        state_tp: StateTpOffsets {
            skaddr: NO_OFFSET,
            oldstate: NO_OFFSET,
            newstate: NO_OFFSET,
            sport: NO_OFFSET,
            dport: NO_OFFSET,
            family: NO_OFFSET,
            protocol: NO_OFFSET,
            saddr: NO_OFFSET,
            daddr: NO_OFFSET,
            saddr_v6: NO_OFFSET,
            daddr_v6: NO_OFFSET,
        },
        connect_tp: SysEnterOffsets {
            fd: NO_OFFSET,
            addr: NO_OFFSET,
            addrlen: NO_OFFSET,
        },
        bind_tp: SysEnterOffsets {
            fd: NO_OFFSET,
            addr: NO_OFFSET,
            addrlen: NO_OFFSET,
        },
        exit_ret: NO_OFFSET,
        kernel: KernelOffsets {
            sock_net: NO_OFFSET,
            net_inum: NO_OFFSET,
            sock_num: NO_OFFSET,
            sock_rcv_saddr: NO_OFFSET,
            sock_v6_rcv_saddr: NO_OFFSET,
            task_nsproxy: NO_OFFSET,
            nsproxy_net_ns: NO_OFFSET,
            task_files: NO_OFFSET,
            files_fdt: NO_OFFSET,
            fdt_max_fds: NO_OFFSET,
            fdt_fd: NO_OFFSET,
            file_private_data: NO_OFFSET,
            socket_type: NO_OFFSET,
            socket_sk: NO_OFFSET,
            sock_family: NO_OFFSET,
            sock_dport: NO_OFFSET,
            sock_daddr: NO_OFFSET,
            sock_v6_daddr: NO_OFFSET,
            sock_protocol: NO_OFFSET,
            inet_sport: NO_OFFSET,
            sock_max_ack_backlog: NO_OFFSET,
            task_comm: NO_OFFSET,
            task_cgroups: NO_OFFSET,
            css_set_dfl_cgrp: NO_OFFSET,
            cgroup_kn: NO_OFFSET,
            kernfs_node_id: NO_OFFSET,
            regs_args: [NO_OFFSET; 3],
        },
        wakeup_bytes: 0,
        filter: KernelFilter::ALL,
        accounting: 0,
    };
}
const _: () = assert!(core::mem::size_of::<Config>() == (11 + 3 + 3 + 1 + 29 + 1 + 3 + 1) * 4);

/// The accounting path's rule (`Config::accounting`): whether a state change is left
/// out because it changes nothing the model counts. Shared by the BPF programs and the
/// tests, which check that the model gives the same answers from what it keeps.
///
/// - A move between two closing states (FIN_WAIT1 -> FIN_WAIT2, CLOSE_WAIT -> LAST_ACK,
///   FIN_WAIT1 -> CLOSING): the port is held the same way before and after, and the
///   close that follows names the state it leaves.
/// - Any change of a socket accepted from a listener, but its close into TIME_WAIT
///   (out of FIN_WAIT2 or CLOSING), which the drift check and `bind()` holders see.
///   Such a socket holds its listener's port, not an ephemeral one, and its five
///   changes are half of a loopback connection's. `accepted` says whether the socket
///   is one (in the kernel, a read); it is asked only where the states do not settle it.
#[inline(always)]
pub fn accounting_leaves_out(old: u8, new: u8, accepted: impl FnOnce() -> bool) -> bool {
    use uapi::*;
    let closing = |s: u8| {
        matches!(
            s,
            TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING | TCP_CLOSE_WAIT | TCP_LAST_ACK
        )
    };
    if closing(old) && closing(new) {
        return true;
    }
    // The child's first change, as it is cloned from the listener.
    if old == TCP_LISTEN && new == TCP_SYN_RECV {
        return true;
    }
    // A client's own changes (connect, listen, the handshake it started) are never an
    // accepted socket's.
    if old == TCP_CLOSE || old == TCP_LISTEN || old == TCP_SYN_SENT {
        return false;
    }
    let into_time_wait = new == TCP_CLOSE && (old == TCP_FIN_WAIT2 || old == TCP_CLOSING);
    !into_time_wait && accepted()
}

/// Bits of the `HOOKS` map: which events kernel-function hooks emit, so the syscall
/// tracepoints (always attached, for errors the hooks do not see) do not repeat them.
pub mod hooks {
    /// Allocations and EADDRNOTAVAIL come from `__inet_hash_connect`.
    pub const CONNECT_IN_KERNEL: u32 = 1;
    /// bind() results come from `inet_bind`/`inet6_bind`.
    pub const BIND_IN_KERNEL: u32 = 2;
    /// connect() calls are stashed at `sys_enter_connect` (the fallback where
    /// `sys_exit_connect_regs` does not load), so the state program notes their socket
    /// and port in the stash.
    pub const CONNECT_STASH: u32 = 4;
    /// Events are gathered in per-CPU batches (`BATCH_SLOTS`) and reach the ring
    /// buffer a batch at a time; set once the flush program has been run (the
    /// accounting path).
    pub const BATCH: u32 = 8;
}

/// The accounting path's per-CPU batch: `BATCH_SLOTS` slots of `SLOT_BYTES`, sent to
/// the ring as one record of whole slots (so its length tells it from a lone `Event`,
/// 104 bytes). A state change takes one slot in a compact form ([`CompactV4`], and
/// [`CompactV6`] where it carries no owner); any other event takes two, as a full
/// `Event`. Every record starts with a `u32`: an `EventKind` for a full event, a
/// [`compact_head`] (at least `1 << 16`) for a compact one. Each batch is a per-CPU map
/// value (under the 32 KiB limit).
pub const SLOT_BYTES: usize = 64;
pub const BATCH_SLOTS: usize = 64;
const _: () = assert!(BATCH_SLOTS.is_power_of_two() && size_of::<Event>() <= 2 * SLOT_BYTES);

/// Tags of the compact records (the top half of their first word).
pub mod compact {
    pub const V4: u32 = 1;
    pub const V6: u32 = 2;
}

/// The first word of a compact record: its tag, then the two TCP states.
#[inline(always)]
pub const fn compact_head(tag: u32, old_state: u8, new_state: u8) -> u32 {
    (tag << 16) | ((old_state as u32) << 8) | new_state as u32
}

/// A state change of an IPv4 socket in one slot. The owner (`pid` 0: none) lacks the
/// thread id, which nothing on the accounting path reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactV4 {
    /// [`compact_head`] with [`compact::V4`].
    pub head: u32,
    pub netns: u32,
    pub ts_ns: u64,
    pub skaddr: u64,
    pub cgroup_id: u64,
    /// Network byte order.
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<CompactV4>() == SLOT_BYTES);

/// A state change of an IPv6 socket, without an owner, in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactV6 {
    /// [`compact_head`] with [`compact::V6`].
    pub head: u32,
    pub netns: u32,
    pub ts_ns: u64,
    pub skaddr: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CompactV6>() == SLOT_BYTES);

/// What the flush program returns: the batch was flushed (or empty), or an emit on
/// that CPU was in progress (try again).
pub mod flush {
    pub const DONE: u32 = 0;
    pub const BUSY: u32 = 1;
}

/// Names of the maps and the global, shared so both sides spell them the same.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const HOOKS: &str = "HOOKS";
    pub const DROPPED: &str = "DROPPED";
    pub const CONFIG: &str = "CONFIG";
    pub const BATCH_PENDING: &str = "BATCH_PENDING";
    /// The program userspace runs on a CPU to flush its batch.
    pub const FLUSH_BATCH: &str = "flush_batch";
}

/// Constants from the kernel's UAPI that both sides use.
pub mod uapi {
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;
    pub const IPPROTO_TCP: u16 = 6;
    pub const IPPROTO_MPTCP: u16 = 262;
    pub const SOCK_STREAM: u16 = 1;
    pub const EINPROGRESS: i64 = 115;
    pub const EADDRNOTAVAIL: i64 = 99;
    /// TCP states, `include/net/tcp_states.h`.
    pub const TCP_ESTABLISHED: u8 = 1;
    pub const TCP_SYN_SENT: u8 = 2;
    pub const TCP_SYN_RECV: u8 = 3;
    pub const TCP_FIN_WAIT1: u8 = 4;
    pub const TCP_FIN_WAIT2: u8 = 5;
    pub const TCP_TIME_WAIT: u8 = 6;
    pub const TCP_CLOSE: u8 = 7;
    pub const TCP_CLOSE_WAIT: u8 = 8;
    pub const TCP_LAST_ACK: u8 = 9;
    pub const TCP_LISTEN: u8 = 10;
    pub const TCP_CLOSING: u8 = 11;
    pub const TCP_NEW_SYN_RECV: u8 = 12;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, `Copy`, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_filter_keeps_kinds_namespace_and_either_port() {
        use EventKind::*;
        let all = KernelFilter::ALL;
        assert!(all.passes(State, 7, 0, 0) && all.passes(BindError, 0, 1, 2));

        let errors = KernelFilter {
            kinds: KernelFilter::ERROR_KINDS,
            ..all
        };
        let kept: [bool; 6] = EventKind::ALL.map(|k| errors.passes(k, 7, 1, 2));
        assert_eq!(kept, [false, false, true, false, true, false]);

        let netns = KernelFilter { netns: 7, ..all };
        assert!(netns.passes(State, 7, 1, 2) && !netns.passes(ConnectError, 8, 1, 2));

        let port = KernelFilter { port: 3306, ..all };
        assert!(port.passes(Connect, 7, 3306, 9000));
        assert!(port.passes(State, 7, 40000, 3306));
        assert!(!port.passes(State, 7, 40000, 9000));
        // The owner-naming CLOSE -> SYN_SENT has no local port yet.
        assert!(port.passes(State, 7, 0, 9000));
        assert!(!port.passes(ConnectError, 7, 0, 9000));
    }
}

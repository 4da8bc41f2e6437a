//! portx's BPF programs: TCP state changes and the connect/bind syscalls, streamed
//! through one ring buffer.
//!
//! Every tracepoint field offset and kernel struct offset comes from userspace in
//! `CONFIG` (read from tracefs and BTF at start-up), so nothing here is tied to one
//! kernel's layout.
#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use portx_common::{
    COMM_LEN, Config, Event, EventHeader, EventKind, ListenerKey, NO_OFFSET, Owner,
    SysEnterOffsets,
    uapi::{
        AF_INET, AF_INET6, EINPROGRESS, IPPROTO_MPTCP, IPPROTO_TCP, SOCK_STREAM, TCP_CLOSE,
        TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_LISTEN, TCP_SYN_RECV,
        TCP_SYN_SENT,
    },
};

/// Offsets for this kernel; overridden by the loader before load.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::UNSET;

/// All events. Size set by the loader (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Ring-buffer reserve failures, per CPU.
#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Owner of each socket, keyed by `struct sock *`. LRU so that sockets whose close we
/// never saw cannot fill it.
#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// Owner of each listening port, so that accepted sockets (created in softirq) can
/// inherit the listener's owner.
#[map]
static LISTENERS: LruHashMap<ListenerKey, Owner> = LruHashMap::with_max_entries(4096, 0);

/// A connect() or bind() in flight, stashed at syscall entry by thread id.
#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    sk: u64,
    /// The address asked for.
    addr: [u8; 16],
    family: u16,
    port: u16,
    /// connect() only: the local port seen on this socket's first transition out of
    /// SYN_SENT inside the syscall. On loopback the handshake (or RST) completes
    /// before connect() returns, and a refused socket has already released its port
    /// by then, so the exit handler cannot read it from the socket.
    local_port: u16,
    _pad: u16,
    local_addr: [u8; 16],
}

#[map]
static PENDING_CONNECT: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

#[map]
static PENDING_BIND: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// Reads one field of `CONFIG`. The volatile read stops the compiler from folding in
/// the placeholder value that the loader replaces.
macro_rules! conf {
    ($($field:ident).+) => {{
        // Some callers are already inside `unsafe`.
        #[allow(unused_unsafe)]
        // SAFETY: CONFIG is a plain, always-initialised static.
        let value = unsafe { read_volatile(&CONFIG.$($field).+) };
        value
    }};
}

#[inline(always)]
unsafe fn read_at<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == NO_OFFSET {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

#[inline(always)]
fn tp_read<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if off == NO_OFFSET {
        return None;
    }
    // SAFETY: the offset comes from this kernel's tracefs format file.
    unsafe { ctx.read_at::<T>(off as usize).ok() }
}

fn current_owner() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    Owner {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}

/// Network namespace inode of a `struct sock`.
#[inline(always)]
fn sock_netns(sk: u64) -> Option<u32> {
    // SAFETY: probe reads of kernel memory at BTF-derived offsets.
    unsafe {
        let net: u64 = read_at(sk, conf!(kernel.sock_net))?;
        read_at(net, conf!(kernel.net_inum))
    }
}

/// Network namespace inode of the current task.
#[inline(always)]
fn task_netns() -> Option<u32> {
    // SAFETY: as above.
    unsafe {
        let task = bpf_get_current_task();
        let nsproxy: u64 = read_at(task, conf!(kernel.task_nsproxy))?;
        let net: u64 = read_at(nsproxy, conf!(kernel.nsproxy_net_ns))?;
        read_at(net, conf!(kernel.net_inum))
    }
}

/// The `struct sock *` and socket type behind a file descriptor of the current task:
/// `current->files->fdt->fd[fd]->private_data` is the `struct socket`.
#[inline(always)]
fn sock_of_fd(fd: u64) -> Option<(u64, u16)> {
    // SAFETY: probe reads; a non-socket fd yields a wrong type, which callers filter.
    unsafe {
        let task = bpf_get_current_task();
        let files: u64 = read_at(task, conf!(kernel.task_files))?;
        let fdt: u64 = read_at(files, conf!(kernel.files_fdt))?;
        let max_fds: u32 = read_at(fdt, conf!(kernel.fdt_max_fds))?;
        if fd >= u64::from(max_fds) {
            return None;
        }
        let fd_array: u64 = read_at(fdt, conf!(kernel.fdt_fd))?;
        let file: u64 = bpf_probe_read_kernel((fd_array + fd * 8) as *const u64).ok()?;
        let socket: u64 = read_at(file, conf!(kernel.file_private_data))?;
        let sock_type: u16 = read_at(socket, conf!(kernel.socket_type))?;
        let sk: u64 = read_at(socket, conf!(kernel.socket_sk))?;
        Some((sk, sock_type))
    }
}

/// Reserves an event in the ring buffer, zeroes it and lets `fill` write it in place
/// (building it on the 512-byte BPF stack first does not fit), or counts a drop.
#[inline(always)]
fn emit(fill: impl FnOnce(&mut Event)) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points to reserved ring-buffer memory sized for an Event.
            unsafe {
                core::ptr::write_bytes(ev, 0, 1);
                fill(&mut *ev);
            }
            entry.submit(0);
        }
        None => {
            if let Some(count) = DROPPED.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, no concurrent writer on this CPU.
                unsafe { *count += 1 };
            }
        }
    }
}

fn header(kind: EventKind, netns: u32, owner: Owner) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        netns,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        owner,
    }
}

// ---------------------------------------------------------------------------------
// sock:inet_sock_set_state
// ---------------------------------------------------------------------------------

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

/// Transitions that only happen inside a syscall of the socket's owner
/// (connect, listen, close/shutdown), so `current` is the owner there.
/// Others (SYN_SENT->ESTABLISHED, FIN_WAIT2->CLOSE, ...) often run in softirq.
fn in_owner_context(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (TCP_CLOSE, TCP_SYN_SENT)
            | (TCP_CLOSE, TCP_LISTEN)
            | (TCP_ESTABLISHED, TCP_FIN_WAIT1)
            | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
    )
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Option<()> {
    let protocol: u16 = tp_read(ctx, conf!(state_tp.protocol))?;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP {
        return None;
    }
    let sk: u64 = tp_read(ctx, conf!(state_tp.skaddr))?;
    let old = tp_read::<i32>(ctx, conf!(state_tp.oldstate))? as u8;
    let new = tp_read::<i32>(ctx, conf!(state_tp.newstate))? as u8;
    let family: u16 = tp_read(ctx, conf!(state_tp.family))?;
    let sport: u16 = tp_read(ctx, conf!(state_tp.sport))?;
    let dport: u16 = tp_read(ctx, conf!(state_tp.dport))?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET6 {
        saddr = tp_read(ctx, conf!(state_tp.saddr_v6))?;
        daddr = tp_read(ctx, conf!(state_tp.daddr_v6))?;
    } else {
        let s: [u8; 4] = tp_read(ctx, conf!(state_tp.saddr))?;
        let d: [u8; 4] = tp_read(ctx, conf!(state_tp.daddr))?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    }
    let netns = sock_netns(sk).or_else(task_netns).unwrap_or(0);

    if old == TCP_SYN_SENT && sport != 0 {
        note_connect_port(sk, sport, &saddr);
    }

    // Who owns this socket: learned in process context, inherited from the listener
    // for accepted sockets, otherwise carried from earlier events. (Plain values and a
    // flag rather than Option<Owner>: LLVM lowers the latter to pointer shifts the
    // verifier rejects.)
    let mut owner = Owner::default();
    let mut have_owner = false;
    if let Some(p) = OWNERS.get_ptr(sk) {
        // SAFETY: pointer from a successful map lookup.
        owner = unsafe { *p };
        have_owner = true;
    }
    if in_owner_context(old, new) && (new == TCP_SYN_SENT || new == TCP_LISTEN || !have_owner) {
        owner = current_owner();
        have_owner = true;
        let _ = OWNERS.insert(sk, owner, 0);
    } else if !have_owner && old == TCP_LISTEN && new == TCP_SYN_RECV {
        let key = ListenerKey {
            netns,
            port: sport,
            _pad: 0,
        };
        if let Some(p) = LISTENERS.get_ptr(key) {
            // SAFETY: pointer from a successful map lookup.
            owner = unsafe { *p };
            have_owner = true;
            let _ = OWNERS.insert(sk, owner, 0);
        }
    }

    if new == TCP_LISTEN && have_owner {
        let key = ListenerKey {
            netns,
            port: sport,
            _pad: 0,
        };
        let _ = LISTENERS.insert(key, owner, 0);
    } else if old == TCP_LISTEN && new == TCP_CLOSE {
        let _ = LISTENERS.remove(ListenerKey {
            netns,
            port: sport,
            _pad: 0,
        });
    }
    if new == TCP_CLOSE {
        let _ = OWNERS.remove(sk);
    }

    emit(|ev| {
        ev.header = header(EventKind::State, netns, owner);
        ev.skaddr = sk;
        ev.saddr = saddr;
        ev.daddr = daddr;
        ev.sport = sport;
        ev.dport = dport;
        ev.family = family;
        ev.protocol = protocol;
        ev.old_state = old;
        ev.new_state = new;
    });
    Some(())
}

/// Records the port a connect() in this thread got, if `sk` is the socket it connects.
fn note_connect_port(sk: u64, sport: u16, saddr: &[u8; 16]) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(p) = PENDING_CONNECT.get_ptr_mut(tid) {
        // SAFETY: pointer from a successful lookup of this thread's own entry.
        unsafe {
            if (*p).sk == sk && (*p).local_port == 0 {
                (*p).local_port = sport;
                (*p).local_addr = *saddr;
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// syscalls: connect / bind, paired enter/exit by thread id
// ---------------------------------------------------------------------------------

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = stash_sockaddr(&ctx, conf!(connect_tp), &PENDING_CONNECT);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, &PENDING_CONNECT, true);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    let _ = stash_sockaddr(&ctx, conf!(bind_tp), &PENDING_BIND);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, &PENDING_BIND, false);
    0
}

/// Reads the requested sockaddr from user memory and stashes it by thread id.
fn stash_sockaddr(
    ctx: &TracePointContext,
    off: SysEnterOffsets,
    pending: &HashMap<u32, Pending>,
) -> Option<()> {
    let fd: u64 = tp_read(ctx, off.fd)?;
    let uaddr: u64 = tp_read(ctx, off.addr)?;
    let addrlen: u64 = tp_read(ctx, off.addrlen)?;
    if uaddr == 0 || addrlen < 16 {
        return None;
    }
    // SAFETY: user pointer passed to the syscall; a bad pointer makes the read fail.
    let family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16).ok()? };
    let mut p = Pending {
        sk: 0,
        addr: [0; 16],
        family,
        port: 0,
        local_port: 0,
        _pad: 0,
        local_addr: [0; 16],
    };
    // struct sockaddr_in:  family(2) port(2, be) addr(4)
    // struct sockaddr_in6: family(2) port(2, be) flowinfo(4) addr(16) scope_id(4)
    // SAFETY: as above.
    unsafe {
        let port: u16 = bpf_probe_read_user((uaddr + 2) as *const u16).ok()?;
        p.port = u16::from_be(port);
        if family == AF_INET {
            let a: [u8; 4] = bpf_probe_read_user((uaddr + 4) as *const [u8; 4]).ok()?;
            p.addr[..4].copy_from_slice(&a);
        } else if family == AF_INET6 && addrlen >= 24 {
            p.addr = bpf_probe_read_user((uaddr + 8) as *const [u8; 16]).ok()?;
        } else {
            return None;
        }
    }
    if let Some((sk, sock_type)) = sock_of_fd(fd) {
        // UDP and other datagram sockets also connect(); portx follows stream sockets.
        if sock_type != SOCK_STREAM {
            return None;
        }
        p.sk = sk;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    pending.insert(tid, p, 0).ok()
}

fn finish(
    ctx: &TracePointContext,
    pending: &HashMap<u32, Pending>,
    is_connect: bool,
) -> Option<()> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let p = unsafe { *pending.get(tid)? };
    // Delete on every exit path, so a stash never outlives its syscall.
    let _ = pending.remove(tid);
    let ret: i64 = tp_read(ctx, conf!(exit_ret))?;
    let ok = ret == 0 || (is_connect && ret == -EINPROGRESS);
    let kind = match (is_connect, ok) {
        (true, true) => EventKind::Connect,
        (true, false) => EventKind::ConnectError,
        (false, true) => EventKind::Bind,
        (false, false) => EventKind::BindError,
    };
    let netns = sock_netns(p.sk).or_else(task_netns).unwrap_or(0);
    emit(|ev| {
        ev.header = header(kind, netns, current_owner());
        ev.skaddr = p.sk;
        ev.family = p.family;
        if !ok {
            ev.errno = (-ret) as u32;
        }
        if is_connect {
            // The destination asked for, and the local side the kernel chose.
            ev.daddr = p.addr;
            ev.dport = p.port;
            if p.local_port != 0 {
                ev.sport = p.local_port;
                ev.saddr = p.local_addr;
            } else {
                // The ephemeral port is set inside inet_hash_connect, so a socket
                // still connecting has it by now.
                // SAFETY: probe reads at BTF offsets.
                unsafe { read_local(ev, p.sk, p.family) };
            }
        } else {
            ev.saddr = p.addr;
            ev.sport = p.port;
        }
    });
    Some(())
}

/// The socket's bound local address and port (`skc_rcv_saddr`, `skc_num`).
#[inline(always)]
unsafe fn read_local(ev: &mut Event, sk: u64, family: u16) {
    unsafe {
        ev.sport = read_at(sk, conf!(kernel.sock_num)).unwrap_or(0);
        if family == AF_INET6 {
            ev.saddr = read_at(sk, conf!(kernel.sock_v6_rcv_saddr)).unwrap_or([0; 16]);
        } else {
            let a: [u8; 4] = read_at(sk, conf!(kernel.sock_rcv_saddr)).unwrap_or([0; 4]);
            ev.saddr[..4].copy_from_slice(&a);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

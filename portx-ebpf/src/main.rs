//! portx's BPF programs: TCP state changes and the connect/bind syscalls, streamed
//! through one ring buffer.
//!
//! Every tracepoint field offset and kernel struct offset comes from userspace in
//! `CONFIG` (read from tracefs and BTF at start-up), so nothing here is tied to one
//! kernel's layout.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TracePointContext,
    },
};
use portx_common::{
    BATCH_SLOTS, COMM_LEN, CompactV4, CompactV6, Config, Event, EventHeader, EventKind, NO_OFFSET,
    Owner, SLOT_BYTES, SysEnterOffsets, compact, compact_head, flush, hooks,
    uapi::{
        AF_INET, AF_INET6, EADDRNOTAVAIL, EINPROGRESS, IPPROTO_MPTCP, IPPROTO_TCP, SOCK_STREAM,
        TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_LISTEN,
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

/// The accounting path's per-CPU batch of events (`hooks::BATCH`): a ring-buffer
/// reserve and commit cost ~250 ns here, most of a connection's BPF time at four
/// records a connection, while appending to a per-CPU map value costs a few stores.
/// State changes take one 64-byte slot each in a compact form, other events two (see
/// `portx_common::SLOT_BYTES`). `busy` is set while an emit on this CPU writes it: a
/// program that interrupts it (softirq, or the flush program run from userspace by
/// IPI) leaves it alone.
#[repr(C)]
struct Batch {
    busy: u32,
    /// Slots in use, at most `BATCH_SLOTS - 3` between emits (a batch is sent once
    /// it has no room left for a two-slot record), so a record always starts at or
    /// below slot `BATCH_SLOTS - 3` and ends inside the first `BATCH_SLOTS - 1`.
    len: u32,
    /// Records in the batch (a drop counts these, not slots).
    records: u32,
    _pad: u32,
    /// One more than `BATCH_SLOTS`: a two-slot record at a slot index masked with
    /// `BATCH_SLOTS - 1` then stays inside the value whatever the verifier knows of it.
    slots: [[u64; SLOT_BYTES / 8]; BATCH_SLOTS + 1],
}

/// A batch is sent once it holds more slots than this.
const BATCH_FULL: usize = BATCH_SLOTS - 3;

#[map]
static BATCH: PerCpuArray<Batch> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, while its batch holds events, a time no later than its first event's
/// stamp (0: empty). Userspace reads this small value, not the batches: events older
/// than every CPU's are all in the ring, and a CPU whose events have waited long is
/// flushed.
#[map]
static BATCH_PENDING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A connect() or bind() in flight, stashed at syscall entry by thread id.
#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    /// connect(): the TCP socket this thread moved to SYN_SENT inside the syscall,
    /// noted by the state program (0 until then). Learning it there, rather than by
    /// walking the task's fd table at entry (eight probe reads), keeps the common
    /// path cheap; exit walks the table only when no socket was noted.
    sk: u64,
    /// The socket's network namespace, noted with `sk` (0: not known).
    netns: u32,
    fd: u32,
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

/// Which events kernel-function hooks emit (`portx_common::hooks` bits), set by the
/// loader once they are attached.
#[map]
static HOOKS: Array<u32> = Array::with_max_entries(1, 0);

/// kprobe entry -> kretprobe: the arguments of `__inet_hash_connect` (sk) and of
/// `inet_bind`/`inet6_bind` (sock, uaddr), by thread id.
#[derive(Clone, Copy)]
#[repr(C)]
struct ProbeArgs {
    a0: u64,
    a1: u64,
}

#[map]
static PROBE_ARGS: HashMap<u32, ProbeArgs> = HashMap::with_max_entries(16384, 0);

/// `sys_exit_connect_regs` only (no stash at entry): the local side of a socket that
/// left SYN_SENT for CLOSE inside a connect() (refused: on loopback the RST arrives
/// before connect() returns and the port is released by then), by thread id. Written
/// on that failure path alone; LRU, so entries of threads that never see their
/// connect() fail (a softirq ran in them) cannot fill it.
#[map]
static CONNECT_FAILED: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(1024, 0);

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

/// How a program reads kernel structs: a socket's fields, and the current task's name.
trait KernelRead {
    /// The `T` at `base + off`, or `None` for a null base or an unknown offset.
    unsafe fn at<T: Copy>(base: u64, off: u32) -> Option<T>;

    /// The current thread's name, as `bpf_get_current_comm()` gives it.
    #[inline(always)]
    fn current_comm() -> [u8; COMM_LEN] {
        bpf_get_current_comm().unwrap_or([0; COMM_LEN])
    }

    /// The current task's cgroup (v2) id, as `bpf_get_current_cgroup_id()` gives it.
    #[inline(always)]
    fn current_cgroup_id() -> u64 {
        // SAFETY: helper without arguments.
        unsafe { bpf_get_current_cgroup_id() }
    }

    /// 16 bytes at `base + off` in two 8-byte reads: an IPv6 address in `sock_common`,
    /// a task's `comm`.
    #[inline(always)]
    unsafe fn bytes16(base: u64, off: u32) -> Option<[u8; 16]> {
        unsafe {
            let lo: u64 = Self::at(base, off)?;
            let hi: u64 = Self::at(base, off.wrapping_add(8))?;
            Some((u128::from(lo) | (u128::from(hi) << 64)).to_le_bytes())
        }
    }
}

/// Through `bpf_probe_read_kernel`: works on any pointer (tracepoint fields, kprobe
/// arguments), at the cost of a helper call per field.
struct ProbeRead;

impl KernelRead for ProbeRead {
    #[inline(always)]
    unsafe fn at<T: Copy>(base: u64, off: u32) -> Option<T> {
        unsafe { read_at(base, off) }
    }
}

/// Plain loads, which the verifier allows (as fault-safe PROBE_MEM loads) on
/// BTF-typed pointers such as tp_btf arguments, and on pointers loaded through them,
/// when the offset is a constant it can check against the type. The offsets are:
/// `CONFIG` lives in `.rodata`, a frozen read-only map whose values the verifier
/// reads as constants. A load is one instruction where the helper is a call and a
/// fault-checked copy, ten times per state change.
/// https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/verifier.c (bpf_map_direct_read)
struct DirectLoad;

impl KernelRead for DirectLoad {
    #[inline(always)]
    unsafe fn at<T: Copy>(base: u64, off: u32) -> Option<T> {
        if base == 0 || off == NO_OFFSET {
            return None;
        }
        Some(unsafe { read_volatile((base + u64::from(off)) as *const T) })
    }

    /// Two loads from `current->comm` rather than the helper, which copies it byte by
    /// byte (`strscpy_pad`): about 70 ns of the ~110 ns an owner cost per state change
    /// in the connect storm. The verifier allows scalar loads of any size inside an
    /// array member of a BTF-typed pointer (`btf_struct_walk`), and the kernel keeps
    /// `comm` NUL-padded (`__set_task_comm` uses `strscpy_pad`); a rename racing the
    /// read can at worst mix two names, as the helper's copy can.
    /// https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/helpers.c (bpf_get_current_comm)
    /// https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/btf.c (btf_struct_walk)
    #[inline(always)]
    fn current_comm() -> [u8; COMM_LEN] {
        const _: () = assert!(COMM_LEN == 16);
        // SAFETY: a trusted task pointer; loads at a BTF offset inside `comm`.
        unsafe { Self::bytes16(bpf_get_current_task_btf() as u64, conf!(kernel.task_comm)) }
            .unwrap_or_else(|| bpf_get_current_comm().unwrap_or([0; COMM_LEN]))
    }

    /// `current->cgroups->dfl_cgrp->kn->id`, what the helper returns
    /// (`cgroup_id(task_dfl_cgroup(current))`), in four loads.
    /// https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/helpers.c (bpf_get_current_cgroup_id)
    #[inline(always)]
    fn current_cgroup_id() -> u64 {
        // SAFETY: loads at BTF offsets from a trusted task pointer; a non-sleepable
        // program runs under RCU, which `task->cgroups` needs.
        unsafe {
            let task = bpf_get_current_task_btf() as u64;
            let id = (|| {
                let cset: u64 = Self::at(task, conf!(kernel.task_cgroups))?;
                let cgrp: u64 = Self::at(cset, conf!(kernel.css_set_dfl_cgrp))?;
                let kn: u64 = Self::at(cgrp, conf!(kernel.cgroup_kn))?;
                Self::at::<u64>(kn, conf!(kernel.kernfs_node_id))
            })();
            id.unwrap_or_else(|| bpf_get_current_cgroup_id())
        }
    }
}

#[inline(always)]
fn tp_read<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if off == NO_OFFSET {
        return None;
    }
    // SAFETY: the offset comes from this kernel's tracefs format file.
    unsafe { ctx.read_at::<T>(off as usize).ok() }
}

/// Where `struct syscall_trace_exit` keeps `ret` on 64-bit kernels: after the 8-byte
/// common header and `int nr`.
/// https://elixir.bootlin.com/linux/v6.12/source/kernel/trace/trace.h (syscall_trace_exit)
const SYSCALL_EXIT_RET: usize = 16;

/// A syscall's return value at its exit tracepoint. Where this kernel's format file
/// puts it at [`SYSCALL_EXIT_RET`], one load from the context, which the verifier allows
/// at a constant offset; elsewhere a probe read at the format's offset. `exit_ret` is a
/// constant to the verifier, which drops the other branch. On the accounting path this
/// runs on every connect() and returns at once on success; the helper call was most of
/// that program's own time.
#[inline(always)]
fn syscall_ret(ctx: &TracePointContext) -> Option<i64> {
    if conf!(exit_ret) as usize == SYSCALL_EXIT_RET {
        // SAFETY: within the record, per the format file; aligned.
        Some(unsafe {
            read_volatile(
                ctx.as_ptr()
                    .cast::<u8>()
                    .add(SYSCALL_EXIT_RET)
                    .cast::<i64>(),
            )
        })
    } else {
        tp_read(ctx, conf!(exit_ret))
    }
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
fn sock_netns<R: KernelRead>(sk: u64) -> Option<u32> {
    // SAFETY: reads of kernel memory at BTF-derived offsets.
    unsafe {
        let net: u64 = R::at(sk, conf!(kernel.sock_net))?;
        R::at(net, conf!(kernel.net_inum))
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

/// Whether the trace asked for this event (`KernelFilter`). Checked before the
/// reserve: an event filtered out costs a few compares. The values are constants to
/// the verifier (frozen `.rodata`), which drops the checks that cannot fail.
#[inline(always)]
fn kind_wanted(kind: EventKind) -> bool {
    conf!(filter).keeps_kind(kind)
}

/// `kind_wanted`, and the namespace and ports too.
#[inline(always)]
fn wanted(kind: EventKind, netns: u32, sport: u16, dport: u16) -> bool {
    conf!(filter).passes(kind, netns, sport, dport)
}

/// What a connect() or bind() result is reported as.
#[inline(always)]
fn result_kind(is_connect: bool, ok: bool) -> EventKind {
    match (is_connect, ok) {
        (true, true) => EventKind::Connect,
        (true, false) => EventKind::ConnectError,
        (false, true) => EventKind::Bind,
        (false, false) => EventKind::BindError,
    }
}

/// Zeroes an event in place. Word by word, volatile: LLVM turns write_bytes (and a
/// plain loop) into a call to a BPF memset subprogram, a measurable share of the
/// per-event cost.
///
/// # Safety
/// `ev` points to writable memory sized for an Event.
#[inline(always)]
unsafe fn zero_event(ev: *mut Event) {
    const _: () = assert!(size_of::<Event>() % 8 == 0 && align_of::<Event>() == 8);
    let words = ev.cast::<u64>();
    for i in 0..size_of::<Event>() / 8 {
        // SAFETY: within the event (caller's contract).
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Writes an event: into this CPU's batch on the accounting path (`hooks::BATCH`),
/// else (or when the batch is being written by the program this one interrupted)
/// straight into a ring-buffer reservation. `fill` writes it in place: building it on
/// the 512-byte BPF stack first does not fit.
#[inline(always)]
fn emit(fill: impl FnOnce(&mut Event)) {
    if hooks_in_use() & hooks::BATCH != 0
        && let Some((b, slot)) = batch_claim()
    {
        // SAFETY: two slots of this CPU's batch, claimed; a full event takes two.
        unsafe {
            let ev = slot.cast::<Event>();
            zero_event(ev);
            fill(&mut *ev);
            batch_commit(b, 2, (*ev).header.kind);
        }
        return;
    }
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points to reserved ring-buffer memory sized for an Event.
            let kind = unsafe {
                zero_event(ev);
                fill(&mut *ev);
                (*ev).header.kind
            };
            entry.submit(wakeup_flags(kind));
        }
        None => count_dropped(1),
    }
}

/// Claims this CPU's batch for one record: its next free slot, with room for two
/// after it. `None` when the batch is being written by the program this one
/// interrupted (or cannot be had). Every claim is followed by [`batch_commit`].
#[inline(always)]
fn batch_claim() -> Option<(*mut Batch, *mut u64)> {
    let b = BATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's batch; `busy` keeps a program that interrupts this one (on
    // this CPU: nothing else writes it) out of it until it is consistent.
    unsafe {
        if read_volatile(&(*b).busy) != 0 {
            return None;
        }
        write_volatile(&mut (*b).busy, 1);
        // Masked, not compared: the verifier of older kernels (6.1) loses a compare's
        // bound when the value is spilled to the stack, and `len` is at most
        // BATCH_FULL anyway (a batch is sent as it fills).
        let i = (read_volatile(&(*b).len) as usize) & (BATCH_SLOTS - 1);
        if i == 0 {
            // Before the record is stamped.
            set_pending(bpf_ktime_get_boot_ns());
        }
        Some((b, (*b).slots.as_mut_ptr().add(i).cast::<u64>()))
    }
}

/// Ends a [`batch_claim`]: the record written takes `slots` slots and is of `kind`.
/// A failure goes out at once (detection latency), as does a full batch.
///
/// # Safety
/// `b` is this CPU's batch, claimed by the caller.
#[inline(always)]
unsafe fn batch_commit(b: *mut Batch, slots: usize, kind: u32) {
    // SAFETY: caller's contract.
    unsafe {
        let len = ((read_volatile(&(*b).len) as usize) & (BATCH_SLOTS - 1)) + slots;
        (*b).len = len as u32;
        (*b).records += 1;
        if len > BATCH_FULL || is_failure(kind) {
            flush_batch_of(b, kind);
        }
        write_volatile(&mut (*b).busy, 0);
    }
}

/// A state change in one slot of this CPU's batch (the accounting path): IPv4 with or
/// without its owner, IPv6 without. False where it does not fit (IPv6 with an owner)
/// or the batch is busy; the caller then sends a full event.
#[inline(always)]
fn emit_compact_state<R: KernelRead>(
    sk: u64,
    old: u8,
    new: u8,
    netns: u32,
    ep: &Endpoints,
    owner: bool,
) -> bool {
    let v4 = ep.family == AF_INET;
    if !v4 && (ep.family != AF_INET6 || owner) {
        return false;
    }
    let Some((b, slot)) = batch_claim() else {
        return false;
    };
    // SAFETY: one slot of this CPU's batch, claimed; either form fills it.
    unsafe {
        if v4 {
            let c = slot.cast::<CompactV4>();
            (*c).head = compact_head(compact::V4, old, new);
            (*c).netns = netns;
            (*c).ts_ns = bpf_ktime_get_boot_ns();
            (*c).skaddr = sk;
            (*c).saddr = [ep.saddr[0], ep.saddr[1], ep.saddr[2], ep.saddr[3]];
            (*c).daddr = [ep.daddr[0], ep.daddr[1], ep.daddr[2], ep.daddr[3]];
            (*c).sport = ep.sport;
            (*c).dport = ep.dport;
            if owner {
                (*c).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
                (*c).cgroup_id = R::current_cgroup_id();
                (*c).comm = R::current_comm();
            } else {
                (*c).pid = 0;
                (*c).cgroup_id = 0;
                (*c).comm = [0; COMM_LEN];
            }
        } else {
            let c = slot.cast::<CompactV6>();
            (*c).head = compact_head(compact::V6, old, new);
            (*c).netns = netns;
            (*c).ts_ns = bpf_ktime_get_boot_ns();
            (*c).skaddr = sk;
            (*c).saddr = ep.saddr;
            (*c).daddr = ep.daddr;
            (*c).sport = ep.sport;
            (*c).dport = ep.dport;
            (*c)._pad = 0;
        }
        batch_commit(b, 1, EventKind::State as u32);
    }
    true
}

fn count_dropped(n: u64) {
    if let Some(count) = DROPPED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *count += n };
    }
}

fn set_pending(v: u64) {
    if let Some(p) = BATCH_PENDING.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; userspace only reads it.
        unsafe { write_volatile(p, v) };
    }
}

#[inline(always)]
fn is_failure(kind: u32) -> bool {
    kind == EventKind::ConnectError as u32 || kind == EventKind::BindError as u32
}

/// Sends this CPU's batched events as one ring record (`len` slots) and
/// empties the batch; a full ring drops them, counted. `last` is the kind of the event
/// just added (a failure wakes the reader).
///
/// # Safety
/// `b` is this CPU's batch, with `busy` set by the caller.
#[inline(always)]
unsafe fn flush_batch_of(b: *mut Batch, last: u32) {
    // SAFETY: caller's contract.
    unsafe {
        // Masked rather than compared, for the 6.1 verifier (see `in_batch`): `len`
        // is below BATCH_SLOTS, so the mask changes nothing but what the verifier can
        // prove.
        let n = (read_volatile(&(*b).len) as usize) & (BATCH_SLOTS - 1);
        if n == 0 {
            return;
        }
        let bytes = core::slice::from_raw_parts((*b).slots.as_ptr().cast::<u8>(), n * SLOT_BYTES);
        if EVENTS.output::<[u8]>(bytes, wakeup_flags(last)).is_err() {
            count_dropped(u64::from(read_volatile(&(*b).records)));
        }
        (*b).len = 0;
        (*b).records = 0;
        set_pending(0);
    }
}

/// Run by userspace on a CPU (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_RUN_ON_CPU`, never
/// attached) to send that CPU's batch, so events never wait on a CPU that has gone
/// quiet. From an IPI it may interrupt an emit on that CPU: then it leaves the batch
/// alone and says so.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn flush_batch(_ctx: RawTracePointContext) -> i32 {
    let Some(b) = BATCH.get_ptr_mut(0) else {
        return flush::DONE as i32;
    };
    // SAFETY: this CPU's batch, guarded by `busy` as in `emit`.
    unsafe {
        if read_volatile(&(*b).busy) != 0 {
            return flush::BUSY as i32;
        }
        write_volatile(&mut (*b).busy, 1);
        flush_batch_of(b, 0);
        write_volatile(&mut (*b).busy, 0);
    }
    flush::DONE as i32
}

/// Whether this submit wakes the reader. A wake-up per event (the kernel's default
/// when the reader has caught up) costs a context switch per event, which under a
/// connect storm is most of tracing's cost. So failures wake it at once (detection
/// latency), other events only once `wakeup_bytes` are unread; the reader drains the
/// rest on a short timer.
/// https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/ringbuf.c (bpf_ringbuf_commit)
#[inline(always)]
fn wakeup_flags(kind: u32) -> u64 {
    const FORCE_WAKEUP: u64 = 2;
    const NO_WAKEUP: u64 = 1;
    const AVAIL_DATA: u64 = 0;
    let threshold = conf!(wakeup_bytes);
    if is_failure(kind) {
        FORCE_WAKEUP
    } else if threshold == 0 {
        0
    } else if EVENTS.query(AVAIL_DATA) >= u64::from(threshold) {
        FORCE_WAKEUP
    } else {
        NO_WAKEUP
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

/// A socket's family, protocol and 4-tuple (ports in host order).
#[derive(Clone, Copy)]
struct Endpoints {
    family: u16,
    protocol: u16,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// Whether a transition matters at all: it is traced, or it tells a connect() in
/// flight its socket or port (see `note_connect_sock`). Under `--errors` that leaves
/// two of a connection's ten state changes, and the rest return before any read.
#[inline(always)]
fn state_needed(old: u8, new: u8) -> bool {
    kind_wanted(EventKind::State)
        || (old == TCP_CLOSE && new == TCP_SYN_SENT)
        || old == TCP_SYN_SENT
}

/// The accounting path's filter (`Config::accounting`, the rule in
/// [`portx_common::accounting_leaves_out`]). An accepted socket is told apart without
/// a map (a map operation costs about as much as the rest of the program here): the
/// child cloned from a listener keeps the listener's `sk_max_ack_backlog`, and a socket
/// that connect()ed never listened, so its backlog is 0. A listener with a backlog of 0
/// has its children reported, as without this filter; the model knows them as accepted
/// by their first event, which leaves SYN_RECV.
/// https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_connection_sock.c (inet_csk_clone_lock)
#[inline(always)]
fn accounting_left_out<R: KernelRead>(sk: u64, old: u8, new: u8) -> bool {
    conf!(accounting) != 0
        && portx_common::accounting_leaves_out(old, new, || {
            // SAFETY: a read at a BTF offset of `struct sock`.
            let backlog: u32 =
                unsafe { R::at(sk, conf!(kernel.sock_max_ack_backlog)) }.unwrap_or(0);
            backlog != 0
        })
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Option<()> {
    let old = tp_read::<i32>(ctx, conf!(state_tp.oldstate))? as u8;
    let new = tp_read::<i32>(ctx, conf!(state_tp.newstate))? as u8;
    if !state_needed(old, new) {
        return None;
    }
    let protocol: u16 = tp_read(ctx, conf!(state_tp.protocol))?;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP {
        return None;
    }
    let sk: u64 = tp_read(ctx, conf!(state_tp.skaddr))?;
    if accounting_left_out::<ProbeRead>(sk, old, new) {
        return None;
    }
    let mut ep = Endpoints {
        family: tp_read(ctx, conf!(state_tp.family))?,
        protocol,
        sport: tp_read(ctx, conf!(state_tp.sport))?,
        dport: tp_read(ctx, conf!(state_tp.dport))?,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    if old == TCP_CLOSE && new == TCP_SYN_SENT && ep.sport != 0 {
        // The tracepoint copies inet_sport, which a socket connect()ing again after a
        // failure still holds from its last attempt; its port is inet_num (skc_num):
        // 0 until this attempt picks one, or the port it bound.
        // SAFETY: probe read at a BTF offset.
        ep.sport = unsafe { read_at::<u16>(sk, conf!(kernel.sock_num)) }.unwrap_or(ep.sport);
    }
    if ep.family == AF_INET6 {
        ep.saddr = tp_read(ctx, conf!(state_tp.saddr_v6))?;
        ep.daddr = tp_read(ctx, conf!(state_tp.daddr_v6))?;
    } else {
        ep.saddr = ipv4_padded(tp_read(ctx, conf!(state_tp.saddr))?);
        ep.daddr = ipv4_padded(tp_read(ctx, conf!(state_tp.daddr))?);
    }
    handle_state::<ProbeRead>(sk, old, new, &ep)
}

/// An IPv4 address as read from memory (network order), in the 16-byte address
/// field. Widened as an integer: copying into a zeroed array compiles to calls to a
/// BPF memset subprogram, on every state change.
#[inline(always)]
fn ipv4_padded(addr: u32) -> [u8; 16] {
    u128::from(addr).to_le_bytes()
}

/// The same tracepoint through BTF: the socket pointer and states as arguments, the
/// rest loaded from the socket (what the plain tracepoint copies out of it). Cheaper
/// per event than the plain tracepoint, which formats a trace record first, and
/// cheaper again for reading the socket with plain loads (see `DirectLoad`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if !state_needed(old as u8, new as u8)
        || accounting_left_out::<DirectLoad>(sk, old as u8, new as u8)
    {
        return 0;
    }
    if let Some(mut ep) = sock_endpoints::<DirectLoad>(sk)
        && (ep.protocol == IPPROTO_TCP || ep.protocol == IPPROTO_MPTCP)
    {
        if ep.sport == 0 && new as u8 == TCP_CLOSE {
            // The port as the plain tracepoint reports it (inet_sport): on a move to
            // CLOSE some kernels fire this after inet_put_port() has zeroed skc_num.
            // Only there: before a connect() picks its port, inet_sport may still hold
            // the port of a failed earlier attempt on the same socket.
            // inet_sport is in struct inet_sock, beyond the argument's BTF type
            // (struct sock), so it takes a probe read.
            // SAFETY: probe read at a BTF offset; a full socket is an inet_sock.
            if let Some(port) = unsafe { read_at::<u16>(sk, conf!(kernel.inet_sport)) } {
                ep.sport = u16::from_be(port);
            }
        }
        let _ = handle_state::<DirectLoad>(sk, old as u8, new as u8, &ep);
    }
    0
}

/// Reads a socket's endpoints through its `sock_common` (also a timewait socket's).
#[inline(always)]
fn sock_endpoints<R: KernelRead>(sk: u64) -> Option<Endpoints> {
    // SAFETY: reads at BTF offsets.
    unsafe {
        let family: u16 = R::at(sk, conf!(kernel.sock_family))?;
        let mut ep = Endpoints {
            family,
            protocol: R::at(sk, conf!(kernel.sock_protocol)).unwrap_or(IPPROTO_TCP),
            sport: R::at(sk, conf!(kernel.sock_num))?,
            dport: u16::from_be(R::at(sk, conf!(kernel.sock_dport))?),
            saddr: [0; 16],
            daddr: [0; 16],
        };
        if family == AF_INET6 {
            ep.saddr = R::bytes16(sk, conf!(kernel.sock_v6_rcv_saddr))?;
            ep.daddr = R::bytes16(sk, conf!(kernel.sock_v6_daddr))?;
        } else if family == AF_INET {
            ep.saddr = ipv4_padded(R::at(sk, conf!(kernel.sock_rcv_saddr))?);
            ep.daddr = ipv4_padded(R::at(sk, conf!(kernel.sock_daddr))?);
        } else {
            return None;
        }
        Some(ep)
    }
}

/// `R` says how `sk` can be read: tracepoint fields are plain numbers to the verifier,
/// tp_btf arguments typed pointers.
#[inline(always)]
fn handle_state<R: KernelRead>(sk: u64, old: u8, new: u8, ep: &Endpoints) -> Option<()> {
    let (sport, saddr) = (ep.sport, ep.saddr);
    let netns = sock_netns::<R>(sk).or_else(task_netns).unwrap_or(0);

    // What a connect() in flight in this thread needs to know of its socket.
    if (old == TCP_CLOSE && new == TCP_SYN_SENT) || old == TCP_SYN_SENT {
        if hooks_in_use() & hooks::CONNECT_STASH != 0 {
            if old == TCP_CLOSE {
                note_connect_sock(sk, netns);
            } else if sport != 0 {
                note_connect_port(sk, sport, &saddr);
            }
        } else if new == TCP_CLOSE && sport != 0 {
            note_connect_failed(sk, sport, &saddr);
        }
    }

    if !wanted(EventKind::State, netns, sport, ep.dport) {
        return None;
    }

    // The owner only where `current` is it; userspace carries it to the transitions
    // that run in softirq (portx::sock_owners). Keeping it in a map here cost a
    // lookup per state change and an insert and a delete per socket.
    let with_owner = in_owner_context(old, new);
    if hooks_in_use() & hooks::BATCH != 0
        && emit_compact_state::<R>(sk, old, new, netns, ep, with_owner)
    {
        return Some(());
    }
    let owner = if with_owner {
        current_owner()
    } else {
        Owner::default()
    };

    emit(|ev| {
        ev.header = header(EventKind::State, netns, owner);
        ev.skaddr = sk;
        ev.saddr = ep.saddr;
        ev.daddr = ep.daddr;
        ev.sport = ep.sport;
        ev.dport = ep.dport;
        ev.family = ep.family;
        ev.protocol = ep.protocol;
        ev.old_state = old;
        ev.new_state = new;
    });
    Some(())
}

/// Records the socket a connect() in this thread is connecting: tcp_v4_connect and
/// tcp_v6_connect move it to SYN_SENT in the caller's context, before they pick the
/// port. The first one wins (MPTCP moves its subflows too).
/// https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/tcp_ipv4.c (tcp_v4_connect)
fn note_connect_sock(sk: u64, netns: u32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(p) = PENDING_CONNECT.get_ptr_mut(tid) {
        // SAFETY: pointer from a successful lookup of this thread's own entry.
        unsafe {
            if (*p).sk == 0 {
                (*p).sk = sk;
                (*p).netns = netns;
            }
        }
    }
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

/// Without the stash (`sys_exit_connect_regs`): the local side of a socket that failed
/// out of SYN_SENT in this thread, for a connect() error that follows. Only failures
/// come here, so the map costs the common path nothing.
fn note_connect_failed(sk: u64, sport: u16, saddr: &[u8; 16]) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let p = Pending {
        sk,
        netns: 0,
        fd: 0,
        addr: [0; 16],
        family: 0,
        port: 0,
        local_port: sport,
        _pad: 0,
        local_addr: *saddr,
    };
    let _ = CONNECT_FAILED.insert(&tid, &p, 0);
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
    let p = read_sockaddr(fd, uaddr, addrlen)?;
    let tid = bpf_get_current_pid_tgid() as u32;
    pending.insert(tid, p, 0).ok()
}

/// A connect()/bind() call's arguments: the fd and the address asked for, read from
/// the caller's memory.
#[inline(always)]
fn read_sockaddr(fd: u64, uaddr: u64, addrlen: u64) -> Option<Pending> {
    if uaddr == 0 || addrlen < 16 {
        return None;
    }
    // struct sockaddr_in:  family(2) port(2, be) addr(4)
    // struct sockaddr_in6: family(2) port(2, be) flowinfo(4) addr(16) scope_id(4)
    // The first 8 bytes in one read: a helper call each is a large share of this
    // program's cost.
    // SAFETY: user pointer passed to the syscall; a bad pointer makes the read fail.
    let head: [u8; 8] = unsafe { bpf_probe_read_user(uaddr as *const [u8; 8]).ok()? };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let mut p = Pending {
        sk: 0,
        netns: 0,
        fd: fd as u32,
        addr: [0; 16],
        family,
        port: u16::from_be_bytes([head[2], head[3]]),
        local_port: 0,
        _pad: 0,
        local_addr: [0; 16],
    };
    if family == AF_INET {
        p.addr = ipv4_padded(u32::from_ne_bytes([head[4], head[5], head[6], head[7]]));
    } else if family == AF_INET6 && addrlen >= 24 {
        // SAFETY: as above.
        p.addr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]).ok()? };
    } else {
        return None;
    }
    Some(p)
}

/// connect() results without a stash at entry (the accounting path, where this loads):
/// a success returns at its first compare, since the socket's own transition out of
/// SYN_SENT carries the port; a failure finds the call's arguments where the syscall
/// entry saved the caller's registers, which the kernel leaves in place until the
/// return to user space. That takes a map update and a user-memory read off every
/// connect(), which the stash at entry costs.
/// https://elixir.bootlin.com/linux/v6.12/source/kernel/trace/bpf_trace.c (bpf_task_pt_regs)
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect_regs(ctx: TracePointContext) -> u32 {
    let _ = try_exit_connect_regs(&ctx);
    0
}

fn try_exit_connect_regs(ctx: &TracePointContext) -> Option<()> {
    let ret = syscall_ret(ctx)?;
    if ret == 0 || ret == -EINPROGRESS {
        return None;
    }
    let [fd, uaddr, addrlen] = syscall_args()?;
    let mut p = read_sockaddr(fd, uaddr, addrlen)?;
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out before the entry is removed.
    if let Some(failed) = unsafe { CONNECT_FAILED.get(&tid) }.copied() {
        let _ = CONNECT_FAILED.remove(&tid);
        // Only if it is this call's socket: a softirq may have noted another's.
        if let Some((sk, _)) = sock_of_fd(fd)
            && sk == failed.sk
        {
            p.sk = sk;
            p.local_port = failed.local_port;
            p.local_addr = failed.local_addr;
        }
    }
    report_result(p, ret, true)
}

/// The current task's syscall arguments 0-2, from its saved user registers.
#[inline(always)]
fn syscall_args() -> Option<[u64; 3]> {
    let offs = conf!(kernel.regs_args);
    // SAFETY: helpers on the current task; probe reads at BTF offsets of `pt_regs`.
    unsafe {
        let task = aya_ebpf::helpers::generated::bpf_get_current_task_btf();
        let regs = aya_ebpf::helpers::generated::bpf_task_pt_regs(task) as u64;
        Some([
            read_at(regs, offs[0])?,
            read_at(regs, offs[1])?,
            read_at(regs, offs[2])?,
        ])
    }
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
    let ret = syscall_ret(ctx)?;
    report_result(p, ret, is_connect)
}

/// Reports a connect() or bind() result, `p` saying what was asked for and, where the
/// state program noted them, the socket and the local side it got.
#[inline(always)]
fn report_result(p: Pending, ret: i64, is_connect: bool) -> Option<()> {
    let ok = ret == 0 || (is_connect && ret == -EINPROGRESS);
    // Kernel-function hooks, when attached, report what they see exactly; the syscall
    // side then only adds the connect() errors that happen outside the allocation.
    let hooked = hooks_in_use();
    if is_connect && hooked & hooks::CONNECT_IN_KERNEL != 0 && (ok || ret == -EADDRNOTAVAIL) {
        return None;
    }
    if !is_connect && hooked & hooks::BIND_IN_KERNEL != 0 {
        return None;
    }
    let kind = result_kind(is_connect, ok);
    // The kind alone settles most filtered-out calls, before any socket read.
    if !kind_wanted(kind) {
        return None;
    }
    let sk = if p.sk != 0 {
        p.sk
    } else {
        // No TCP socket of this thread entered SYN_SENT: a bind(), a connect() that
        // failed before that, or not a stream socket at all (UDP connects too).
        match sock_of_fd(u64::from(p.fd)) {
            Some((_, sock_type)) if sock_type != SOCK_STREAM => return None,
            Some((sk, _)) => sk,
            // Not a socket, or a closed fd: the failure is still reported.
            None => 0,
        }
    };
    let netns = if p.netns != 0 {
        p.netns
    } else {
        sock_netns::<ProbeRead>(sk).or_else(task_netns).unwrap_or(0)
    };
    // The local side: for connect() the address the kernel chose, for bind() the
    // one asked for.
    let (saddr, sport) = if !is_connect {
        (p.addr, p.port)
    } else if ret == -EADDRNOTAVAIL {
        // No port was allocated: the allocator found none free, or the 4-tuple of a
        // bound port is taken. A port is then only one bind() gave (skc_num). What the
        // state program noted and inet_sport may be a failed earlier attempt's on the
        // same socket, since __inet_hash_connect sets inet_sport only on success.
        // https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_hashtables.c (__inet_hash_connect)
        // SAFETY: probe reads at BTF offsets.
        unsafe { read_local(sk, p.family) }
    } else if p.local_port != 0 {
        (p.local_addr, p.local_port)
    } else {
        // The ephemeral port is set inside inet_hash_connect, so a socket still
        // connecting has it by now. A socket refused or timed out has released it
        // (inet_put_port zeroes skc_num) but keeps inet_sport: a failure with a port
        // is one whose SYN went out, which `serve` counts at its SYN_SENT -> CLOSE.
        // SAFETY: probe reads at BTF offsets.
        let (addr, port) = unsafe { read_local(sk, p.family) };
        let port = if port == 0 && !ok {
            // SAFETY: as above; a full TCP socket is an inet_sock.
            unsafe { read_at::<u16>(sk, conf!(kernel.inet_sport)) }.map_or(0, u16::from_be)
        } else {
            port
        };
        (addr, port)
    };
    let (daddr, dport) = if is_connect {
        (p.addr, p.port)
    } else {
        ([0; 16], 0)
    };
    if !wanted(kind, netns, sport, dport) {
        return None;
    }
    emit(|ev| {
        ev.header = header(kind, netns, current_owner());
        ev.skaddr = sk;
        ev.family = p.family;
        ev.saddr = saddr;
        ev.sport = sport;
        ev.daddr = daddr;
        ev.dport = dport;
        if !ok {
            ev.errno = (-ret) as u32;
        } else if !is_connect {
            // The port bind() gave, which differs from the one asked for with 0.
            // SAFETY: probe read at a BTF offset.
            ev.bound_port = unsafe { read_at(sk, conf!(kernel.sock_num)) }.unwrap_or(0);
        }
    });
    Some(())
}

fn hooks_in_use() -> u32 {
    HOOKS.get(0).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// Kernel-function hooks, where the kernel allows them (fentry/fexit, else kprobes).
// They see every caller (io_uring, in-kernel clients), not only the syscalls.
// Argument positions are checked against the running kernel's BTF before loading.
// ---------------------------------------------------------------------------------

/// `__inet_hash_connect(death_row, sk, ...)` returned `ret`: the ephemeral port
/// allocation (0) or its failure (-EADDRNOTAVAIL), for IPv4 and IPv6 alike.
fn on_hash_connect(sk: u64, ret: i64) -> Option<()> {
    let kind = result_kind(true, ret == 0);
    if !kind_wanted(kind) {
        return None;
    }
    let ep = sock_endpoints::<ProbeRead>(sk)?;
    let netns = sock_netns::<ProbeRead>(sk).or_else(task_netns).unwrap_or(0);
    if !wanted(kind, netns, ep.sport, ep.dport) {
        return None;
    }
    emit(|ev| {
        ev.header = header(kind, netns, current_owner());
        ev.skaddr = sk;
        ev.family = ep.family;
        ev.protocol = ep.protocol;
        ev.saddr = ep.saddr;
        ev.sport = ep.sport;
        ev.daddr = ep.daddr;
        ev.dport = ep.dport;
        if ret != 0 {
            ev.errno = (-ret) as u32;
        }
    });
    Some(())
}

#[fexit(function = "__inet_hash_connect")]
pub fn hash_connect_fexit(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(1);
    if let Ok(ret) = ctx.ret::<i32>() {
        let _ = on_hash_connect(sk, i64::from(ret));
    }
    0
}

#[kprobe]
pub fn hash_connect_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(1) {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = PROBE_ARGS.insert(tid, ProbeArgs { a0: sk, a1: 0 }, 0);
    }
    0
}

#[kretprobe]
pub fn hash_connect_kretprobe(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out before the entry is removed.
    if let Some(args) = unsafe { PROBE_ARGS.get(tid) }.copied() {
        let _ = PROBE_ARGS.remove(tid);
        let ret: i32 = ctx.ret();
        let _ = on_hash_connect(args.a0, i64::from(ret));
    }
    0
}

/// `inet_bind`/`inet6_bind(sock, uaddr, addr_len)` returned `ret`.
fn on_bind(sock: u64, uaddr: u64, ret: i64) -> Option<()> {
    let kind = result_kind(false, ret == 0);
    if !kind_wanted(kind) {
        return None;
    }
    // SAFETY: probe reads of kernel memory (uaddr is the kernel's copy).
    let (sock_type, sk, family) = unsafe {
        (
            read_at::<u16>(sock, conf!(kernel.socket_type))?,
            read_at::<u64>(sock, conf!(kernel.socket_sk))?,
            bpf_probe_read_kernel(uaddr as *const u16).ok()?,
        )
    };
    if sock_type != SOCK_STREAM || (family != AF_INET && family != AF_INET6) {
        return None;
    }
    let netns = sock_netns::<ProbeRead>(sk).or_else(task_netns).unwrap_or(0);
    // SAFETY: as above; sockaddr_in / sockaddr_in6 layouts.
    let (addr, port) = unsafe {
        let addr = if family == AF_INET {
            ipv4_padded(bpf_probe_read_kernel((uaddr + 4) as *const u32).ok()?)
        } else {
            bpf_probe_read_kernel((uaddr + 8) as *const [u8; 16]).ok()?
        };
        let port = u16::from_be(bpf_probe_read_kernel((uaddr + 2) as *const u16).ok()?);
        (addr, port)
    };
    if !wanted(kind, netns, port, 0) {
        return None;
    }
    emit(|ev| {
        ev.header = header(kind, netns, current_owner());
        ev.skaddr = sk;
        ev.family = family;
        ev.saddr = addr;
        ev.sport = port;
        if ret == 0 {
            // SAFETY: probe read at a BTF offset.
            ev.bound_port = unsafe { read_at(sk, conf!(kernel.sock_num)) }.unwrap_or(0);
        } else {
            ev.errno = (-ret) as u32;
        }
    });
    Some(())
}

#[fexit(function = "inet_bind")]
pub fn inet_bind_fexit(ctx: FExitContext) -> i32 {
    bind_fexit(&ctx)
}

#[fexit(function = "inet6_bind")]
pub fn inet6_bind_fexit(ctx: FExitContext) -> i32 {
    bind_fexit(&ctx)
}

#[inline(always)]
fn bind_fexit(ctx: &FExitContext) -> i32 {
    let sock: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    if let Ok(ret) = ctx.ret::<i32>() {
        let _ = on_bind(sock, uaddr, i64::from(ret));
    }
    0
}

#[kprobe]
pub fn bind_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = PROBE_ARGS.insert(
            tid,
            ProbeArgs {
                a0: sock,
                a1: uaddr,
            },
            0,
        );
    }
    0
}

#[kretprobe]
pub fn bind_kretprobe(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out before the entry is removed.
    if let Some(args) = unsafe { PROBE_ARGS.get(tid) }.copied() {
        let _ = PROBE_ARGS.remove(tid);
        let ret: i32 = ctx.ret();
        let _ = on_bind(args.a0, args.a1, i64::from(ret));
    }
    0
}

/// `inet_twsk_kill(tw)`: a TIME_WAIT socket is freed, by its timer or because a new
/// connection reused its 4-tuple. Runs in softirq: no owner.
fn on_twsk_kill(tw: u64) -> Option<()> {
    if !kind_wanted(EventKind::TimewaitEnd) {
        return None;
    }
    let ep = sock_endpoints::<ProbeRead>(tw)?;
    let netns = sock_netns::<ProbeRead>(tw).unwrap_or(0);
    if !wanted(EventKind::TimewaitEnd, netns, ep.sport, ep.dport) {
        return None;
    }
    emit(|ev| {
        ev.header = header(EventKind::TimewaitEnd, netns, Owner::default());
        ev.skaddr = tw;
        ev.family = ep.family;
        ev.protocol = IPPROTO_TCP;
        ev.saddr = ep.saddr;
        ev.sport = ep.sport;
        ev.daddr = ep.daddr;
        ev.dport = ep.dport;
    });
    Some(())
}

#[fentry(function = "inet_twsk_kill")]
pub fn twsk_kill_fentry(ctx: FEntryContext) -> i32 {
    let _ = on_twsk_kill(ctx.arg(0));
    0
}

#[kprobe]
pub fn twsk_kill_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(tw) = ctx.arg::<u64>(0) {
        let _ = on_twsk_kill(tw);
    }
    0
}

/// The socket's bound local address and port (`skc_rcv_saddr`, `skc_num`).
#[inline(always)]
unsafe fn read_local(sk: u64, family: u16) -> ([u8; 16], u16) {
    unsafe {
        let port = read_at(sk, conf!(kernel.sock_num)).unwrap_or(0);
        let addr = if family == AF_INET6 {
            read_at(sk, conf!(kernel.sock_v6_rcv_saddr)).unwrap_or([0; 16])
        } else {
            ipv4_padded(read_at(sk, conf!(kernel.sock_rcv_saddr)).unwrap_or(0))
        };
        (addr, port)
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

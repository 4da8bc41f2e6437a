//! The accounting path's per-CPU event batches (`portx_common::hooks::BATCH`), from
//! userspace: which CPUs hold batched events, and running the flush program on them.
//!
//! A CPU's batch reaches the ring buffer when it fills, when it takes a failure, or
//! when userspace runs the (never attached) flush program on that CPU with
//! `BPF_PROG_TEST_RUN` and `BPF_F_TEST_RUN_ON_CPU`, which it does before every drain:
//! so nothing waits on a CPU that has gone quiet, and after a flush every event
//! stamped before it is in the ring.
//! https://elixir.bootlin.com/linux/v6.12/source/net/bpf/test_run.c (bpf_prog_test_run_raw_tp)

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, PerCpuArray};
use portx_common::flush;

/// `BPF_PROG_TEST_RUN` (`enum bpf_cmd`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Run on the CPU given in `cpu`.
const BPF_F_TEST_RUN_ON_CPU: u32 = 1;

/// The `test` member of `union bpf_attr` (stable since 5.10, which added `cpu`).
/// https://elixir.bootlin.com/linux/v6.12/source/include/uapi/linux/bpf.h
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<TestRunAttr>() == 80);

/// Runs the raw tracepoint program `prog` once on `cpu`; its return value.
fn run_on_cpu(prog: BorrowedFd<'_>, cpu: u32) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        flags: BPF_F_TEST_RUN_ON_CPU,
        cpu,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, initialised `bpf_attr.test` of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}

/// What a [`BatchFlusher::flush`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flushed {
    /// Every event stamped at or before this boot-clock time is in the ring.
    pub upto: u64,
    /// Some CPU still holds events (they come with a later flush).
    pub waiting: bool,
}

/// How long before a flush an event may have been stamped and still not be in the
/// ring: a program between its timestamp and its commit (a few microseconds, more if
/// preempted), and the visibility of another CPU's stores.
const SLACK_NS: u64 = 2_000_000;

/// A CPU whose first batched event is older than this is flushed (by IPI) before a
/// drain; younger batches are left to fill, which under load they do in well under a
/// millisecond, so a storm costs no IPIs.
pub const FLUSH_AGE: std::time::Duration = std::time::Duration::from_millis(10);

pub struct BatchFlusher {
    prog: OwnedFd,
    pending: PerCpuArray<MapData, u64>,
}

impl BatchFlusher {
    /// Takes the flush program and the pending stamps, and proves the program runs on
    /// every online CPU (which also empties their batches).
    pub fn new(prog: OwnedFd, pending: PerCpuArray<MapData, u64>) -> Result<Self> {
        let cpus =
            aya::util::online_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
        for &cpu in &cpus {
            let ret = run_on_cpu(prog.as_fd(), cpu)
                .with_context(|| format!("BPF_PROG_TEST_RUN of the flush program on CPU {cpu}"))?;
            if ret != flush::DONE && ret != flush::BUSY {
                bail!("the flush program returned {ret} on CPU {cpu}");
            }
        }
        Ok(Self { prog, pending })
    }

    /// Sends the batches that have waited `older_than` ([`FLUSH_AGE`] while running;
    /// zero at stop, an IPI per CPU that holds events) to the ring buffer, and says up
    /// to when the ring is then complete: before the oldest event still in a batch, and
    /// before now less [`SLACK_NS`].
    pub fn flush(&mut self, older_than: std::time::Duration) -> Result<Flushed> {
        let age_ns = u64::try_from(older_than.as_nanos()).unwrap_or(u64::MAX);
        let now = crate::kernel::live::boottime_ns();
        // Every possible CPU's stamp: one brought online since start-up included.
        let pending = self
            .pending
            .get(&0, 0)
            .context("reading which CPUs hold batched events")?;
        let mut done = Flushed {
            upto: now.saturating_sub(SLACK_NS),
            waiting: false,
        };
        for (cpu, &first) in pending.iter().enumerate() {
            if first == 0 {
                continue;
            }
            if now.saturating_sub(first) >= age_ns {
                match run_on_cpu(self.prog.as_fd(), cpu as u32) {
                    Ok(flush::DONE) => continue,
                    // An emit in progress there: its events come next time.
                    Ok(_) => {}
                    // ENXIO: the CPU went offline with events in its batch; they come
                    // if it returns. Waiting for them would hold everything back.
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => continue,
                    Err(e) => return Err(e).context(format!("flushing CPU {cpu}'s events")),
                }
            }
            done.upto = done.upto.min(first.saturating_sub(1));
            done.waiting = true;
        }
        Ok(done)
    }
}

//! Loading portx's BPF programs into the running kernel and reading their events.
//!
//! The kernel-facing half of portx: everything here needs root. Offsets come from
//! tracefs format files ([`crate::tracefs`]) and BTF ([`crate::kernel_btf`]).

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use portx_common::{Config, names};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{kernel_btf::KernelBtf, tracefs};

/// The BPF object built by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portx-ebpf"));

/// Each program and the tracepoint it attaches to.
pub const PROGRAMS: &[(&str, &str, &str)] = &[
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_enter_bind", "syscalls", "sys_enter_bind"),
    ("sys_exit_bind", "syscalls", "sys_exit_bind"),
];

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 16 << 20,
        }
    }
}

/// The kernel facts the programs were configured with, for `--verbose`.
#[derive(Debug)]
pub struct Setup {
    pub tracefs: std::path::PathBuf,
    pub config: Config,
    /// BTF members this kernel lacks; the matching fields are left empty.
    pub btf_missing: Vec<String>,
    /// `program -> category:tracepoint` for each attached program.
    pub attached: Vec<String>,
}

/// Reads the tracepoint formats and BTF of the running kernel.
pub fn kernel_config(tracefs_root: &Path) -> anyhow::Result<(Config, Vec<String>)> {
    let fmt = |cat, name| tracefs::Format::read(tracefs_root, cat, name);
    let exit_connect = fmt("syscalls", "sys_exit_connect")?;
    let exit_bind = fmt("syscalls", "sys_exit_bind")?;
    let exit_ret = exit_connect.offset("ret", 8)?;
    if exit_bind.offset("ret", 8)? != exit_ret {
        bail!(
            "sys_exit_connect and sys_exit_bind place `ret` differently; portx expects one layout"
        );
    }
    let btf = KernelBtf::from_sys()?;
    let (kernel, missing) = btf.kernel_offsets();
    let config = Config {
        state_tp: fmt("sock", "inet_sock_set_state")?.state_offsets()?,
        connect_tp: fmt("syscalls", "sys_enter_connect")?.sys_enter_offsets("uservaddr")?,
        bind_tp: fmt("syscalls", "sys_enter_bind")?.sys_enter_offsets("umyaddr")?,
        exit_ret,
        kernel,
    };
    Ok((config, missing.iter().map(ToString::to_string).collect()))
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    dropped: PerCpuArray<MapData, u64>,
    pub setup: Setup,
}

/// Formats a load error with the verifier log, which users need to report a bug.
fn load_error(program: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!(
            "loading BPF program {program} failed: {io_error}\nverifier log:\n{verifier_log}"
        ),
        other => anyhow!("loading BPF program {program} failed: {other}"),
    }
}

impl Probes {
    pub fn load(opts: LoadOptions) -> anyhow::Result<Self> {
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            bail!(
                "ring buffer size {} is not a power of two of at least 4096 bytes",
                opts.ring_bytes
            );
        }
        let tracefs = tracefs::ensure_mounted()?;
        let (config, btf_missing) = kernel_config(&tracefs)?;
        // RLIMIT_MEMLOCK only matters before memcg accounting (5.11); raise it anyway.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: valid rlimit pointer.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let mut ebpf = EbpfLoader::new()
            .override_global(names::CONFIG, &config, true)
            .map_max_entries(names::EVENTS, opts.ring_bytes)
            .load(BPF_OBJECT)
            .context("loading the BPF object")?;
        let mut attached = Vec::new();
        for &(program, category, name) in PROGRAMS {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("BPF object has no program {program}"))?
                .try_into()
                .with_context(|| format!("{program} is not a tracepoint program"))?;
            prog.load().map_err(|e| load_error(program, e))?;
            prog.attach(category, name)
                .with_context(|| format!("attaching {program} to tracepoint {category}:{name}"))?;
            attached.push(format!("{program} -> tracepoint {category}:{name}"));
        }
        let dropped = PerCpuArray::try_from(
            ebpf.take_map(names::DROPPED)
                .ok_or_else(|| anyhow!("BPF object has no {} map", names::DROPPED))?,
        )?;
        Ok(Self {
            ebpf,
            dropped,
            setup: Setup {
                tracefs,
                config,
                btf_missing,
                attached,
            },
        })
    }

    /// Takes the event ring buffer for reading. Only once.
    pub fn events(&mut self) -> anyhow::Result<EventReader> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| anyhow!("event ring buffer already taken"))?;
        let ring = RingBuf::try_from(map)?;
        // SAFETY: the RingBuf owns its map fd, which stays open (and the same) for as
        // long as the RingBuf, and so the AsyncFd, lives.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?;
        Ok(EventReader { fd })
    }

    /// Events the BPF side could not reserve ring-buffer space for, summed over CPUs.
    pub fn dropped(&self) -> anyhow::Result<u64> {
        let per_cpu = self
            .dropped
            .get(&0, 0)
            .context("reading the dropped counter")?;
        Ok(per_cpu.iter().sum())
    }
}

/// The consumer side of the event ring buffer.
pub struct EventReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    /// Waits until the kernel has written events.
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands records now in the ring buffer to `f` until it returns false or the
    /// buffer is empty; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8]) -> bool) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            if !f(&item) {
                break;
            }
        }
        n
    }
}

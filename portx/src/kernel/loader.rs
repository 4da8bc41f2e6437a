//! Loading portx's BPF programs into the running kernel and reading their events.
//!
//! The kernel-facing half of portx: everything here needs root. Offsets come from
//! tracefs format files ([`super::tracefs`]) and BTF ([`super::btf`]).

use std::{os::fd::AsFd as _, path::Path, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use portx_common::{Config, EventKind, KernelFilter, NO_OFFSET, hooks, names};
use serde::{Deserialize, Serialize};
use tokio::io::{Interest, unix::AsyncFd};

use crate::kernel::{
    batches::{BatchFlusher, Flushed},
    btf::KernelBtf,
    ring_positions::{Mark, RingPositions},
    tracefs,
};

/// The BPF object built by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portx-ebpf"));

/// The syscall tracepoints are always attached: they see connect() errors that happen
/// outside the port allocation, and are the fallback for everything else. bind() is
/// served by these; connect() by [`CONNECT_REGS`] or else [`CONNECT_STASHED`].
const BIND_SYSCALL: &[Attempt] = &[
    Attempt::Tracepoint {
        prog: "sys_enter_bind",
        category: "syscalls",
        name: "sys_enter_bind",
    },
    Attempt::Tracepoint {
        prog: "sys_exit_bind",
        category: "syscalls",
        name: "sys_exit_bind",
    },
];

/// connect(): on the accounting path, its exit alone (failures read the arguments from
/// the saved registers; successes cost one compare); otherwise, or where that does not
/// load, a stash at entry and the result at exit.
const CONNECT_REGS: Attempt = Attempt::Tracepoint {
    prog: "sys_exit_connect_regs",
    category: "syscalls",
    name: "sys_exit_connect",
};
const CONNECT_STASHED: &[Attempt] = &[
    Attempt::Tracepoint {
        prog: "sys_enter_connect",
        category: "syscalls",
        name: "sys_enter_connect",
    },
    Attempt::Tracepoint {
        prog: "sys_exit_connect",
        category: "syscalls",
        name: "sys_exit_connect",
    },
];

/// `PORTX_CONNECT=stash` keeps connect() on the stash at entry on the accounting path
/// too, where `sys_exit_connect_regs` would load: the fallback, for testing it.
pub const CONNECT_ENV: &str = "PORTX_CONNECT";

/// `PORTX_BATCH=off` sends every event of the accounting path to the ring buffer on
/// its own, as where the per-CPU batches cannot be flushed: the fallback, for testing
/// it and for comparing the two.
pub const BATCH_ENV: &str = "PORTX_BATCH";

/// `PORTX_HOOKS=tracepoints` keeps portx on the plain tracepoints even where better
/// hooks load; `PORTX_HOOKS=kprobes` rules out the BTF-based program types (tp_btf,
/// fentry, fexit). For comparing paths, or working around a kernel bug.
pub const HOOKS_ENV: &str = "PORTX_HOOKS";

/// One way to serve a need; tried in order until one loads and attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    TpBtf {
        prog: &'static str,
        tracepoint: &'static str,
    },
    Tracepoint {
        prog: &'static str,
        category: &'static str,
        name: &'static str,
    },
    /// fexit (or fentry) programs, one per kernel function.
    Tracing {
        entry: bool,
        progs: &'static [(&'static str, &'static str)],
        /// Parameters the program reads: (position, name) as the kernel's BTF must say.
        params: &'static [(usize, &'static str)],
    },
    /// A kprobe (and kretprobe) attached to each function.
    Kprobe {
        entry: &'static str,
        ret: Option<&'static str>,
        functions: &'static [&'static str],
        params: &'static [(usize, &'static str)],
    },
}

impl Attempt {
    pub fn describe(&self) -> String {
        match self {
            Self::TpBtf { tracepoint, .. } => format!("tp_btf/{tracepoint}"),
            Self::Tracepoint { category, name, .. } => format!("tracepoint {category}:{name}"),
            Self::Tracing { entry, progs, .. } => format!(
                "{} {}",
                if *entry { "fentry" } else { "fexit" },
                progs.iter().map(|(_, f)| *f).collect::<Vec<_>>().join("+")
            ),
            Self::Kprobe { ret, functions, .. } => format!(
                "{} {}",
                if ret.is_some() {
                    "kprobe+kretprobe"
                } else {
                    "kprobe"
                },
                functions.join("+")
            ),
        }
    }

    /// `program -> attach point`, for `--verbose`.
    pub fn describe_program(&self) -> String {
        let prog = match self {
            Self::TpBtf { prog, .. } | Self::Tracepoint { prog, .. } => *prog,
            Self::Tracing { progs, .. } => progs.first().map_or("", |p| p.0),
            Self::Kprobe { entry, .. } => entry,
        };
        format!("{prog} -> {}", self.describe())
    }

    /// Whether `PORTX_HOOKS=<mode>` allows this attempt.
    fn allowed_in(&self, mode: &str) -> bool {
        match mode {
            "tracepoints" => matches!(self, Self::Tracepoint { .. }),
            "kprobes" => matches!(self, Self::Tracepoint { .. } | Self::Kprobe { .. }),
            _ => true,
        }
    }
}

/// How one need is served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPath {
    /// `state`, `connect`, `bind`, `timewait`.
    pub hook: String,
    /// The attach point in use.
    pub path: String,
    /// Better attach points that were tried, each with why it was not used.
    pub rejected: Vec<String>,
}

impl HookPath {
    /// The kind of attach point: `tp_btf`, `tracepoint`, `fexit`, `kprobe+kretprobe`,
    /// `model`, ...
    pub fn kind(&self) -> &str {
        self.path.split(['/', ' ']).next().unwrap_or("")
    }
}

/// Tries `attempts` in order with `try_one`; the first success is used. When all fail,
/// `fallback` names what serves the need instead (or, with `None`, it is an error).
pub fn choose(
    hook: &str,
    attempts: &[Attempt],
    fallback: Option<&str>,
    mut try_one: impl FnMut(&Attempt) -> anyhow::Result<()>,
) -> anyhow::Result<HookPath> {
    let mut rejected = Vec::new();
    for a in attempts {
        match try_one(a) {
            Ok(()) => {
                return Ok(HookPath {
                    hook: hook.to_owned(),
                    path: a.describe(),
                    rejected,
                });
            }
            Err(e) => rejected.push(format!("{}: {e:#}", a.describe())),
        }
    }
    match fallback {
        Some(f) => Ok(HookPath {
            hook: hook.to_owned(),
            path: f.to_owned(),
            rejected,
        }),
        None => bail!("no attach point for {hook} works: {}", rejected.join("; ")),
    }
}

const STATE_HOOKS: &[Attempt] = &[
    Attempt::TpBtf {
        prog: "inet_sock_set_state_btf",
        tracepoint: "inet_sock_set_state",
    },
    Attempt::Tracepoint {
        prog: "inet_sock_set_state",
        category: "sock",
        name: "inet_sock_set_state",
    },
];

const CONNECT_HOOKS: &[Attempt] = &[
    Attempt::Tracing {
        entry: false,
        progs: &[("hash_connect_fexit", "__inet_hash_connect")],
        params: &[(1, "sk")],
    },
    Attempt::Kprobe {
        entry: "hash_connect_kprobe",
        ret: Some("hash_connect_kretprobe"),
        functions: &["__inet_hash_connect"],
        params: &[(1, "sk")],
    },
];

const BIND_HOOKS: &[Attempt] = &[
    Attempt::Tracing {
        entry: false,
        progs: &[
            ("inet_bind_fexit", "inet_bind"),
            ("inet6_bind_fexit", "inet6_bind"),
        ],
        params: &[(0, "sock"), (1, "uaddr")],
    },
    Attempt::Kprobe {
        entry: "bind_kprobe",
        ret: Some("bind_kretprobe"),
        functions: &["inet_bind", "inet6_bind"],
        params: &[(0, "sock"), (1, "uaddr")],
    },
];

const TIMEWAIT_HOOKS: &[Attempt] = &[
    Attempt::Tracing {
        entry: true,
        progs: &[("twsk_kill_fentry", "inet_twsk_kill")],
        params: &[(0, "tw")],
    },
    Attempt::Kprobe {
        entry: "twsk_kill_kprobe",
        ret: None,
        functions: &["inet_twsk_kill"],
        params: &[(0, "tw")],
    },
];

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} has an unexpected program type"))
}

/// Checks that `function`'s parameters in this kernel's BTF are where the program
/// reads them: names move between kernels, and a wrong position would read garbage.
fn check_params(btf: &KernelBtf, function: &str, params: &[(usize, &str)]) -> anyhow::Result<()> {
    let have = btf
        .func_params(function)
        .ok_or_else(|| anyhow!("{function} is not in this kernel's BTF (inlined or renamed)"))?;
    for &(i, name) in params {
        if have.get(i).map(String::as_str) != Some(name) {
            bail!("{function} has parameters {have:?}, portx expects `{name}` at position {i}");
        }
    }
    Ok(())
}

/// One attach attempt; on failure, whatever it attached is detached again so the
/// next attempt does not double events.
fn try_attach(ebpf: &mut Ebpf, btf: &Btf, kbtf: &KernelBtf, a: &Attempt) -> anyhow::Result<()> {
    match *a {
        Attempt::TpBtf { prog, tracepoint } => {
            let p: &mut BtfTracePoint = program(ebpf, prog)?;
            p.load(tracepoint, btf).map_err(|e| load_error(prog, e))?;
            if let Err(e) = p.attach() {
                let _ = p.unload();
                return Err(e.into());
            }
            Ok(())
        }
        Attempt::Tracepoint {
            prog,
            category,
            name,
        } => {
            let p: &mut TracePoint = program(ebpf, prog)?;
            p.load().map_err(|e| load_error(prog, e))?;
            p.attach(category, name)
                .with_context(|| format!("attaching {prog} to tracepoint {category}:{name}"))?;
            Ok(())
        }
        Attempt::Tracing {
            entry,
            progs,
            params,
        } => {
            for (_, function) in progs {
                check_params(kbtf, function, params)?;
            }
            let mut done: Vec<&str> = Vec::new();
            let result = progs.iter().try_for_each(|&(prog, function)| {
                let r = if entry {
                    let p: &mut FEntry = program(ebpf, prog)?;
                    p.load(function, btf).map_err(|e| load_error(prog, e))?;
                    p.attach().map(drop)
                } else {
                    let p: &mut FExit = program(ebpf, prog)?;
                    p.load(function, btf).map_err(|e| load_error(prog, e))?;
                    p.attach().map(drop)
                };
                done.push(prog);
                r.with_context(|| format!("attaching {prog} to {function}"))
            });
            if result.is_err() {
                for prog in done {
                    let _ = if entry {
                        program::<FEntry>(ebpf, prog).map(|p| p.unload())
                    } else {
                        program::<FExit>(ebpf, prog).map(|p| p.unload())
                    };
                }
            }
            result
        }
        Attempt::Kprobe {
            entry,
            ret,
            functions,
            params,
        } => {
            for function in functions {
                check_params(kbtf, function, params)?;
            }
            let mut loaded = Vec::new();
            let result = (|| {
                for prog in std::iter::once(entry).chain(ret) {
                    let p: &mut KProbe = program(ebpf, prog)?;
                    p.load().map_err(|e| load_error(prog, e))?;
                    loaded.push(prog);
                    for function in functions {
                        p.attach(function, 0)
                            .with_context(|| format!("attaching {prog} to {function}"))?;
                    }
                }
                anyhow::Ok(())
            })();
            if result.is_err() {
                for prog in loaded {
                    let _ = program::<KProbe>(ebpf, prog).map(|p| p.unload());
                }
            }
            result
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Batch wake-ups: only failures, or a ring an eighth full, wake the reader, which
    /// otherwise drains every [`DRAIN_INTERVAL`]. Off: every event may wake it.
    pub batch_wakeups: bool,
    /// What the programs emit; the rest never reaches the ring buffer.
    pub filter: KernelFilter,
    /// The accounting path (`Config::accounting`): leave out what the model does not
    /// count (accepted sockets' transitions). `top`, `serve` and `check --watch`.
    pub accounting: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 16 << 20,
            batch_wakeups: true,
            filter: KernelFilter::ALL,
            accounting: false,
        }
    }
}

/// How often the reader drains events that did not wake it (see
/// [`LoadOptions::batch_wakeups`]): the most an ordinary event waits to be seen, but on
/// a busy host ([`DRAIN_INTERVAL_BUSY`]).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// The longest wait between drains, reached by doubling [`DRAIN_INTERVAL`] while
/// drains find nothing: an idle host costs a few wake-ups a second, not a hundred.
pub const DRAIN_IDLE_MAX: Duration = Duration::from_millis(250);

/// The wait after a drain that read at least [`BUSY_DRAIN_EVENTS`]: under load, fewer
/// and larger drains. Each drain has a fixed cost (the flush, the wake-up, the model's
/// tables back into cache), about 20 µs in the connect storm, where 100 drains a second
/// were a tenth of the reader's time. Nothing waits on it that a person sees: failures
/// and a ring an eighth full wake the reader at once, and views refresh each second.
pub const DRAIN_INTERVAL_BUSY: Duration = Duration::from_millis(40);

/// A drain that reads this many events finds the host busy ([`DRAIN_INTERVAL_BUSY`]):
/// 100,000 events a second at [`DRAIN_INTERVAL`].
pub const BUSY_DRAIN_EVENTS: usize = 1000;

/// When the next drain of a batched ring is due: [`DRAIN_INTERVAL`] after one that
/// found events ([`DRAIN_INTERVAL_BUSY`] after one that found many), twice the last
/// wait (up to [`DRAIN_IDLE_MAX`]) after one that found none. Failures wake the reader
/// at once whatever the wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainPace {
    empty_drains: u32,
    busy: bool,
}

impl DrainPace {
    /// The wait before the next drain, after one that read `drained` events.
    pub fn after(&mut self, drained: usize) -> Duration {
        self.busy = drained >= BUSY_DRAIN_EVENTS;
        if drained > 0 {
            return self.hurried();
        }
        self.empty_drains = (self.empty_drains + 1).min(16);
        DRAIN_INTERVAL
            .saturating_mul(1 << self.empty_drains)
            .min(DRAIN_IDLE_MAX)
    }

    /// The wait while there are events: after a drain that found some, or when events
    /// are held back for their time order. No idle back-off, but a busy host's pace is
    /// kept (what is held then goes out with the next drain).
    pub fn hurried(&mut self) -> Duration {
        self.empty_drains = 0;
        if self.busy {
            DRAIN_INTERVAL_BUSY
        } else {
            DRAIN_INTERVAL
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
    /// `program -> category:tracepoint` for the syscall tracepoints.
    pub attached: Vec<String>,
    /// The attach point chosen for each need, and why better ones were not used.
    pub hooks: Vec<HookPath>,
    /// How the accounting path's events reach the ring (empty elsewhere).
    pub batching: String,
}

/// Reads the tracepoint formats and BTF of the running kernel.
pub fn kernel_config(tracefs_root: &Path) -> anyhow::Result<(Config, Vec<String>, KernelBtf)> {
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
        wakeup_bytes: 0,
        filter: KernelFilter::ALL,
        accounting: 0,
    };
    Ok((
        config,
        missing.iter().map(ToString::to_string).collect(),
        btf,
    ))
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    dropped: PerCpuArray<MapData, u64>,
    /// The accounting path's per-CPU batches, until the reader takes them.
    batches: Option<BatchFlusher>,
    /// A hook reports each TIME_WAIT socket's end.
    pub exact_timewait: bool,
    pub setup: Setup,
}

/// Sets the `HOOKS` map: which events kernel-function hooks emit, and whether
/// connect() is stashed at entry (`portx_common::hooks`).
fn set_hooks(ebpf: &mut Ebpf, bits: u32) -> anyhow::Result<()> {
    let mut map: Array<_, u32> = Array::try_from(
        ebpf.map_mut(names::HOOKS)
            .ok_or_else(|| anyhow!("BPF object has no {} map", names::HOOKS))?,
    )?;
    map.set(0, bits, 0).context("setting the HOOKS map")
}

/// Loads the flush program (never attached) and proves it runs on every CPU: the
/// accounting path's events can then wait in per-CPU batches.
fn batch_flusher(ebpf: &mut Ebpf) -> anyhow::Result<BatchFlusher> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(names::FLUSH_BATCH)
        .ok_or_else(|| anyhow!("BPF object has no {} program", names::FLUSH_BATCH))?
        .try_into()?;
    prog.load().map_err(|e| load_error(names::FLUSH_BATCH, e))?;
    let fd = std::os::fd::AsFd::as_fd(prog.fd()?)
        .try_clone_to_owned()
        .context("duplicating the flush program's fd")?;
    let pending = PerCpuArray::try_from(
        ebpf.take_map(names::BATCH_PENDING)
            .ok_or_else(|| anyhow!("BPF object has no {} map", names::BATCH_PENDING))?,
    )?;
    BatchFlusher::new(fd, pending)
}

/// Formats a load error with the verifier log, which users need to report a bug.
fn load_error(program: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                anyhow!("loading BPF program {program} failed: {io_error}")
            } else {
                anyhow!("loading BPF program {program} failed: {io_error}\nverifier log:\n{log}")
            }
        }
        other => anyhow!("loading BPF program {program} failed: {other}"),
    }
}

impl Probes {
    pub fn load(opts: LoadOptions) -> anyhow::Result<Self> {
        let probes = Self::load_and_attach(opts)?;
        // Loading parsed the kernel's BTF (aya does, for relocations); that memory is
        // free now but glibc keeps it in the heap unless asked to give it back.
        #[cfg(target_env = "gnu")]
        // SAFETY: no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(probes)
    }

    fn load_and_attach(opts: LoadOptions) -> anyhow::Result<Self> {
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            bail!(
                "ring buffer size {} is not a power of two of at least 4096 bytes",
                opts.ring_bytes
            );
        }
        let tracefs = tracefs::ensure_mounted()?;
        let (mut config, btf_missing, kbtf) = kernel_config(&tracefs)?;
        if opts.batch_wakeups {
            config.wakeup_bytes = opts.ring_bytes / 8;
        }
        config.filter = opts.filter;
        config.accounting = u32::from(opts.accounting);
        if opts.accounting {
            // A connect() that got its port is told by the socket's own transition out
            // of SYN_SENT; the model counts allocations there.
            config.filter.kinds &= !(1 << EventKind::Connect as u32);
        }
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
        let btf = Btf::from_sys_fs().context("reading kernel BTF for tp_btf/fentry/fexit")?;
        let mut attached = Vec::new();
        let mut bits = 0;
        let regs = if !opts.accounting {
            Err(anyhow!("not on the accounting path"))
        } else if std::env::var(CONNECT_ENV).is_ok_and(|v| v == "stash") {
            Err(anyhow!("not tried ({CONNECT_ENV}=stash)"))
        } else if config.kernel.regs_args.contains(&NO_OFFSET) {
            Err(anyhow!(
                "syscall argument registers unknown on this architecture"
            ))
        } else {
            try_attach(&mut ebpf, &btf, &kbtf, &CONNECT_REGS)
        };
        let syscalls: Vec<&Attempt> = match &regs {
            Ok(()) => {
                attached.push(format!(
                    "{} (connect() failures read their arguments from the saved registers; no stash at entry)",
                    CONNECT_REGS.describe_program()
                ));
                BIND_SYSCALL.iter().collect()
            }
            Err(e) => {
                if opts.accounting {
                    attached.push(format!(
                        "connect() stashed at entry: sys_exit_connect_regs not used ({e:#})"
                    ));
                }
                bits |= hooks::CONNECT_STASH;
                CONNECT_STASHED.iter().chain(BIND_SYSCALL).collect()
            }
        };
        for a in syscalls {
            try_attach(&mut ebpf, &btf, &kbtf, a)?;
            attached.push(a.describe_program());
        }
        // The accounting path's events wait in per-CPU batches where the flush program
        // runs; said with `--verbose`.
        let (batches, batching) = if !opts.accounting {
            (None, String::new())
        } else if std::env::var(BATCH_ENV).is_ok_and(|v| v == "off") {
            (
                None,
                format!("events sent one by one (per-CPU batches not tried: {BATCH_ENV}=off)"),
            )
        } else {
            match batch_flusher(&mut ebpf) {
                Ok(f) => {
                    bits |= hooks::BATCH;
                    (
                        Some(f),
                        format!(
                            "events gathered in per-CPU batches of {} 64-byte slots (one ring record each; a state change takes one slot, as 64 bytes, any other event two), sent when full, at a failure, or by {} run on a CPU whose batch has waited {} ms; put back in time order before the model",
                            portx_common::BATCH_SLOTS,
                            names::FLUSH_BATCH,
                            crate::kernel::batches::FLUSH_AGE.as_millis()
                        ),
                    )
                }
                Err(e) => (
                    None,
                    format!("events sent one by one (per-CPU batches not used: {e:#})"),
                ),
            }
        };
        // Before the state program is attached: it notes connect()s in the stash
        // and batches its events from its first run.
        set_hooks(&mut ebpf, bits)?;
        let mode = std::env::var(HOOKS_ENV).unwrap_or_default();
        let mut try_one = |a: &Attempt| {
            if !a.allowed_in(&mode) {
                bail!("not tried ({HOOKS_ENV}={mode})");
            }
            try_attach(&mut ebpf, &btf, &kbtf, a)
        };
        let mut hook_paths = vec![choose("state", STATE_HOOKS, None, &mut try_one)?];
        let connect = choose(
            "connect",
            CONNECT_HOOKS,
            Some("tracepoint syscalls:sys_exit_connect"),
            &mut try_one,
        )?;
        let bind = choose(
            "bind",
            BIND_HOOKS,
            Some("tracepoint syscalls:sys_exit_bind"),
            &mut try_one,
        )?;
        let timewait = choose(
            "timewait",
            TIMEWAIT_HOOKS,
            Some("model (60 s after an active close, checked against sock_diag)"),
            &mut try_one,
        )?;
        if connect.rejected.len() < CONNECT_HOOKS.len() {
            bits |= hooks::CONNECT_IN_KERNEL;
        }
        if bind.rejected.len() < BIND_HOOKS.len() {
            bits |= hooks::BIND_IN_KERNEL;
        }
        let exact_timewait = timewait.rejected.len() < TIMEWAIT_HOOKS.len();
        hook_paths.extend([connect, bind, timewait]);
        set_hooks(&mut ebpf, bits)?;
        let dropped = PerCpuArray::try_from(
            ebpf.take_map(names::DROPPED)
                .ok_or_else(|| anyhow!("BPF object has no {} map", names::DROPPED))?,
        )?;
        Ok(Self {
            ebpf,
            dropped,
            batches,
            exact_timewait,
            setup: Setup {
                tracefs,
                config,
                btf_missing,
                attached,
                hooks: hook_paths,
                batching,
            },
        })
    }

    /// What the state program leaves out, for `--verbose`.
    pub fn state_policy(&self) -> &'static str {
        if self.setup.config.accounting != 0 {
            "state changes: accounting path (only what the model counts: sockets accepted from a listener, told by their inherited backlog, left out but for a close into TIME_WAIT; moves between closing states left out; successful connect() calls not sent, the socket's own transition out of SYN_SENT carries the port)"
        } else {
            "state changes: every transition"
        }
    }

    /// How events reach the reader, for `--verbose`.
    pub fn wakeup_policy(&self) -> String {
        match self.setup.config.wakeup_bytes {
            0 => "ring buffer: every event may wake the reader".to_owned(),
            n => format!(
                "ring buffer: failures wake the reader at once; other events are drained \
                 every {} ms while they come (backing off to {} ms when idle), or at once \
                 when {} KiB wait",
                DRAIN_INTERVAL.as_millis(),
                DRAIN_IDLE_MAX.as_millis(),
                n >> 10
            ),
        }
    }

    /// Takes the event ring buffer for reading. Only once.
    pub fn events(&mut self) -> anyhow::Result<EventReader> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| anyhow!("event ring buffer already taken"))?;
        let ring = RingBuf::try_from(map)?;
        let positions = RingPositions::new(ring.as_fd())?;
        // SAFETY: the RingBuf owns its map fd, which stays open (and the same) for as
        // long as the RingBuf, and so the AsyncFd, lives.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?;
        let batched = self.setup.config.wakeup_bytes != 0;
        Ok(EventReader {
            fd,
            next_drain: batched.then(|| tokio::time::Instant::now() + DRAIN_INTERVAL),
            pace: DrainPace::default(),
            batches: self.batches.take(),
            positions,
            stalls: 0,
            events: 0,
            records: 0,
            bytes: 0,
        })
    }

    /// Program runs the kernel skipped because that program was already running on
    /// the CPU (a softirq interrupting it there): the kernel's recursion guard for
    /// tracing programs, counted per program in its fdinfo (`recursion_misses`, 5.12+;
    /// 0 where the kernel does not say). Whatever those runs would have sent is lost.
    /// https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/trampoline.c (__bpf_prog_enter_recur)
    pub fn missed_runs(&self) -> u64 {
        use std::os::fd::{AsFd, AsRawFd};
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| {
                let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
                recursion_misses(&std::fs::read_to_string(path).ok()?)
            })
            .sum()
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
    /// With batched wake-ups, when the next drain is due: events may be waiting
    /// without the fd being readable.
    next_drain: Option<tokio::time::Instant>,
    pace: DrainPace,
    /// The accounting path's per-CPU batches: a ring record holds several events, and
    /// events must be put back in time order ([`crate::events::reorder`]).
    batches: Option<BatchFlusher>,
    positions: RingPositions,
    /// Drains that stopped at a record still being written (see [`Self::read_past`]).
    pub stalls: u64,
    /// Events read so far, their bytes, and the ring records that carried them (fewer
    /// with per-CPU batches): what the ring carried (the bench divides them by
    /// connections).
    pub events: u64,
    pub records: u64,
    pub bytes: u64,
}

impl EventReader {
    /// Waits until the kernel has written events (or, with batched wake-ups, until the
    /// next drain is due).
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        let Self { fd, next_drain, .. } = self;
        let woken = async {
            let mut guard = fd.readable_mut().await?;
            guard.clear_ready();
            anyhow::Ok(())
        };
        match *next_drain {
            None => woken.await,
            Some(due) => tokio::select! {
                r = woken => r,
                _ = tokio::time::sleep_until(due) => Ok(()),
            },
        }
    }

    /// With per-CPU batches, sends them to the ring (call before [`Self::drain`]) and
    /// says how far what it then reads is complete; `None` without batches (the ring
    /// then holds events in order).
    pub fn flush_batches(&mut self, older_than: Duration) -> anyhow::Result<Option<Flushed>> {
        self.batches
            .as_mut()
            .map(|b| b.flush(older_than))
            .transpose()
    }

    /// Where the ring's producer is now: take it after [`Self::flush_batches`] and
    /// before [`Self::drain`].
    pub fn mark(&self) -> Mark {
        self.positions.mark()
    }

    /// Whether the drains since `mark` was taken have read every record reserved
    /// before it. False when the consumer stopped at a record a program has reserved
    /// and not yet committed: the records behind it (another CPU's batch, older events)
    /// are not read yet, so what was read is not complete up to the flush. Counted.
    pub fn read_past(&mut self, mark: Mark) -> bool {
        let past = self.positions.passed(mark);
        if !past {
            self.stalls += 1;
        }
        past
    }

    /// The boot-clock time now, if every record reserved before it has been read (the
    /// consumer is at the producer): events are read only once committed, and stamped
    /// after their reserve, so those read are then exactly the ones stamped before it.
    pub fn read_up_to_now(&self) -> Option<u64> {
        let now = crate::kernel::live::boottime_ns();
        let mark = self.positions.mark();
        self.positions.passed(mark).then_some(now)
    }

    /// Events are held back (waiting for their time order): drain again soon.
    pub fn hurry(&mut self) {
        if let Some(due) = &mut self.next_drain {
            *due = (*due).min(tokio::time::Instant::now() + self.pace.hurried());
        }
    }

    /// Hands events now in the ring buffer to `f` until it returns false or the
    /// buffer is empty; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8]) -> bool) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            self.records += 1;
            self.bytes += item.len() as u64;
            let mut more = true;
            for ev in events_in(&item) {
                n += 1;
                self.events += 1;
                // The whole record: the ring has already let go of it.
                more &= f(ev);
            }
            if !more {
                break;
            }
        }
        if let Some(due) = &mut self.next_drain {
            *due = tokio::time::Instant::now() + self.pace.after(n);
        }
        n
    }
}

/// `recursion_misses` from a program's fdinfo.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The events in a ring record. A batch (a whole number of 64-byte slots) is records
/// back to back, each starting with a word that says its size: a compact state change
/// (one slot) or a full event (two slots, of which it fills the first 104 bytes). A lone
/// event, or a record of another size (which the decoder reports as undecodable), is
/// one. See `portx_common::SLOT_BYTES`.
fn events_in(record: &[u8]) -> impl Iterator<Item = &[u8]> {
    const SLOT: usize = portx_common::SLOT_BYTES;
    const EVENT: usize = size_of::<portx_common::Event>();
    let batch = !record.is_empty() && record.len().is_multiple_of(SLOT);
    let mut rest = record;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let take = if !batch {
            rest.len()
        } else if crate::events::compact::is_compact(rest) {
            SLOT
        } else {
            2 * SLOT
        };
        let (this, next) = rest.split_at(take.min(rest.len()));
        rest = next;
        // A full event within its two slots; what is cut short stays whole, for the
        // decoder to refuse.
        Some(if batch && take == 2 * SLOT && this.len() == take {
            &this[..EVENT]
        } else {
            this
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_are_read_from_a_programs_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\n\
                    run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t7\nverified_insns:\t812\n";
        assert_eq!(recursion_misses(info), Some(7));
        // Kernels before 5.12 do not say.
        assert_eq!(recursion_misses("prog_type:\t5\nrun_cnt:\t0\n"), None);
    }

    #[test]
    fn a_batch_record_is_split_into_its_records_and_anything_else_kept_whole() {
        use portx_common::{CompactV4, SLOT_BYTES, compact, compact_head};

        use crate::events::{compact::bytes_of, decode, tests::raw_event};
        const EVENT: usize = size_of::<portx_common::Event>();
        let state = |sport: u16| {
            bytes_of(&CompactV4 {
                head: compact_head(compact::V4, 2, 1),
                sport,
                ..CompactV4::default()
            })
        };
        let mut full = bytes_of(&raw_event(portx_common::EventKind::ConnectError));
        full.resize(2 * SLOT_BYTES, 0xee);
        // A batch: compact, full (two slots), compact.
        let batch = [state(1000), full.clone(), state(1001)].concat();
        let records: Vec<&[u8]> = events_in(&batch).collect();
        assert_eq!(
            records.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [SLOT_BYTES, EVENT, SLOT_BYTES]
        );
        let ports: Vec<u16> = records.iter().map(|r| decode(r).unwrap().sport).collect();
        assert_eq!(ports, [1000, 40000, 1001]);
        // A lone event (the trace path, or a batch's failure sent by itself).
        assert_eq!(events_in(&full[..EVENT]).count(), 1);
        // A batch cut inside its full event: what is left stays whole, for the decoder
        // to refuse.
        let cut = [state(1000), full[..SLOT_BYTES].to_vec()].concat();
        let parts: Vec<&[u8]> = events_in(&cut).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].len(), SLOT_BYTES);
        assert!(decode(parts[1]).is_err());
        // Not a whole number of slots nor an event: one record.
        let odd = events_in(&batch[..EVENT + 8]).collect::<Vec<_>>();
        assert_eq!(odd.len(), 1);
        assert_eq!(odd[0].len(), EVENT + 8);
        assert_eq!(events_in(&[]).count(), 0);
    }

    #[test]
    fn drains_back_off_while_idle_and_return_at_once_with_records() {
        let mut pace = DrainPace::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(pace.after(5)), 10);
        let idle: Vec<u128> = (0..7).map(|_| ms(pace.after(0))).collect();
        assert_eq!(idle, [20, 40, 80, 160, 250, 250, 250]);
        assert_eq!(
            ms(pace.after(1)),
            10,
            "records again: back to the short wait"
        );
        for _ in 0..100 {
            pace.after(0);
        }
        assert_eq!(ms(pace.after(0)), 250, "no overflow after a long idle");
    }

    #[test]
    fn a_busy_host_is_drained_less_often_and_held_events_keep_that_pace() {
        let mut pace = DrainPace::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(pace.after(BUSY_DRAIN_EVENTS - 1)), 10);
        assert_eq!(ms(pace.after(BUSY_DRAIN_EVENTS)), 40);
        assert_eq!(
            ms(pace.hurried()),
            40,
            "busy: held events wait for the next drain"
        );
        assert_eq!(ms(pace.after(3)), 10, "quieter: back to the short wait");
        assert_eq!(ms(pace.after(0)), 20);
        assert_eq!(ms(pace.after(0)), 40);
        assert_eq!(
            ms(pace.hurried()),
            10,
            "held events cut an idle back-off short"
        );
        assert_eq!(ms(pace.after(0)), 20, "and the back-off starts again");
    }

    #[test]
    fn first_working_attempt_wins_and_rejections_keep_their_reason() {
        let mut tried = Vec::new();
        let path = choose("connect", CONNECT_HOOKS, Some("syscalls"), |a| {
            tried.push(a.describe());
            match a {
                Attempt::Tracing { .. } => bail!("BPF_PROG_LOAD: Operation not permitted"),
                _ => Ok(()),
            }
        })
        .unwrap();
        assert_eq!(path.path, "kprobe+kretprobe __inet_hash_connect");
        assert_eq!(
            path.rejected,
            ["fexit __inet_hash_connect: BPF_PROG_LOAD: Operation not permitted"]
        );
        assert_eq!(tried.len(), 2);
    }

    #[test]
    fn fallback_when_nothing_loads_and_error_without_one() {
        let fail = |_: &Attempt| -> anyhow::Result<()> { bail!("no kprobe PMU") };
        let path = choose(
            "bind",
            BIND_HOOKS,
            Some("tracepoint syscalls:sys_exit_bind"),
            fail,
        )
        .unwrap();
        assert_eq!(path.path, "tracepoint syscalls:sys_exit_bind");
        assert_eq!(path.rejected.len(), 2);
        assert!(path.rejected[0].starts_with("fexit inet_bind+inet6_bind: "));
        let err = choose("state", STATE_HOOKS, None, fail)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "no attach point for state works: tp_btf/inet_sock_set_state: no kprobe PMU"
            ),
            "{err}"
        );
    }
}

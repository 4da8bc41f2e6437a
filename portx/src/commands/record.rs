//! `portx record`: the live inputs written to a capture file (optionally rotated), or
//! kept in memory by a flight recorder that writes its window when a trigger fires.
//!
//! Events are stored as the kernel gave them (owners not joined): replaying them
//! feeds the model exactly what `portx top` saw.
//!
//! What was already held when a file begins comes from the kernel: the start-up
//! baseline, and for every later file (and every `--state-every`) a fresh sock_diag
//! dump with owners from `/proc`, taken by the prober while events wait behind it
//! ([`LiveSource::request_state`]). So `record` keeps no model per event, and costs
//! what `trace` costs. The flight recorder does keep one: its `util:` trigger and
//! its generations' states need the counts at any moment. Frames are flushed every second
//! ([`FLUSH_EVERY`]) and fdatasync'ed, so a kill -9 or a power cut loses at most
//! the last second.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{
        CgroupName, Counters, EndSummary, FORMAT_VERSION, FileHeader, Mode, Record, TriggerFired,
        civil::compact_utc,
        disk::{DiskWriter, Target},
        ring::FlightRing,
        writer::{CaptureFile, Encoder, RotatingSet, RotationPolicy},
    },
    cli::RecordArgs,
    commands::trace::{Stats, filter_from, print_hooks},
    events::{filter::Filter, sock_owners::SockOwners},
    kernel::{
        cgroups::{CgroupNames, HostRoot},
        live::{LiveSource, boottime_ns},
        loader::{LoadOptions, Probes},
        preflight,
    },
    model::{
        Model, View,
        input::Input,
        trigger::{Fired, Triggers},
    },
    views::output::{Clock, counted},
    workload::Names as _,
};

/// How often buffered events become a frame on disk (the loss bound after kill -9).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Events buffered before a frame is written anyway (bounds memory in a storm).
const FLUSH_EVENTS: usize = 65536;

/// `CLOCK_REALTIME` now, nanoseconds since the epoch.
fn wall_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Eight random bytes (the recording's id).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most 8 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // Still unique enough between two runs on one host.
        return wall_ns() as u64 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

/// What goes into the memory or the files.
enum Sink {
    /// A file or a rotating set, written by the disk thread.
    Disk(DiskWriter),
    Flight(Flight),
}

/// A flight recorder's state.
struct Flight {
    dir: PathBuf,
    ring: FlightRing,
    window_ns: u64,
    max_bytes: usize,
    triggers: Triggers,
    /// A trigger fired: written out once its tail is recorded.
    fired: Option<(TriggerFired, tokio::time::Instant)>,
    dumps: u32,
    max_dumps: Option<u32>,
}

/// Everything `record` keeps between inputs.
struct Recorder {
    /// The flight recorder's model (none for files: their states come from the
    /// kernel).
    model: Option<Model>,
    encoder: Encoder,
    filter: Filter,
    owners: SockOwners,
    header: FileHeader,
    stats: Stats,
    kernel_dropped: u64,
    kernel_skipped_runs: u64,
    /// Bytes encoded and not yet written.
    out: Vec<u8>,
    /// Events framed since the last hand-over to the flight ring.
    framed: u64,
    names: CgroupNames,
    /// Every cgroup named so far: each new file starts with them all.
    named: std::collections::BTreeMap<u64, CgroupName>,
}

impl Recorder {
    /// Encodes a non-event record (framing the buffered events first, counted).
    fn record(&mut self, r: &Record, out: &mut Vec<u8>) {
        self.framed += self.encoder.pending_events() as u64;
        self.encoder.record(r, out);
    }

    /// Takes one input: the model learns it and, where the filter keeps it, it is
    /// encoded. Returns the failure trigger it fires, if any.
    fn take(&mut self, input: Input, triggers: Option<&mut Triggers>) -> Option<Fired> {
        match input {
            Input::Event(ev) => {
                self.stats.seen += 1;
                // The filter may select by process: decide on the owner-joined copy.
                let mut joined = ev.clone();
                self.owners.join(&mut joined);
                if !self.filter.matches(&joined) {
                    return None;
                }
                self.stats.shown += 1;
                // The joined owner's cgroup is what readers show.
                self.note_cgroups(&[joined.cgroup_id]);
                self.encoder.push_event(&ev);
                if let Some(m) = &mut self.model {
                    m.apply(&ev);
                }
                triggers.and_then(|t| t.on_event(&joined))
            }
            other => {
                if let Some(ns) = self.filter.netns
                    && input_netns(&other) != ns
                {
                    return None;
                }
                if let Some(m) = &mut self.model {
                    m.feed(&other);
                }
                if let Input::State(st) = &other {
                    let ids: Vec<u64> = st
                        .sockets
                        .iter()
                        .filter_map(|s| s.owner.as_ref().map(|o| o.2))
                        .collect();
                    self.note_cgroups(&ids);
                }
                let mut out = std::mem::take(&mut self.out);
                self.record(&Record::Input(other), &mut out);
                self.out = out;
                None
            }
        }
    }

    /// Names the cgroups not named yet, in a frame before the events that carry them.
    fn note_cgroups(&mut self, ids: &[u64]) {
        let mut new: Vec<CgroupName> = Vec::new();
        for &id in ids {
            if id == 0 || self.named.contains_key(&id) || new.iter().any(|n| n.id == id) {
                continue;
            }
            if let Some(n) = self.names.name(id) {
                new.push(CgroupName::new(id, &n));
            }
        }
        if new.is_empty() {
            return;
        }
        for n in &new {
            self.named.insert(n.id, n.clone());
        }
        let mut out = std::mem::take(&mut self.out);
        self.record(&Record::Cgroups(new), &mut out);
        self.out = out;
    }

    /// Every name so far, for the start of a file.
    fn all_names(&mut self, out: &mut Vec<u8>) {
        if !self.named.is_empty() {
            let all = self.named.values().cloned().collect();
            self.record(&Record::Cgroups(all), out);
        }
    }

    /// Every namespace's state now from the model, as frames (the start of a flight
    /// recorder's generation).
    fn state_frames(&mut self, out: &mut Vec<u8>) {
        let Some(model) = &self.model else { return };
        let states: Vec<_> = model
            .netns_inodes()
            .into_iter()
            .filter(|&ns| self.filter.netns.is_none_or(|f| f == ns))
            .map(|ns| model.export_state(ns))
            .collect();
        for state in states {
            self.record(&Record::Input(Input::State(state)), out);
        }
    }

    /// The start of a new file: magic, header, counters (the kernel's state follows
    /// as the prober sends it).
    fn file_start(&mut self, seq: u32, now_ns: u64) -> Vec<u8> {
        self.header.file_seq = seq;
        self.header.started_ns = now_ns;
        let mut b = Vec::new();
        self.encoder.file_start(&self.header, &mut b);
        self.counters_frame(now_ns, (0, 0), &mut b);
        self.all_names(&mut b);
        b
    }

    fn counters_frame(&mut self, now_ns: u64, evicted: (u64, u64), out: &mut Vec<u8>) {
        self.record(
            &Record::Counters(Counters {
                at_ns: now_ns,
                kernel_dropped: self.kernel_dropped,
                evicted_events: evicted.0,
                evicted_until_ns: evicted.1,
                kernel_skipped_runs: self.kernel_skipped_runs,
            }),
            out,
        );
    }

    /// Frames buffered events (and a counters frame when drops or skipped runs
    /// changed).
    fn flush(&mut self, (dropped, skipped): Losses, now_ns: u64) {
        self.framed += self.encoder.flush_events(&mut self.out) as u64;
        if (dropped, skipped) != (self.kernel_dropped, self.kernel_skipped_runs) {
            self.kernel_dropped = dropped;
            self.kernel_skipped_runs = skipped;
            let mut b = std::mem::take(&mut self.out);
            self.counters_frame(now_ns, (0, 0), &mut b);
            self.out = b;
        }
    }
}

fn input_netns(i: &Input) -> u32 {
    match i {
        Input::Event(e) => e.netns,
        Input::State(s) => s.netns,
        Input::Settings { netns, .. }
        | Input::TimeWait { netns, .. }
        | Input::BaselineGone { netns, .. }
        | Input::NetnsGone { netns } => *netns,
    }
}

fn write_err(path: &Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "writing {}: {e}; what was written before is readable (portx report)",
        path.display()
    )
}

impl Sink {
    fn describe(&self) -> String {
        match self {
            Self::Disk(d) => d.describe(),
            Self::Flight(f) => format!("{} files written to {}", f.dumps, f.dir.display()),
        }
    }
}

/// A flight recorder's file name: its trigger's UTC time.
fn dump_path(dir: &Path, wall_ns: i64) -> PathBuf {
    dir.join(format!("portx-{}.portx", compact_utc(wall_ns)))
}

/// Creates a new file in `dir`, adding `-N` when the name is taken.
fn create_dump(dir: &Path, wall_ns: i64) -> Result<CaptureFile> {
    let base = dump_path(dir, wall_ns);
    for n in 0..100 {
        let path = if n == 0 {
            base.clone()
        } else {
            base.with_extension(format!("{n}.portx"))
        };
        match CaptureFile::create(&path, false) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            r => return r.with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("{}: 100 files of that second exist already", base.display())
}

pub async fn run(args: RecordArgs, verbose: bool) -> Result<()> {
    // Bad flags and paths first, before anything is loaded.
    crate::kernel::cgroups::use_host_root(&args.host.host_root)?;
    let triggers = match &args.flight_recorder {
        Some(dir) => {
            let t = Triggers::parse(&args.trigger).map_err(anyhow::Error::msg)?;
            if !dir.is_dir() {
                bail!("--flight-recorder {}: not a directory", dir.display());
            }
            Some(t)
        }
        None => None,
    };
    let rotating = args.rotate_size.is_some() || args.rotate_time.is_some();
    if args.max_files.is_some() && !rotating {
        bail!("--max-files needs --rotate-size or --rotate-time");
    }
    if let Some(out) = &args.output
        && !rotating
        && !args.force
        && out.exists()
    {
        bail!(
            "{} exists; give another name or --force to replace it",
            out.display()
        );
    }
    preflight::check_pid(args.filter.pid)?;
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let filter = filter_from(&args.filter)?;
    let mut probes = Probes::load(LoadOptions {
        ring_bytes: args.ring_mib << 20,
        filter: filter.kernel(),
        ..LoadOptions::default()
    })?;
    if verbose {
        print_hooks(&probes.setup.hooks);
        eprintln!("portx: {}", probes.state_policy());
        eprintln!("portx: {}", probes.wakeup_policy());
        eprintln!(
            "portx: frames flushed and synced every {} s",
            FLUSH_EVERY.as_secs()
        );
    }
    let drift_every = (!args.no_drift_check).then(|| Duration::from_secs(10));
    let mut live = LiveSource::start(&mut probes, drift_every)?;
    let clock = Clock::now();
    let mode = match &args.flight_recorder {
        Some(_) => Mode::FlightRecorder {
            window_s: args.window,
            post_s: args.post,
        },
        None => Mode::Record,
    };
    let mut rec = Recorder {
        model: args.flight_recorder.is_some().then(Model::new),
        encoder: Encoder::new(),
        filter,
        owners: SockOwners::default(),
        header: FileHeader {
            format_version: FORMAT_VERSION,
            portx_version: env!("CARGO_PKG_VERSION").into(),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            boot_to_wall_ns: clock.boot_to_wall_ns() as i64,
            utc_offset_s: clock.utc_offset_s() as i32,
            started_ns: boottime_ns(),
            recording_id: random_u64(),
            file_seq: 0,
            mode,
            hooks: probes.setup.hooks.clone(),
            filter: Filter::default(),
            exact_timewait: probes.exact_timewait,
            command: std::env::args().collect(),
        },
        stats: Stats::default(),
        kernel_dropped: 0,
        kernel_skipped_runs: 0,
        out: Vec::with_capacity(1 << 20),
        framed: 0,
        names: CgroupNames::new(HostRoot::current()),
        named: Default::default(),
    };
    rec.header.filter = rec.filter.clone();
    if let Some(m) = &mut rec.model {
        m.set_exact_timewait(probes.exact_timewait);
    }

    let now_ns = boottime_ns();
    let mut sink = match (&args.output, &args.flight_recorder) {
        (_, Some(dir)) => {
            let window_ns = u64::from(args.window) * 1_000_000_000;
            let max_bytes = (args.buffer_mib as usize) << 20;
            Sink::Flight(Flight {
                dir: dir.clone(),
                ring: FlightRing::new(window_ns, max_bytes),
                window_ns,
                max_bytes,
                triggers: triggers.expect("parsed with the flight recorder"),
                fired: None,
                dumps: 0,
                max_dumps: args.max_dumps,
            })
        }
        (Some(out), None) if rotating => {
            let start = rec.file_start(0, now_ns);
            let policy = RotationPolicy {
                max_bytes: args.rotate_size.map(|m| m << 20),
                every_s: args.rotate_time,
                max_files: args.max_files.map(|n| n as usize),
            };
            let set = RotatingSet::create(out, policy, args.force, wall_ns(), &start)
                .with_context(|| format!("creating a file next to {}", out.display()))?;
            Sink::Disk(
                DiskWriter::start(Target::Rotating(set), wall_ns)
                    .context("starting the capture writer thread")?,
            )
        }
        (Some(out), None) => {
            let mut f = CaptureFile::create(out, args.force)
                .with_context(|| format!("creating {}", out.display()))?;
            let start = rec.file_start(0, now_ns);
            f.write(&start).map_err(|e| write_err(out, e))?;
            Sink::Disk(
                DiskWriter::start(Target::File(f), wall_ns)
                    .context("starting the capture writer thread")?,
            )
        }
        (None, None) => unreachable!("clap requires one"),
    };
    // A flight recorder's memory starts with a (still empty) state; the baseline
    // follows as the prober sends it.
    if let Sink::Flight(f) = &mut sink {
        f.ring.start_generation(now_ns, Vec::new());
    }
    match &args.flight_recorder {
        Some(dir) => eprintln!(
            "portx: flight recorder armed ({}; window {} s, {} MiB, tail {} s) writing to {}; Ctrl-C to stop",
            args.trigger.join(", "),
            args.window,
            args.buffer_mib,
            args.post,
            dir.display()
        ),
        None => eprintln!("portx: recording to {}; Ctrl-C to stop", sink.describe()),
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let sleep = crate::commands::stop_after(args.duration);
    tokio::pin!(sleep);
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    let state_every = Duration::from_secs_f64(args.state_every);
    // A flight recorder's generations: each can be evicted whole, so start them often
    // enough that the memory bound costs little history.
    let generation_every = match &sink {
        Sink::Flight(f) => state_every
            .min(Duration::from_nanos(f.window_ns / 4))
            .max(Duration::from_secs(1)),
        _ => state_every,
    };
    let mut state_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + generation_every,
        generation_every,
    );
    let mut inputs = Vec::with_capacity(4096);
    let mut stop = false;
    // What the state asked of the prober is for, until it comes.
    let mut state_for: Option<StateFor> = None;
    // Sockets and namespaces of the start-up baseline, said once it is in.
    let (mut baseline_done, mut baseline) = (false, (0usize, 0usize));

    while !stop {
        let mut fired: Option<Fired> = None;
        let mut flush_now = false;
        let mut new_state = false;
        tokio::select! {
            r = live.next(&mut inputs) => {
                let notes = r?;
                for w in &notes.warnings {
                    eprintln!("portx: warning: {w}");
                }
                if !baseline_done {
                    for i in &inputs {
                        if let Input::State(st) = i {
                            baseline.0 += st.sockets.len();
                            baseline.1 += 1;
                        }
                    }
                    if notes.baseline_done {
                        baseline_done = true;
                        eprintln!(
                            "portx: baseline taken ({} in {}); recording",
                            counted(baseline.0 as u64, "socket"),
                            counted(baseline.1 as u64, "namespace")
                        );
                    }
                }
                for input in inputs.drain(..) {
                    // A rotation waits for the kernel's state: it starts the new file.
                    if matches!(input, Input::State(_)) && state_for == Some(StateFor::Rotation) {
                        rotate(&mut sink, &mut rec, losses(&probes)?)?;
                        state_for = Some(StateFor::Periodic);
                    }
                    let trig = match &mut sink {
                        Sink::Flight(f) if f.fired.is_none() => Some(&mut f.triggers),
                        _ => None,
                    };
                    let f = rec.take(input, trig);
                    if fired.is_none() {
                        fired = f;
                    }
                }
                if notes.state_done {
                    // No namespace answered: rotate all the same.
                    if state_for == Some(StateFor::Rotation) {
                        rotate(&mut sink, &mut rec, losses(&probes)?)?;
                    }
                    state_for = None;
                }
                flush_now = rec.encoder.pending_events() >= FLUSH_EVENTS;
            }
            _ = flush_tick.tick() => flush_now = true,
            _ = state_tick.tick() => new_state = true,
            _ = sigusr1.recv() => {
                match &sink {
                    Sink::Flight(f) if f.fired.is_none() => fired = f.triggers.on_signal(),
                    _ => {}
                }
                if fired.is_none() {
                    eprintln!("portx: SIGUSR1 ignored (no `signal` trigger armed, or a dump is pending)");
                }
            }
            _ = sigint.recv() => stop = true,
            _ = sigterm.recv() => stop = true,
            _ = &mut sleep => stop = true,
        }
        let now_ns = boottime_ns();
        if let Sink::Flight(f) = &mut sink
            && let Some(fire) = fired.take()
            && f.fired.is_none()
        {
            eprintln!(
                "portx: trigger {} fired: {}; recording {} s more",
                fire.spec, fire.reason, args.post
            );
            let t = TriggerFired {
                at_ns: now_ns,
                spec: fire.spec,
                reason: fire.reason,
            };
            f.fired = Some((
                t,
                tokio::time::Instant::now() + Duration::from_secs(args.post.into()),
            ));
        }
        if flush_now || new_state || stop {
            rec.flush(losses(&probes)?, now_ns);
            let frames = std::mem::take(&mut rec.out);
            match &mut sink {
                Sink::Flight(f) => {
                    f.ring.push(frames, std::mem::take(&mut rec.framed), now_ns);
                    if f.fired.is_none() {
                        let snap = rec.model.as_mut().map(|m| m.snapshot(View::default()));
                        if let Some(fire) = snap.and_then(|s| f.triggers.on_snapshot(&s)) {
                            eprintln!(
                                "portx: trigger {} fired: {}; recording {} s more",
                                fire.spec, fire.reason, args.post
                            );
                            f.fired = Some((
                                TriggerFired {
                                    at_ns: now_ns,
                                    spec: fire.spec,
                                    reason: fire.reason,
                                },
                                tokio::time::Instant::now() + Duration::from_secs(args.post.into()),
                            ));
                        }
                    }
                    let due = f
                        .fired
                        .as_ref()
                        .is_some_and(|(_, at)| stop || tokio::time::Instant::now() >= *at);
                    if due {
                        let (t, _) = f.fired.take().expect("checked");
                        let path = dump(f, &mut rec, &t, now_ns)?;
                        f.dumps += 1;
                        eprintln!("portx: wrote {} (trigger {})", path.display(), t.spec);
                        if f.max_dumps.is_some_and(|m| f.dumps >= m) {
                            eprintln!("portx: {} files written (--max-dumps); stopping", f.dumps);
                            stop = true;
                        }
                    }
                    if new_state || f.ring.newest_bytes() > f.max_bytes / 4 {
                        let mut b = Vec::new();
                        rec.state_frames(&mut b);
                        f.ring.start_generation(now_ns, b);
                    }
                    f.ring.evict(now_ns);
                }
                Sink::Disk(disk) => {
                    disk.write(frames).map_err(anyhow::Error::msg)?;
                    let rotation_due = disk.rotation_due();
                    if !stop && state_for.is_none() && (rotation_due || new_state) {
                        live.request_state();
                        state_for = Some(if rotation_due {
                            StateFor::Rotation
                        } else {
                            StateFor::Periodic
                        });
                    }
                }
            }
        }
    }
    // What the kernel wrote before we stopped still counts.
    live.drain(&mut inputs);
    for input in inputs.drain(..) {
        rec.take(input, None);
    }
    let now_ns = boottime_ns();
    rec.flush(losses(&probes)?, now_ns);
    rec.stats.dropped = rec.kernel_dropped;
    if !matches!(sink, Sink::Flight(_)) {
        let mut end = std::mem::take(&mut rec.out);
        rec.record(
            &Record::End(EndSummary {
                at_ns: now_ns,
                events: rec.stats.shown,
                rotated: false,
            }),
            &mut end,
        );
        if let Sink::Disk(disk) = &sink {
            disk.write(end).map_err(anyhow::Error::msg)?;
        }
    }
    // Everything handed over is on disk before the closing line.
    let described = match sink {
        Sink::Disk(disk) => disk.finish().map_err(anyhow::Error::msg)?,
        Sink::Flight(f) => Sink::Flight(f).describe(),
    };
    let skipped = match rec.kernel_skipped_runs {
        0 => String::new(),
        n => format!(", {n} program runs skipped by the kernel (nested on one CPU)"),
    };
    eprintln!(
        "portx: {} events seen, {} written, {} dropped{skipped}; {}",
        rec.stats.seen, rec.stats.shown, rec.stats.dropped, described
    );
    Ok(())
}

/// Why the recorder asked the prober for the kernel's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateFor {
    /// The next file starts with it.
    Rotation,
    /// The current file carries it, every `--state-every`.
    Periodic,
}

/// Events the kernel dropped and program runs it skipped, since start.
type Losses = (u64, u64);

fn losses(probes: &Probes) -> Result<Losses> {
    Ok((probes.dropped()?, probes.missed_runs()))
}

/// Ends the current file of a rotating set and starts the next (its state follows).
fn rotate(sink: &mut Sink, rec: &mut Recorder, losses: Losses) -> Result<()> {
    let Sink::Disk(disk) = sink else {
        return Ok(());
    };
    let now_ns = boottime_ns();
    rec.flush(losses, now_ns);
    let mut end = std::mem::take(&mut rec.out);
    rec.record(
        &Record::End(EndSummary {
            at_ns: now_ns,
            events: 0,
            rotated: true,
        }),
        &mut end,
    );
    let seq = rec.header.file_seq + 1;
    let start = rec.file_start(seq, now_ns);
    disk.rotate(end, wall_ns(), start)
        .map_err(anyhow::Error::msg)
}

/// Writes a flight recorder's window and tail to a new file, and starts over.
fn dump(f: &mut Flight, rec: &mut Recorder, t: &TriggerFired, now_ns: u64) -> Result<PathBuf> {
    let mut file = create_dump(&f.dir, now_ns as i64 + rec.header.boot_to_wall_ns)?;
    let path = file.path().to_owned();
    let mut start = Vec::new();
    rec.header.file_seq = f.dumps;
    rec.header.started_ns = now_ns;
    rec.encoder.file_start(&rec.header, &mut start);
    rec.counters_frame(now_ns, f.ring.evicted(), &mut start);
    rec.record(&Record::Trigger(t.clone()), &mut start);
    rec.all_names(&mut start);
    let written = file
        .write(&start)
        .and_then(|()| f.ring.write_to(&mut FileWriter(&mut file)))
        .and_then(|()| file.sync());
    written.map_err(|e| write_err(&path, e))?;
    // The next dump holds what comes after this one.
    f.ring = FlightRing::new(f.window_ns, f.max_bytes);
    let mut b = Vec::new();
    rec.state_frames(&mut b);
    f.ring.start_generation(now_ns, b);
    Ok(path)
}

/// `io::Write` over a capture file (the ring writes its frames through it).
struct FileWriter<'a>(&'a mut CaptureFile);

impl std::io::Write for FileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_names_are_utc_times() {
        // 2026-12-01T19:52:43Z
        let p = dump_path(Path::new("/d"), 1_796_154_763 * 1_000_000_000);
        assert_eq!(p, Path::new("/d/portx-20261201T195243Z.portx"));
    }
}

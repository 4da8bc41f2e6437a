//! `portx top`: the live port accounting view, from the kernel or (`--replay`) from a
//! recording.
//!
//! One loop owns the model and feeds it [`Input`]s from a source: the live one
//! ([`LiveSource`]: ring buffer, start-up baseline, settings, drift check) or a
//! recording ([`ReplaySource`]), so a replayed view is the live view of that time.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use portx_common::KernelFilter;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    capture::{
        NameTable, Record,
        reader::{ReadStatus, Reader},
    },
    cli::{By, TopArgs},
    kernel::{
        cgroups::{CgroupNames, HostRoot},
        live::{LiveSource, Notes, boottime_ns},
        loader::{HookPath, LoadOptions, Probes},
        netns, preflight,
    },
    model::{Model, View, input::Input, snapshot::Snapshot},
    views::{
        output::{Clock, counted},
        tui,
    },
    workload::{Names, annotate::annotate},
};

/// One snapshot on stdout: a JSON line, or the plain table followed by a blank line.
fn print_snapshot(snap: &Snapshot, json: bool, view: tui::View, clock: &Clock) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, snap)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", tui::plain_table(snap, view, clock))?;
    }
    out.flush()?;
    Ok(())
}

/// Feeds one input to the model (`-v`: says what each baseline held).
fn feed(model: &mut Model, verbose: bool, input: &Input) {
    if verbose && let Input::State(s) = input {
        eprintln!(
            "portx: baseline of netns {}: {} sockets",
            s.netns,
            s.sockets.len()
        );
    }
    model.feed(input);
}

/// Where the inputs come from.
// One per run, never moved about: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Source {
    Live {
        probes: Box<Probes>,
        live: LiveSource,
        names: CgroupNames,
    },
    Replay(ReplaySource),
}

impl Source {
    /// Waits for the next inputs; `None` when a recording has ended. Live inputs go
    /// to `feed` as they are decoded (see [`LiveSource::next_with`]); a recording's
    /// are staged in `out`, so that what its header says applies before they do.
    async fn next(
        &mut self,
        out: &mut Vec<Input>,
        feed: impl FnMut(Input),
    ) -> Result<Option<Notes>> {
        match self {
            Self::Live { live, .. } => live.next_with(feed).await.map(Some),
            Self::Replay(r) => r.next(out).await,
        }
    }

    /// The clock the model ticks on: boot time, or the recording's time.
    fn now_ns(&self) -> u64 {
        match self {
            Self::Live { .. } => boottime_ns(),
            Self::Replay(r) => r.now_ns(),
        }
    }

    /// Hands the model everything the kernel has done up to now (see
    /// [`LiveSource::drain_to_now`]) and returns the time it is complete to; a replay
    /// is at its own time already.
    fn drain_to_now(&mut self, feed: impl FnMut(Input)) -> u64 {
        match self {
            Self::Live { live, .. } => live.drain_to_now(feed),
            Self::Replay(r) => r.now_ns(),
        }
    }

    fn dropped(&self) -> Result<u64> {
        match self {
            Self::Live { probes, .. } => probes.dropped(),
            Self::Replay(r) => Ok(r.dropped),
        }
    }

    /// Program runs the kernel skipped: now, or as the recording last counted them.
    fn skipped_runs(&self) -> u64 {
        match self {
            Self::Live { probes, .. } => probes.missed_runs(),
            Self::Replay(r) => r.skipped_runs,
        }
    }

    /// Who names cgroup ids: this host, or the recording.
    fn names(&mut self) -> &mut dyn Names {
        match self {
            Self::Live { names, .. } => names,
            Self::Replay(r) => &mut r.names,
        }
    }

    /// Boot time to local time of day: this host's now, or the recording's.
    fn clock(&self) -> Clock {
        match self {
            Self::Live { .. } => Clock::now(),
            Self::Replay(r) => r.clock,
        }
    }

    fn hooks(&self) -> &[HookPath] {
        match self {
            Self::Live { probes, .. } => &probes.setup.hooks,
            Self::Replay(r) => &r.hooks,
        }
    }
}

/// A recording played back at `speed` times its pace (0: as fast as possible).
pub struct ReplaySource {
    files: std::vec::IntoIter<PathBuf>,
    reader: Option<Reader<std::io::BufReader<std::fs::File>>>,
    speed: f64,
    /// The first input's recorded time, and when it was played.
    origin: Option<(u64, tokio::time::Instant)>,
    /// The recording's time reached so far.
    now_ns: u64,
    /// An input read ahead whose time has not come yet.
    pending: Option<Input>,
    /// Namespaces whose state is loaded: a later file of a rotated set repeats it.
    loaded: std::collections::HashSet<u32>,
    pub dropped: u64,
    pub skipped_runs: u64,
    pub hooks: Vec<HookPath>,
    pub exact_timewait: bool,
    /// The recording's names of cgroup ids.
    pub names: NameTable,
    /// The first file's clocks and time zone.
    pub clock: Clock,
    /// How the files ended (torn tail, corruption), for the closing line.
    pub statuses: Vec<(PathBuf, ReadStatus)>,
}

/// Inputs handed out per call while replaying as fast as possible, so the terminal
/// and signals still run.
const REPLAY_BATCH: usize = 65536;

impl ReplaySource {
    /// Opens the files (several: a rotation set, read in the order of their start).
    pub fn open(mut files: Vec<PathBuf>, speed: f64) -> Result<Self> {
        let mut starts = Vec::with_capacity(files.len());
        for f in &files {
            let mut r = Reader::open(f)?;
            let (start, clock) = match r.next() {
                Some(Ok(Record::Header(h))) => (
                    (h.recording_id, h.file_seq, h.started_ns),
                    Clock::new(h.boot_to_wall_ns.into(), h.utc_offset_s.into()),
                ),
                Some(Err(e)) => return Err(e.into()),
                _ => anyhow::bail!("{}: no header frame at the start", f.display()),
            };
            starts.push((start, f.clone(), clock));
        }
        starts.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let clock = starts.first().map_or(Clock::new(0, 0), |s| s.2);
        files = starts.into_iter().map(|(_, f, _)| f).collect();
        Ok(Self {
            files: files.into_iter(),
            reader: None,
            speed,
            origin: None,
            now_ns: 0,
            pending: None,
            loaded: Default::default(),
            dropped: 0,
            skipped_runs: 0,
            hooks: Vec::new(),
            exact_timewait: false,
            names: NameTable::new(),
            clock,
            statuses: Vec::new(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// The next input of the recording, or `None` at its end.
    fn read(&mut self) -> Result<Option<Input>> {
        loop {
            if self.reader.is_none() {
                let Some(path) = self.files.next() else {
                    return Ok(None);
                };
                self.reader = Some(Reader::open(&path)?);
                self.statuses.push((path, ReadStatus::default()));
            }
            let reader = self.reader.as_mut().expect("just opened");
            match reader.next() {
                None => {
                    if let Some(last) = self.statuses.last_mut() {
                        last.1 = reader.status().clone();
                    }
                    self.reader = None;
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Record::Header(h))) => {
                    self.hooks.clone_from(&h.hooks);
                    self.exact_timewait = h.exact_timewait;
                }
                Some(Ok(Record::Counters(c))) => {
                    self.dropped = c.kernel_dropped;
                    self.skipped_runs = c.kernel_skipped_runs;
                }
                Some(Ok(Record::Input(Input::State(s)))) => {
                    // A continuing set repeats what the model already has.
                    if self.loaded.insert(s.netns) {
                        return Ok(Some(Input::State(s)));
                    }
                }
                Some(Ok(Record::Input(i))) => return Ok(Some(i)),
                Some(Ok(Record::Cgroups(names))) => {
                    crate::capture::remember_names(&mut self.names, &names);
                }
                Some(Ok(Record::Trigger(_) | Record::End(_))) => {}
            }
        }
    }

    /// Hands out the inputs whose time has come; waits for the next one otherwise.
    async fn next(&mut self, out: &mut Vec<Input>) -> Result<Option<Notes>> {
        let mut notes = Notes::default();
        loop {
            let input = match self.pending.take() {
                Some(i) => i,
                None => match self.read()? {
                    Some(i) => i,
                    None if out.is_empty() => return Ok(None),
                    None => return Ok(Some(notes)),
                },
            };
            if let Some(ts) = input.ts_ns() {
                let (t0, played) = *self.origin.get_or_insert((ts, tokio::time::Instant::now()));
                if self.speed > 0.0 && ts > t0 {
                    let due = played + Duration::from_secs_f64((ts - t0) as f64 / 1e9 / self.speed);
                    if due > tokio::time::Instant::now() {
                        if !out.is_empty() {
                            self.pending = Some(input);
                            return Ok(Some(notes));
                        }
                        tokio::time::sleep_until(due).await;
                    }
                }
                self.now_ns = self.now_ns.max(ts);
            }
            if matches!(input, Input::State(_)) {
                notes.baseline_done = true;
            }
            out.push(input);
            if out.len() >= REPLAY_BATCH {
                return Ok(Some(notes));
            }
        }
    }
}

/// Loads and attaches the programs and starts the live source (baseline, settings,
/// drift check every `drift_secs`), saying with `verbose` what is in use. `portx top`
/// and `portx serve` start the same way.
pub fn start_live(
    ring_mib: u32,
    filter: KernelFilter,
    drift_secs: Option<f64>,
    verbose: bool,
) -> Result<(Probes, LiveSource)> {
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let mut probes = Probes::load(LoadOptions {
        ring_bytes: ring_mib << 20,
        filter,
        accounting: true,
        ..LoadOptions::default()
    })?;
    if verbose {
        eprintln!("portx: {}", probes.state_policy());
        for a in &probes.setup.attached {
            eprintln!("portx: attached {a}");
        }
        crate::commands::trace::print_hooks(&probes.setup.hooks);
        eprintln!("portx: {}", probes.wakeup_policy());
        eprintln!("portx: {}", probes.setup.batching);
        eprintln!(
            "portx: TIME_WAIT: modelled from FIN_WAIT2/CLOSING -> CLOSE (no tracepoint reports it); drift check {}",
            drift_secs.map_or("off".to_owned(), |s| format!("every {s} s"))
        );
    }
    let live = LiveSource::start(&mut probes, drift_secs.map(Duration::from_secs_f64))?;
    Ok((probes, live))
}

pub async fn run(args: TopArgs, verbose: bool) -> Result<()> {
    crate::kernel::cgroups::use_host_root(&args.host.host_root)?;
    let replay = args.replay.is_some();
    // A recording names namespaces by inode; names and paths are this host's.
    let netns_filter =
        match &args.netns {
            Some(a) if replay => Some(a.parse::<u32>().with_context(|| {
                format!("--netns {a}: with --replay, give the namespace's inode")
            })?),
            Some(a) => Some(netns::resolve(a)?),
            None => None,
        };
    let mut source = match &args.replay {
        Some(files) => {
            let r = ReplaySource::open(files.clone(), args.speed)?;
            Source::Replay(r)
        }
        None => {
            // A recording's pids are of its time; only a live one must exist now.
            preflight::check_pid(args.pid)?;
            let drift = (!args.no_drift_check).then_some(args.drift_interval);
            // One namespace shown: the others' events are left out in the kernel.
            let filter = KernelFilter {
                netns: netns_filter.unwrap_or(0),
                ..KernelFilter::ALL
            };
            let (probes, live) = start_live(args.ring_mib, filter, drift, verbose)?;
            let names = CgroupNames::new(HostRoot::current());
            if verbose {
                eprintln!("portx: {}", names.describe());
            }
            Source::Live {
                probes: Box::new(probes),
                live,
                names,
            }
        }
    };

    let mut model = Model::new();
    if let Source::Live { probes, .. } = &source {
        model.set_exact_timewait(probes.exact_timewait);
    }
    let view = View {
        netns: netns_filter,
        pid: args.pid,
        max_destinations: 0,
        brief: false,
    };
    let mut baseline_done = false;
    let mut ended = false;

    let interactive = !args.once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (snap_tx, snap_rx) = watch::channel(Snapshot::default());
    let tui_view = match args.by {
        By::Dest => tui::View::Destinations,
        By::Process => tui::View::Processes,
        By::Workload => tui::View::Workloads,
    };
    let clock = source.clock();
    let mut tui_task =
        interactive.then(|| tokio::spawn(tui::run_terminal(snap_rx, tui_view, clock)));
    let interval = Duration::from_secs_f64(args.interval);
    // Taken before the ticker so that its ticks are never a hair before a print is
    // due (the print would then wait one more tick: with --once, a whole interval).
    let mut next_print = tokio::time::Instant::now() + interval;
    let mut ticker = tokio::time::interval(if args.once {
        interval
    } else {
        Duration::from_millis(250).min(interval)
    });
    ticker.tick().await;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut inputs = Vec::with_capacity(1024);
    let snapshot = |model: &mut Model, source: &mut Source, at_ns: u64| -> Result<Snapshot> {
        let mut snap = model.snapshot(view);
        snap.time = clock.rfc3339(at_ns);
        snap.dropped_events = source.dropped()?;
        snap.skipped_runs = source.skipped_runs();
        snap.hooks = source.hooks().to_vec();
        annotate(&mut snap, source.names());
        Ok(snap)
    };

    loop {
        tokio::select! {
            r = source.next(&mut inputs, |input| feed(&mut model, verbose, &input)), if !ended => {
                let Some(notes) = r? else {
                    // The recording is over: show where it ended.
                    ended = true;
                    let at = source.now_ns();
                    model.tick(at);
                    let snap = snapshot(&mut model, &mut source, at)?;
                    if interactive {
                        let _ = snap_tx.send(snap);
                        continue;
                    }
                    print_snapshot(&snap, args.json, tui_view, &clock)?;
                    break;
                };
                for w in &notes.warnings {
                    if verbose || !interactive {
                        eprintln!("portx: warning: {w}");
                    }
                }
                if let Source::Replay(r) = &source {
                    model.set_exact_timewait(r.exact_timewait);
                }
                for input in inputs.drain(..) {
                    feed(&mut model, verbose, &input);
                }
                if notes.baseline_done && !baseline_done {
                    baseline_done = true;
                    if !interactive && !replay {
                        eprintln!(
                            "portx: baseline taken ({}, {} in TIME_WAIT); watching",
                            counted(model.socket_count() as u64, "socket"),
                            model.timewait_count()
                        );
                    }
                }
                // Let the terminal and timers run between batches.
                tokio::task::yield_now().await;
            }
            _ = ticker.tick() => {
                if !baseline_done || ended {
                    continue;
                }
                let now = tokio::time::Instant::now();
                // A replay with --once prints where the recording ends.
                let print = !interactive && now >= next_print && !(replay && args.once);
                // A printed snapshot counts what the kernel did up to its time, not
                // only what the last running drain handed out.
                let at = if print {
                    source.drain_to_now(|input| feed(&mut model, verbose, &input))
                } else {
                    source.now_ns()
                };
                model.tick(at);
                if interactive {
                    let _ = snap_tx.send(snapshot(&mut model, &mut source, at)?);
                } else if print {
                    // The next print on the ticks' schedule, not on this tick's delay.
                    next_print += interval;
                    if next_print < now {
                        next_print = now + interval;
                    }
                    print_snapshot(&snapshot(&mut model, &mut source, at)?, args.json, tui_view, &clock)?;
                    if args.once {
                        break;
                    }
                }
            }
            r = async { tui_task.as_mut().expect("guarded").await }, if tui_task.is_some() => {
                tui_task = None;
                r.context("terminal task")??;
                break;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    drop(snap_tx);
    if let Some(t) = tui_task {
        let _ = t.await;
    }
    match &source {
        Source::Live { live, .. } => {
            let dropped = source.dropped()?;
            let missed = match &source {
                Source::Live { probes, .. } => probes.missed_runs(),
                Source::Replay(_) => 0,
            };
            if dropped > 0 || missed > 0 || live.undecodable > 0 || verbose {
                let (events, bytes, records, stalls) = live.ring_read();
                eprintln!(
                    "portx: {dropped} events dropped, {} undecodable, {missed} program runs skipped by the kernel (nested on one CPU), {stalls} drains held at a record being written; {events} events ({bytes} bytes) read from the ring in {records} records: {}",
                    live.undecodable, live.tally
                );
            }
        }
        Source::Replay(r) => {
            for (path, st) in &r.statuses {
                if let Some(off) = st.torn_tail {
                    eprintln!(
                        "portx: {}: torn last frame at offset {off} skipped",
                        path.display()
                    );
                }
                if let Some((off, why)) = &st.corrupt {
                    eprintln!(
                        "portx: {}: corrupt frame at offset {off} ({why}); read up to it",
                        path.display()
                    );
                }
            }
        }
    }
    Ok(())
}

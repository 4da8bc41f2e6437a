//! The live source of model inputs: the ring buffer's events, and from a prober
//! thread each namespace's start-up baseline (sock_diag), settings (re-read every few
//! seconds) and the TIME_WAIT drift check. `portx top` and `portx record` read the
//! kernel only through this, and a recording replays the same [`Input`]s.
//!
//! Events that arrive while the baselines are taken are held back and handed out after
//! them, so nothing falls between the dump and the stream.

use std::{
    collections::HashMap,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use rustc_hash::FxHashSet;
use tokio::sync::mpsc;

use crate::{
    events::{RawRecord, TcpState, TraceEvent, decode, reorder::Reorder, tally::Tally},
    kernel::{
        after_events::AfterEvents,
        batches::{FLUSH_AGE, Flushed},
        loader::{EventReader, Probes},
        proc_owners::{self, ProcOwner},
        sockdiag::{self, DiagSocket, NetnsProbe, NetnsRef},
    },
    model::{
        BaselineSocket, NetnsConfig, Tuple,
        input::{Input, NetnsState},
    },
};

/// How often the port range and reserved ports are re-read.
const SETTINGS_EVERY: Duration = Duration::from_secs(2);

/// How often the prober looks for namespaces that nothing but its own handles reach
/// any more (`let_go_of_unreachable`: a walk of /proc, a readlink per process), with
/// the drift check, or at this interval without one.
const NETNS_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Records drained from the ring buffer per call, so a flood of events cannot starve
/// the terminal or the timers.
pub const DRAIN_BATCH: usize = 65536;

/// Drains at stop, at most, should the ring hold more than one [`DRAIN_BATCH`].
const DRAIN_ROUNDS_AT_STOP: usize = 16;

/// Which drain: a running one; one for a snapshot printed on its own (every batch
/// flushed, however young, and events handed out in time order up to the flush); or
/// one at stop (every batch flushed, and everything held handed out once the ring is
/// read through or in its last round).
#[derive(Clone, Copy)]
enum Drain {
    Running,
    ToNow,
    AtStop { last_round: bool },
}

/// `CLOCK_BOOTTIME` now, the clock of BPF event timestamps.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the prober thread reports.
enum ProbeMsg {
    Input(Input),
    /// All start-up baselines have been sent.
    BaselineDone,
    /// The states asked for with [`LiveSource::request_state`] have been sent.
    StateDone,
    /// An input read from a dump that ended at `at_ns` (the drift check, a namespace
    /// let go of): handed out once the events stamped before then have been.
    Dumped {
        at_ns: u64,
        input: Input,
    },
    Warning(String),
}

/// Requests to the prober thread.
enum ProbeReq {
    /// An event named a namespace we have no probe for; `pid` is a process in it.
    Discover { inode: u32, pid: u32 },
    /// Every namespace's sockets and settings now, as at start-up.
    State,
    /// Re-read every namespace's settings now (`portx serve` on SIGHUP).
    Settings,
    /// Drop every capability of the prober thread but these (capabilities are per
    /// thread; see [`crate::kernel::privs`]).
    DropCaps(crate::kernel::privs::CapsHashSet),
}

/// What one [`LiveSource::next`] call brought besides inputs.
#[derive(Debug, Default)]
pub struct Notes {
    /// Prober warnings, one line each.
    pub warnings: Vec<String>,
    /// Every start-up baseline has been handed out (once).
    pub baseline_done: bool,
    /// The states of a [`LiveSource::request_state`] have been handed out, before the
    /// events that came meanwhile.
    pub state_done: bool,
}

/// Inputs from the running kernel.
pub struct LiveSource {
    reader: EventReader,
    msgs: mpsc::UnboundedReceiver<ProbeMsg>,
    requests: std_mpsc::Sender<ProbeReq>,
    known_netns: FxHashSet<u32>,
    baseline_done: bool,
    /// A state was asked for and has not come yet: events wait behind it.
    state_pending: bool,
    held: Vec<TraceEvent>,
    /// The ring still had records when the last drain stopped at its batch size
    /// (readiness is edge-triggered and will not fire again for those).
    more: bool,
    /// Records from per-CPU batches, until they can be handed out in time order.
    reorder: Reorder<RawRecord>,
    /// Inputs read from dumps, until the events stamped before them are handed out.
    dumped: AfterEvents<Input>,
    /// A flush of the per-CPU batches failed (said once).
    flush_failed: bool,
    /// Warnings of the event path, handed out with the next [`Notes`].
    warnings: Vec<String>,
    /// Boot-clock time up to which the inputs handed out so far are complete.
    complete_to: u64,
    /// The latest stamp of an event handed out as read, without batches: a drain that
    /// stopped at a record still being written has handed out events stamped after
    /// the time it can claim complete.
    handed_to: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// The decoded events, by kind and move (for `-v`'s closing line).
    pub tally: Tally,
}

impl LiveSource {
    /// Starts the prober thread (baseline now, then settings every few seconds and the
    /// drift check every `drift_every`) and takes the ring buffer's reader. Where the
    /// programs were loaded for one namespace (`--netns`), the prober opens that one.
    pub fn start(probes: &mut Probes, drift_every: Option<Duration>) -> Result<Self> {
        let netns = probes.setup.config.filter.netns;
        let only_netns = (netns != 0).then_some(netns);
        let reader = probes.events()?;
        let (msg_tx, msgs) = mpsc::unbounded_channel();
        let (req_tx, req_rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("portx-prober".into())
            .spawn(move || prober(msg_tx, req_rx, drift_every, only_netns))
            .context("starting the prober thread")?;
        Ok(Self {
            reader,
            msgs,
            requests: req_tx,
            known_netns: FxHashSet::default(),
            baseline_done: false,
            state_pending: false,
            held: Vec::new(),
            more: false,
            reorder: Reorder::default(),
            dumped: AfterEvents::default(),
            flush_failed: false,
            warnings: Vec::new(),
            complete_to: 0,
            handed_to: 0,
            undecodable: 0,
            tally: Tally::default(),
        })
    }

    /// Waits for inputs and appends them to `out` in order. Cancel-safe (it only
    /// awaits readiness; the work is done after), so it can sit in a `select!`.
    pub async fn next(&mut self, out: &mut Vec<Input>) -> Result<Notes> {
        self.next_with(|input| out.push(input)).await
    }

    /// As [`Self::next`], handing each input to `sink` as it is decoded. A consumer
    /// that feeds a model this way reads each event while it is still in the cache:
    /// staged in a `Vec` first, a drain's events (100-odd bytes each, thousands in a
    /// storm) are written out and read back cold.
    pub async fn next_with(&mut self, mut sink: impl FnMut(Input)) -> Result<Notes> {
        let mut notes = Notes::default();
        if !self.more {
            tokio::select! {
                r = self.reader.readable() => r?,
                m = self.msgs.recv() => match m {
                    Some(m) => self.on_msg(m, &mut sink, &mut notes),
                    None => anyhow::bail!("the prober thread stopped"),
                },
            }
        }
        // Whatever else the prober has sent, then the ring.
        while let Ok(m) = self.msgs.try_recv() {
            self.on_msg(m, &mut sink, &mut notes);
        }
        self.drain_with(&mut sink);
        notes.warnings.append(&mut self.warnings);
        Ok(notes)
    }

    /// Asks for every namespace's state now (a sock_diag dump with owners from
    /// `/proc`, as at start-up): it comes as `Input::State`s followed by the events
    /// that arrived while it was taken, with [`Notes::state_done`]. What the kernel
    /// says is exact, and costs the event path nothing (unlike keeping a model per
    /// event). A second request while one is pending is ignored.
    pub fn request_state(&mut self) {
        if !self.state_pending && self.baseline_done {
            self.state_pending = self.requests.send(ProbeReq::State).is_ok();
        }
    }

    /// Asks the prober to re-read every namespace's settings now rather than at its
    /// next 2 s tick; changes come as `Input::Settings`.
    pub fn reread_settings(&self) {
        let _ = self.requests.send(ProbeReq::Settings);
    }

    /// Asks the prober thread to keep only `keep` (it warns if it cannot).
    pub fn drop_prober_caps(&self, keep: crate::kernel::privs::CapsHashSet) {
        let _ = self.requests.send(ProbeReq::DropCaps(keep));
    }

    /// Events read from the ring buffer so far, their bytes, the ring records that
    /// carried them, and the drains that stopped at a record still being written.
    pub fn ring_read(&self) -> (u64, u64, u64, u64) {
        let r = &self.reader;
        (r.events, r.bytes, r.records, r.stalls)
    }

    /// Drains the ring once more, at stop: what the kernel wrote still counts. Every
    /// per-CPU batch is flushed, however young, and everything held is handed out
    /// (a drift check's result last, after the events).
    pub fn drain(&mut self, out: &mut Vec<Input>) {
        let mut sink = |input| out.push(input);
        for round in 1..=DRAIN_ROUNDS_AT_STOP {
            let last_round = round == DRAIN_ROUNDS_AT_STOP;
            self.drain_as(&mut sink, Drain::AtStop { last_round });
            if !self.more {
                break;
            }
        }
    }

    /// Drains what the kernel has written up to now, for a snapshot that is printed
    /// (`top --once`, `top --json`): a running drain leaves a batch until it is
    /// [`FLUSH_AGE`] old and only then hands out what precedes it, so a snapshot taken
    /// between drains would miss the last 10 to 40 ms. Every per-CPU batch is flushed
    /// here, and events are handed out in time order up to the flush (what comes later
    /// waits, as in a running drain, so nothing is handed out of order). Returns the
    /// boot-clock time up to which the inputs handed out are complete, and after which
    /// none was stamped: the flush, or without batches the end of the read; should the
    /// ring still hold records after [`DRAIN_ROUNDS_AT_STOP`] rounds, the last drain
    /// that read it through (without batches, or the last event handed out, if later).
    pub fn drain_to_now(&mut self, mut sink: impl FnMut(Input)) -> u64 {
        let started = boottime_ns();
        for _ in 0..DRAIN_ROUNDS_AT_STOP {
            // Again while the ring holds more, or a record still being written held the
            // rest back (usually for microseconds): with batches, nothing after the
            // flush was handed out; without, events up to it were, and the time
            // claimed must not be before them.
            if self.drain_as(&mut sink, Drain::ToNow) && self.complete_to >= self.handed_to {
                break;
            }
            std::thread::yield_now();
        }
        // A failed flush says "everything" (u64::MAX): what was committed before this
        // drain began.
        if self.complete_to == u64::MAX {
            started
        } else {
            // Still held at a record being written after every round: the time of the
            // last event counted, so that none is counted after it (that record, and
            // the few behind it, may be stamped before it and come next time).
            self.complete_to.max(self.handed_to)
        }
    }

    fn drain_with(&mut self, sink: &mut impl FnMut(Input)) {
        self.drain_as(sink, Drain::Running);
    }

    /// Returns whether what was handed out is complete up to the flush (or without
    /// batches, up to the end of the read or when this drain began).
    fn drain_as(&mut self, sink: &mut impl FnMut(Input), how: Drain) -> bool {
        let started = boottime_ns();
        // Per-CPU batches first, so what the ring then holds is complete up to the
        // flush (less a slack); without batches the ring is in order.
        let older_than = match how {
            Drain::Running => FLUSH_AGE,
            Drain::ToNow | Drain::AtStop { .. } => Duration::ZERO,
        };
        let flushed = match self.reader.flush_batches(older_than) {
            Ok(f) => f,
            Err(e) => {
                // Hand out what is held rather than hold it for ever; said once.
                if !self.flush_failed {
                    self.flush_failed = true;
                    self.warnings.push(format!(
                        "{e:#}; events from per-CPU batches may now come out of order"
                    ));
                }
                Some(Flushed {
                    upto: u64::MAX,
                    waiting: false,
                })
            }
        };
        // After the flush: every record reserved before this, its events included, must
        // be read before the flush's time can be claimed.
        let mark = self.reader.mark();
        // Straight to `sink` (or `held`): a batch in between cost an allocation per
        // drain, and a copy of each event.
        let Self {
            reader,
            requests,
            known_netns,
            baseline_done,
            state_pending,
            held,
            undecodable,
            reorder,
            tally,
            handed_to,
            ..
        } = self;
        let mut route = |ev: TraceEvent| {
            tally.add(&ev);
            if ev.netns != 0 && ev.pid != 0 && known_netns.insert(ev.netns) && *baseline_done {
                let _ = requests.send(ProbeReq::Discover {
                    inode: ev.netns,
                    pid: ev.pid,
                });
            }
            if *baseline_done && !*state_pending {
                sink(Input::Event(ev));
            } else {
                held.push(ev);
            }
        };
        let mut kept = 0;
        let n = reader.drain(|b| {
            if flushed.is_some() {
                // Held raw, decoded in time order below.
                match RawRecord::read(b) {
                    Some(raw) => {
                        kept += 1;
                        reorder.push(raw.ts_ns(), raw);
                    }
                    None => *undecodable += 1,
                }
            } else {
                match decode(b) {
                    Ok(ev) => {
                        kept += 1;
                        *handed_to = (*handed_to).max(ev.ts_ns);
                        route(ev);
                    }
                    Err(_) => *undecodable += 1,
                }
            }
            kept < DRAIN_BATCH
        });
        let more = n >= DRAIN_BATCH;
        let at_stop = matches!(how, Drain::AtStop { .. });
        // Records left in the ring may be older than some held ones: hand nothing out
        // until the ring has been read through (the next call comes at once), or at
        // stop, the last round.
        let read_through = !more || matches!(how, Drain::AtStop { last_round: true });
        // Stopped at a record a program has reserved and not yet committed, with
        // records behind it: with batches, another CPU's older events may be among
        // them, so nothing is handed out up to the flush; without, events went out as
        // read, in ring order, and only a dump must wait (an event before its end may be
        // that record). Drained again soon. At stop, such a record is after the end.
        let stalled = !more && !at_stop && !reader.read_past(mark);
        if stalled {
            reader.hurry();
        }
        let through = read_through && !(stalled && flushed.is_some());
        if let Some(f) = flushed.filter(|_| through) {
            // At stop every batch has been flushed: nothing older can come now.
            let upto = if at_stop { u64::MAX } else { f.upto };
            reorder.release(upto, |raw| match raw.decode() {
                Ok(ev) => route(ev),
                Err(_) => *undecodable += 1,
            });
            if f.waiting || !reorder.is_empty() {
                reader.hurry();
            }
        }
        self.more = more;
        // How far the events handed out are complete: up to the flush with batches;
        // without, up to now if the ring is read to its end, else what was committed
        // before this drain began (a program commits microseconds after its timestamp;
        // events read since then are counted too). Read to its end, the ring also holds
        // nothing stamped before the last event read: a program stamps after it
        // reserves, and what was reserved before the end was found was read.
        let upto = through.then(|| {
            if at_stop {
                u64::MAX
            } else {
                flushed.map_or_else(
                    || {
                        if stalled || more {
                            started
                        } else {
                            let now = reader.read_up_to_now().unwrap_or(started);
                            now.max(*handed_to)
                        }
                    },
                    |f| f.upto,
                )
            }
        });
        if let Some(u) = upto {
            self.complete_to = self.complete_to.max(u);
        }
        self.release_dumped(upto.filter(|_| !stalled), sink);
        through
    }

    fn on_msg(&mut self, m: ProbeMsg, sink: &mut impl FnMut(Input), notes: &mut Notes) {
        match m {
            ProbeMsg::Input(input) => {
                if let Input::State(s) = &input {
                    self.known_netns.insert(s.netns);
                }
                sink(input);
            }
            ProbeMsg::BaselineDone => {
                self.baseline_done = true;
                notes.baseline_done = true;
                self.held.drain(..).map(Input::Event).for_each(&mut *sink);
                self.held.shrink_to_fit();
            }
            ProbeMsg::StateDone => {
                self.state_pending = false;
                notes.state_done = true;
                self.held.drain(..).map(Input::Event).for_each(&mut *sink);
            }
            // A namespace's drift check still waiting is superseded by its next: one
            // each at most, however far the events lag.
            ProbeMsg::Dumped {
                at_ns,
                input: input @ Input::TimeWait { netns, .. },
            } => self.dumped.push_replacing(
                at_ns,
                input,
                |w| matches!(w, Input::TimeWait { netns: n, .. } if *n == netns),
            ),
            ProbeMsg::Dumped { at_ns, input } => self.dumped.push(at_ns, input),
            ProbeMsg::Warning(w) => notes.warnings.push(w),
        }
    }

    /// Hands out the dumps' inputs that every event handed out so far precedes
    /// (`upto`); none while events are held behind a state.
    fn release_dumped(&mut self, upto: Option<u64>, sink: &mut impl FnMut(Input)) {
        if self.dumped.is_empty() {
            return;
        }
        if let Some(upto) = upto.filter(|_| self.baseline_done && !self.state_pending) {
            let known_netns = &mut self.known_netns;
            self.dumped.release(upto, |input| {
                if let Input::NetnsGone { netns } = &input {
                    // Should an event name it again, the prober is asked to open it
                    // again.
                    known_netns.remove(netns);
                }
                sink(input);
            });
        }
        if !self.dumped.is_empty() {
            self.reader.hurry();
        }
    }
}

fn to_baseline(s: &DiagSocket, owners: &HashMap<u64, ProcOwner>) -> BaselineSocket {
    BaselineSocket {
        sock: 0,
        tuple: Tuple::new(s.saddr, s.sport, s.daddr, s.dport),
        state: s.state,
        owner: owners
            .get(&s.inode)
            .map(|o| (o.pid, o.comm.clone(), o.cgroup_id)),
        expires_ms: s.expires_ms,
        orphan: s.inode == 0,
    }
}

fn settings(probe: &NetnsProbe, name: Option<String>) -> Result<NetnsConfig> {
    Ok(NetnsConfig {
        name,
        port_range: probe.port_range()?,
        reserved: probe.reserved_ports()?,
        tcp: probe.tcp_sysctls(),
    })
}

fn baseline(
    probe: &NetnsProbe,
    name: Option<String>,
    owners: &HashMap<u64, ProcOwner>,
) -> Result<ProbeMsg> {
    let at_ns = boottime_ns();
    let config = settings(probe, name)?;
    let sockets = probe
        .dump_tcp(sockdiag::ALL_STATES)?
        .iter()
        .map(|s| to_baseline(s, owners))
        .collect();
    Ok(ProbeMsg::Input(Input::State(NetnsState {
        netns: probe.inode,
        config,
        at_ns,
        sockets,
    })))
}

/// A namespace the prober watches.
struct Watched {
    probe: NetnsProbe,
    name: Option<String>,
    /// Its settings as last sent.
    config: NetnsConfig,
    /// Sockets of its baselines whose close may never come as an event (accepted
    /// connections: [`crate::model::baseline_without_close`]), until a drift check
    /// finds them gone.
    unclosed: FxHashSet<Tuple>,
    /// Sweeps in a row that found nothing but the prober reaching it.
    unreachable: u8,
}

impl Watched {
    /// Takes note of a baseline it sent.
    fn sent(&mut self, msg: &ProbeMsg) {
        if let ProbeMsg::Input(Input::State(s)) = msg {
            self.config.clone_from(&s.config);
            self.unclosed
                .extend(crate::model::baseline_without_close(&s.sockets, &s.config));
        }
    }

    /// The drift check: the kernel's timewait sockets (TIME_WAIT, and FIN_WAIT2 after
    /// an orphaned close), and which sockets of `unclosed` it no longer has. One dump
    /// serves both; while nothing is unclosed it asks for timewait states only.
    fn drift_check(&mut self) -> Vec<ProbeMsg> {
        let started_ns = boottime_ns();
        // Timewait sockets in FIN_WAIT2 hold their ports as TIME_WAIT does (the model
        // makes one entry at the close that hands a socket's port to either): asking
        // for TIME_WAIT alone would have the check remove the entries of every client
        // whose server has not closed yet.
        let states = if self.unclosed.is_empty() {
            sockdiag::TIMEWAIT_SOCKETS
        } else {
            sockdiag::ALL_STATES & !sockdiag::state_bit(TcpState::Listen)
        };
        let netns = self.probe.inode;
        let socks = match self.probe.dump_tcp(states) {
            Ok(socks) => socks,
            Err(e) => {
                return vec![ProbeMsg::Warning(format!(
                    "drift check, netns {netns}: {e:#}"
                ))];
            }
        };
        let at_ns = boottime_ns();
        let tuple = |s: &DiagSocket| Tuple::new(s.saddr, s.sport, s.daddr, s.dport);
        let mut out = vec![ProbeMsg::Dumped {
            at_ns,
            input: Input::TimeWait {
                netns,
                tuples: socks
                    .iter()
                    .filter(|s| s.timewait)
                    .map(|s| (tuple(s), s.expires_ms))
                    .collect(),
                started_ns,
                fin_wait2: socks
                    .iter()
                    .filter(|s| s.timewait && s.state == TcpState::FinWait2)
                    .map(tuple)
                    .collect(),
            },
        }];
        if !self.unclosed.is_empty() {
            let alive: FxHashSet<Tuple> = socks.iter().filter(|s| !s.timewait).map(tuple).collect();
            let gone: Vec<Tuple> = self.unclosed.extract_if(|t| !alive.contains(t)).collect();
            if !gone.is_empty() {
                if self.unclosed.is_empty() {
                    // Its memory too (a busy server's dump may have listed 100k).
                    self.unclosed = FxHashSet::default();
                }
                out.push(ProbeMsg::Dumped {
                    at_ns,
                    input: Input::BaselineGone {
                        netns,
                        tuples: gone,
                    },
                });
            }
        }
        out
    }
}

/// Drops the namespaces that nothing reaches any more but the prober's own handles:
/// no process is in them and no `ip netns` name is left (`sockdiag::list_netns`), in
/// two sweeps in a row (once can be a container caught between its last process
/// exiting and the next entering), and no TCP socket of its own ([`holds_sockets`]).
/// Its sock_diag socket (a user socket holds a reference on its namespace) would keep
/// such a namespace alive for as long as portx runs, one per container a host ever
/// started, each still probed every interval. The model is told to forget them
/// (`Input::NetnsGone`). Only while the prober may read every process's
/// namespace link (`CAP_SYS_PTRACE`, which `serve` drops with `--netns`): without it,
/// another user's namespace would look unreachable.
/// https://elixir.bootlin.com/linux/v6.12/source/net/core/sock.c (sk_alloc: get_net_track)
fn let_go_of_unreachable(watched: &mut Vec<Watched>) -> Vec<ProbeMsg> {
    use crate::kernel::privs::{CapSet, Capability};
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_PTRACE).unwrap_or(false) {
        return Vec::new();
    }
    let reachable: FxHashSet<u32> = match sockdiag::list_netns() {
        Ok(list) => list.iter().map(|n| n.inode).collect(),
        Err(e) => {
            return vec![ProbeMsg::Warning(format!(
                "listing network namespaces: {e:#}"
            ))];
        }
    };
    for w in watched.iter_mut() {
        w.unreachable = if reachable.contains(&w.probe.inode) {
            0
        } else {
            w.unreachable.saturating_add(1)
        };
    }
    watched
        .extract_if(.., |w| w.unreachable >= 2 && !holds_sockets(&w.probe))
        .map(|w| {
            ProbeMsg::Dumped {
                // After its dump: the closes of its last sockets are stamped earlier.
                at_ns: boottime_ns(),
                input: Input::NetnsGone {
                    netns: w.probe.inode,
                },
            }
        })
        .collect()
}

/// Whether a namespace has TCP sockets of its own, which keep it alive whoever holds
/// them: a process elsewhere may have made them in it (setns, then back), and their
/// events still come. Timewait sockets are left out: they hold no reference on the
/// namespace (it purges them as it goes), so only the prober's handles would keep it.
/// A dump that fails counts as none.
/// https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_timewait_sock.c (inet_twsk_purge)
fn holds_sockets(probe: &NetnsProbe) -> bool {
    let states = sockdiag::ALL_STATES & !sockdiag::TIME_WAIT_ONLY;
    probe
        .dump_tcp(states)
        .is_ok_and(|socks| socks.iter().any(|s| !s.timewait))
}

/// The prober thread: owns every namespace's handles (they are not `Sync`).
/// `only_netns`: the one namespace the kernel filter lets events through for
/// (`--netns`); the others are not opened, baselined or checked at all.
fn prober(
    out: mpsc::UnboundedSender<ProbeMsg>,
    requests: std_mpsc::Receiver<ProbeReq>,
    drift_every: Option<Duration>,
    only_netns: Option<u32>,
) {
    let send = |m| out.send(m).is_ok();
    let mut watched: Vec<Watched> = Vec::new();
    // Opens a namespace and sends its baseline (or a warning); false when the
    // receiver is gone.
    let open = |watched: &mut Vec<Watched>, ns: &NetnsRef, owners: &HashMap<u64, ProcOwner>| {
        let msg = NetnsProbe::open(ns).and_then(|p| {
            let msg = baseline(&p, ns.name.clone(), owners)?;
            Ok((p, msg))
        });
        match msg {
            Ok((probe, msg)) => {
                let mut w = Watched {
                    probe,
                    name: ns.name.clone(),
                    config: NetnsConfig::default(),
                    unclosed: FxHashSet::default(),
                    unreachable: 0,
                };
                w.sent(&msg);
                watched.push(w);
                send(msg)
            }
            Err(e) => send(ProbeMsg::Warning(format!("{ns}: {e:#}"))),
        }
    };
    let mut namespaces = sockdiag::list_netns().unwrap_or_else(|e| {
        send(ProbeMsg::Warning(format!(
            "listing network namespaces: {e:#}"
        )));
        Vec::new()
    });
    if let Some(only) = only_netns {
        namespaces.retain(|n| n.inode == only);
    }
    // Attribute sockets to processes once, at start-up (with one namespace, its own
    // processes' sockets only).
    let owners = proc_owners::socket_owners(only_netns);
    for ns in &namespaces {
        if !open(&mut watched, ns, &owners) {
            return;
        }
    }
    if !send(ProbeMsg::BaselineDone) {
        return;
    }
    let mut next_settings = Instant::now() + SETTINGS_EVERY;
    let mut next_drift = drift_every.map(|d| Instant::now() + d);
    let sweep_every = drift_every.unwrap_or(NETNS_SWEEP_EVERY);
    let mut next_sweep = Instant::now() + sweep_every;
    loop {
        let wake = next_drift
            .map_or(next_settings, |d| d.min(next_settings))
            .min(next_sweep);
        match requests.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(ProbeReq::Discover { inode, pid }) => {
                if watched.iter().any(|w| w.probe.inode == inode) {
                    continue;
                }
                let ns = NetnsRef {
                    inode,
                    name: None,
                    path: format!("/proc/{pid}/ns/net").into(),
                };
                // A namespace born after start-up: its sockets are all new, so its
                // baseline only needs settings and whatever exists already, whose
                // owners are its own processes (a pod's first connection on a node
                // of hundreds must not read every process's descriptors).
                if !open(&mut watched, &ns, &proc_owners::socket_owners(Some(inode))) {
                    return;
                }
            }
            Ok(ProbeReq::State) => {
                let owners = proc_owners::socket_owners(only_netns);
                for w in &mut watched {
                    let msg = match baseline(&w.probe, w.name.clone(), &owners) {
                        Ok(msg) => {
                            w.sent(&msg);
                            msg
                        }
                        Err(e) => ProbeMsg::Warning(format!("netns {}: {e:#}", w.probe.inode)),
                    };
                    if !send(msg) {
                        return;
                    }
                }
                if !send(ProbeMsg::StateDone) {
                    return;
                }
            }
            Ok(ProbeReq::Settings) => next_settings = Instant::now(),
            Ok(ProbeReq::DropCaps(keep)) => {
                if let Err(e) = crate::kernel::privs::drop_to(&keep)
                    && !send(ProbeMsg::Warning(format!("prober thread: {e:#}")))
                {
                    return;
                }
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + sweep_every;
            for msg in let_go_of_unreachable(&mut watched) {
                if !send(msg) {
                    return;
                }
            }
        }
        if now >= next_settings {
            next_settings = now + SETTINGS_EVERY;
            for w in &mut watched {
                let msg = match settings(&w.probe, w.name.clone()) {
                    // Only changes: a recording then says when a setting changed.
                    Ok(config) if config == w.config => continue,
                    Ok(config) => {
                        w.config.clone_from(&config);
                        ProbeMsg::Input(Input::Settings {
                            netns: w.probe.inode,
                            config,
                        })
                    }
                    Err(e) => ProbeMsg::Warning(format!("netns {}: {e:#}", w.probe.inode)),
                };
                if !send(msg) {
                    return;
                }
            }
        }
        if let Some(d) = next_drift
            && now >= d
        {
            next_drift = drift_every.map(|e| now + e);
            for w in &mut watched {
                for msg in w.drift_check() {
                    if !send(msg) {
                        return;
                    }
                }
            }
        }
    }
}

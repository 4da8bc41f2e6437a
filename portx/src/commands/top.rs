//! `portx top`: the live port accounting view.
//!
//! One loop owns the model and feeds it from the ring buffer. A prober thread owns the
//! per-namespace netlink sockets and sysctl files: it takes the start-up baseline
//! (events are buffered meanwhile, so nothing falls between the dump and the stream),
//! re-reads the port settings every few seconds (a pread per file), and runs the
//! TIME_WAIT drift check. Nothing else is polled.

use std::{
    collections::HashMap,
    io::Write as _,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    cli::{By, TopArgs},
    events::decode,
    kernel::loader::{LoadOptions, Probes},
    kernel::netns,
    kernel::preflight,
    kernel::proc_owners::{self, ProcOwner},
    kernel::sockdiag::{self, DiagSocket, NetnsProbe, NetnsRef},
    model::{BaselineSocket, Model, NetnsConfig, Tuple, View, snapshot::Snapshot},
    views::tui,
};

/// How often the port range and reserved ports are re-read.
const SETTINGS_EVERY: Duration = Duration::from_secs(2);

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
    /// A namespace's sockets at start-up (or when first seen), with its settings.
    Baseline {
        inode: u32,
        config: NetnsConfig,
        sockets: Vec<BaselineSocket>,
        at_ns: u64,
    },
    Settings {
        inode: u32,
        config: NetnsConfig,
    },
    /// The kernel's TIME_WAIT set of a namespace, dumped from `started_ns`.
    TimeWait {
        inode: u32,
        tuples: Vec<(Tuple, u32)>,
        started_ns: u64,
    },
    /// All start-up baselines have been sent.
    BaselineDone,
    Warning(String),
}

/// Requests to the prober thread.
enum ProbeReq {
    /// An event named a namespace we have no probe for; `pid` is a process in it.
    Discover { inode: u32, pid: u32 },
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
        ..Default::default()
    })
}

/// The prober thread: owns every namespace's handles (they are not `Sync`).
fn prober(
    out: mpsc::UnboundedSender<ProbeMsg>,
    requests: std_mpsc::Receiver<ProbeReq>,
    drift_every: Option<Duration>,
) {
    let send = |m| out.send(m).is_ok();
    let mut probes: Vec<(NetnsProbe, Option<String>)> = Vec::new();
    let baseline = |probe: &NetnsProbe, name: Option<String>, owners: &HashMap<u64, ProcOwner>| {
        let at_ns = boottime_ns();
        let config = settings(probe, name)?;
        let sockets = probe
            .dump_tcp(sockdiag::ALL_STATES)?
            .iter()
            .map(|s| to_baseline(s, owners))
            .collect();
        anyhow::Ok(ProbeMsg::Baseline {
            inode: probe.inode,
            config,
            sockets,
            at_ns,
        })
    };
    let namespaces = sockdiag::list_netns().unwrap_or_else(|e| {
        send(ProbeMsg::Warning(format!(
            "listing network namespaces: {e:#}"
        )));
        Vec::new()
    });
    // Attribute sockets to processes once, at start-up.
    let owners = proc_owners::socket_owners();
    for ns in namespaces {
        match NetnsProbe::open(&ns).and_then(|p| {
            let msg = baseline(&p, ns.name.clone(), &owners)?;
            Ok((p, msg))
        }) {
            Ok((p, msg)) => {
                if !send(msg) {
                    return;
                }
                probes.push((p, ns.name));
            }
            Err(e) => {
                send(ProbeMsg::Warning(format!("{ns}: {e:#}")));
            }
        }
    }
    if !send(ProbeMsg::BaselineDone) {
        return;
    }
    let mut next_settings = Instant::now() + SETTINGS_EVERY;
    let mut next_drift = drift_every.map(|d| Instant::now() + d);
    loop {
        let wake = next_drift.map_or(next_settings, |d| d.min(next_settings));
        match requests.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(ProbeReq::Discover { inode, pid }) => {
                if probes.iter().any(|(p, _)| p.inode == inode) {
                    continue;
                }
                let ns = NetnsRef {
                    inode,
                    name: None,
                    path: format!("/proc/{pid}/ns/net").into(),
                };
                // A namespace born after start-up: its sockets are all new, so its
                // baseline only needs settings and whatever exists already.
                let owners = proc_owners::socket_owners();
                match NetnsProbe::open(&ns).and_then(|p| {
                    let msg = baseline(&p, None, &owners)?;
                    Ok((p, msg))
                }) {
                    Ok((p, msg)) => {
                        if !send(msg) {
                            return;
                        }
                        probes.push((p, None));
                    }
                    Err(e) => {
                        send(ProbeMsg::Warning(format!("{ns}: {e:#}")));
                    }
                }
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now >= next_settings {
            next_settings = now + SETTINGS_EVERY;
            for (p, name) in &probes {
                let msg = match settings(p, name.clone()) {
                    Ok(config) => ProbeMsg::Settings {
                        inode: p.inode,
                        config,
                    },
                    Err(e) => ProbeMsg::Warning(format!("netns {}: {e:#}", p.inode)),
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
            for (p, _) in &probes {
                let started_ns = boottime_ns();
                let msg = match p.dump_tcp(sockdiag::TIME_WAIT_ONLY) {
                    Ok(socks) => ProbeMsg::TimeWait {
                        inode: p.inode,
                        tuples: socks
                            .iter()
                            .map(|s| (Tuple::new(s.saddr, s.sport, s.daddr, s.dport), s.expires_ms))
                            .collect(),
                        started_ns,
                    },
                    Err(e) => ProbeMsg::Warning(format!("drift check, netns {}: {e:#}", p.inode)),
                };
                if !send(msg) {
                    return;
                }
            }
        }
    }
}

/// One snapshot on stdout: a JSON line, or the plain table followed by a blank line.
fn print_snapshot(snap: &Snapshot, json: bool, view: tui::View) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, snap)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", tui::plain_table(snap, view))?;
    }
    out.flush()?;
    Ok(())
}

/// Records drained from the ring buffer per turn, so a flood of events cannot starve
/// the terminal or the timers.
const DRAIN_BATCH: usize = 65536;

pub async fn run(args: TopArgs, verbose: bool) -> Result<()> {
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let netns_filter = args.netns.as_deref().map(netns::resolve).transpose()?;
    let mut probes = Probes::load(LoadOptions {
        ring_bytes: args.ring_mib << 20,
        ..LoadOptions::default()
    })?;
    if verbose {
        for a in &probes.setup.attached {
            eprintln!("portx: attached {a}");
        }
        crate::commands::trace::print_hooks(&probes.setup.hooks);
        eprintln!("portx: {}", probes.wakeup_policy());
        eprintln!(
            "portx: TIME_WAIT: modelled from FIN_WAIT2/CLOSING -> CLOSE (no tracepoint reports it); drift check {}",
            if args.no_drift_check {
                "off".to_owned()
            } else {
                format!("every {} s", args.drift_interval)
            }
        );
    }
    let mut reader = probes.events()?;
    let (msg_tx, mut msgs) = mpsc::unbounded_channel();
    let (req_tx, req_rx) = std_mpsc::channel();
    let drift_every = (!args.no_drift_check).then(|| Duration::from_secs_f64(args.drift_interval));
    std::thread::Builder::new()
        .name("portx-prober".into())
        .spawn(move || prober(msg_tx, req_rx, drift_every))
        .context("starting the prober thread")?;

    let mut model = Model::new();
    model.set_exact_timewait(probes.exact_timewait);
    let view = View {
        netns: netns_filter,
        pid: args.pid,
        max_destinations: 0,
    };
    // Events that arrive while the baseline is taken, applied after it.
    let mut buffered: Vec<crate::events::TraceEvent> = Vec::new();
    let mut baseline_done = false;
    let mut known_netns: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut undecodable = 0u64;
    let mut more = false;

    let interactive = !args.once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (snap_tx, snap_rx) = watch::channel(Snapshot::default());
    let tui_view = match args.by {
        By::Dest => tui::View::Destinations,
        By::Process => tui::View::Processes,
        By::Cgroup => tui::View::Cgroups,
    };
    let mut tui_task = interactive.then(|| tokio::spawn(tui::run_terminal(snap_rx, tui_view)));
    let interval = Duration::from_secs_f64(args.interval);
    let mut ticker = tokio::time::interval(if args.once {
        interval
    } else {
        Duration::from_millis(250).min(interval)
    });
    ticker.tick().await;
    let started = tokio::time::Instant::now();
    let mut next_print = started + interval;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    loop {
        tokio::select! {
            r = reader.readable(), if !more => {
                r?;
                more = true;
            }
            // Drain in batches; `more` stays set while the ring still had records, since
            // readiness is edge-triggered and will not fire again for what is left.
            _ = std::future::ready(()), if more => {
                let mut batch = Vec::with_capacity(1024);
                let n = reader.drain(|b| {
                    match decode(b) {
                        Ok(ev) => batch.push(ev),
                        Err(_) => undecodable += 1,
                    }
                    batch.len() < DRAIN_BATCH
                });
                more = n >= DRAIN_BATCH;
                for ev in batch {
                    if ev.netns != 0 && ev.pid != 0 && known_netns.insert(ev.netns) && baseline_done {
                        let _ = req_tx.send(ProbeReq::Discover { inode: ev.netns, pid: ev.pid });
                    }
                    if baseline_done {
                        model.apply(&ev);
                    } else {
                        buffered.push(ev);
                    }
                }
                // Let the terminal and timers run between batches.
                tokio::task::yield_now().await;
            }
            Some(msg) = msgs.recv() => match msg {
                ProbeMsg::Baseline { inode, config, sockets, at_ns } => {
                    known_netns.insert(inode);
                    model.set_netns_config(inode, config);
                    model.load_baseline(inode, &sockets, at_ns);
                    if verbose {
                        eprintln!("portx: baseline of netns {inode}: {} sockets", sockets.len());
                    }
                }
                ProbeMsg::Settings { inode, config } => model.set_netns_config(inode, config),
                ProbeMsg::TimeWait { inode, tuples, started_ns } => {
                    let (added, removed) = model.reconcile_timewait(inode, &tuples, started_ns);
                    if verbose && added + removed > 0 {
                        eprintln!("portx: drift check netns {inode}: added {added}, removed {removed} TIME_WAIT entries");
                    }
                }
                ProbeMsg::BaselineDone => {
                    baseline_done = true;
                    if !interactive {
                        eprintln!(
                            "portx: baseline taken ({} sockets, {} in TIME_WAIT); watching",
                            model.socket_count(),
                            model.timewait_count()
                        );
                    }
                    for ev in buffered.drain(..) {
                        model.apply(&ev);
                    }
                    buffered.shrink_to_fit();
                }
                ProbeMsg::Warning(w) => {
                    if verbose || !interactive {
                        eprintln!("portx: warning: {w}");
                    }
                }
            },
            _ = ticker.tick() => {
                if !baseline_done {
                    continue;
                }
                model.tick(boottime_ns());
                let now = tokio::time::Instant::now();
                if interactive {
                    let mut snap = model.snapshot(view);
                    snap.dropped_events = probes.dropped()?;
                    snap.hooks.clone_from(&probes.setup.hooks);
                    let _ = snap_tx.send(snap);
                } else if now >= next_print {
                    next_print = now + interval;
                    let mut snap = model.snapshot(view);
                    snap.dropped_events = probes.dropped()?;
                    snap.hooks.clone_from(&probes.setup.hooks);
                    print_snapshot(&snap, args.json, tui_view)?;
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
    let dropped = probes.dropped()?;
    if dropped > 0 || undecodable > 0 || verbose {
        eprintln!("portx: {dropped} events dropped, {undecodable} undecodable");
    }
    Ok(())
}

//! `portx serve`: the `top` model behind an HTTP endpoint for Prometheus.
//!
//! One loop owns the model, as in `portx top`: it feeds it the [`LiveSource`]'s
//! inputs and counts connect()/bind() calls and errors from the events. The HTTP side
//! ([`views::http`]) asks it for a body through a channel; the loop answers after
//! draining the ring buffer, so a scrape never holds events back. After start-up the
//! process keeps only the capabilities later work uses ([`privs`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cli::ServeArgs,
    events::filter::Filter,
    kernel::{
        cgroups::{CgroupNames, HostRoot},
        live::{LiveSource, boottime_ns},
        loader::Probes,
        netns, privs,
    },
    model::{Model, View, input::Input},
    views::{
        self,
        http::{Limits, ScrapeRequest},
        metrics::{Counters, Exporter, SelfStats},
        output::counted,
    },
};

/// What the loop owns.
struct Served {
    model: Model,
    counters: Counters,
    exporter: Exporter,
    view: View,
    /// The last drop count read (kept if a later read fails).
    dropped: u64,
    names: CgroupNames,
}

impl Served {
    fn feed(&mut self, input: &Input) {
        self.counters.on_input(input);
        self.model.feed(input);
    }

    fn body(&mut self, probes: &Probes) -> String {
        let started = Instant::now();
        let now = boottime_ns();
        self.model.tick(now);
        let mut snap = self.model.snapshot(self.view);
        crate::workload::annotate::annotate(&mut snap, &mut self.names);
        if let Ok(d) = probes.dropped() {
            self.dropped = d;
        }
        snap.dropped_events = self.dropped;
        snap.skipped_runs = probes.missed_runs();
        snap.hooks.clone_from(&probes.setup.hooks);
        let stats = SelfStats {
            tracked_sockets: (self.model.socket_count() + self.model.timewait_count()) as u64,
            scrape_seconds: started.elapsed().as_secs_f64(),
        };
        self.exporter.render(&snap, &self.counters, &stats, now)
    }
}

/// Keeps only what later work needs, in both threads, and says so with `verbose`.
fn drop_privileges(
    kept: &mut privs::Kept,
    probes: &Probes,
    live: &LiveSource,
    verbose: bool,
) -> Result<()> {
    let mut keep: privs::CapsHashSet = kept.iter().map(|(c, _)| *c).collect();
    // Old kernels check CAP_BPF on every bpf() call, the drop counter's map lookup
    // included; CAP_SYS_ADMIN, when kept, covers it.
    if !keep.contains(&privs::Capability::CAP_SYS_ADMIN)
        && privs::needs_bpf_for_maps(&keep, || probes.dropped().is_ok())?
    {
        keep.insert(privs::Capability::CAP_BPF);
        kept.push((
            privs::Capability::CAP_BPF,
            "read the kernel's drop counter map (this kernel checks it on every bpf() call)",
        ));
    }
    privs::drop_to(&keep).context("dropping capabilities")?;
    live.drop_prober_caps(keep);
    if verbose {
        eprintln!("portx: {}", privs::describe(kept));
    }
    Ok(())
}

pub async fn run(args: ServeArgs, verbose: bool) -> Result<()> {
    crate::kernel::cgroups::use_host_root(&args.host.host_root)?;
    // Listen first: a port in use or a bad address fails before anything is loaded.
    let std_listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    std_listener
        .set_nonblocking(true)
        .context("setting the listener non-blocking")?;
    let listener =
        tokio::net::TcpListener::from_std(std_listener).context("registering the listener")?;
    let netns = args.netns.as_deref().map(netns::resolve).transpose()?;
    // With one namespace, the kernel drops the others' events: nothing to discover.
    let mut kept = privs::needed_after_start(netns.is_none());
    privs::check_start(&kept)?;

    let filter = Filter {
        netns,
        ..Filter::default()
    };
    let drift = (!args.no_drift_check).then_some(args.drift_interval);
    let (probes, mut live) =
        crate::commands::top::start_live(args.ring_mib, filter.kernel(), drift, verbose)?;

    let mut served = Served {
        model: Model::new(),
        counters: Counters::default(),
        exporter: Exporter::new(usize::from(args.top_k), env!("CARGO_PKG_VERSION")),
        // The exporter reads each destination's address, used, reusable and TIME_WAIT
        // (to rank them) and the diagnoses; owners come from the processes.
        view: View {
            netns,
            brief: true,
            ..View::default()
        },
        dropped: 0,
        names: CgroupNames::new(HostRoot::current()),
    };
    if verbose {
        eprintln!("portx: {}", served.names.describe());
    }
    served.model.set_exact_timewait(probes.exact_timewait);

    let ready = Arc::new(AtomicBool::new(false));
    let (scrape_tx, mut scrapes) = mpsc::channel::<ScrapeRequest>(64);
    let server = tokio::spawn(views::http::serve(
        listener,
        scrape_tx,
        Arc::clone(&ready),
        Limits::default(),
    ));
    eprintln!(
        "portx: serving http://{}/metrics; taking the baseline",
        args.listen
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // TIME_WAIT expiry and rates move with time even without events.
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let answer = |served: &mut Served, req: ScrapeRequest| {
        let _ = req.send(served.body(&probes));
    };
    let result = loop {
        tokio::select! {
            // The ring first: scrapes wait behind the events.
            biased;
            // Inputs go to the model as they are decoded (LiveSource::next_with).
            r = live.next_with(|input| served.feed(&input)) => {
                let notes = match r {
                    Ok(n) => n,
                    Err(e) => break Err(e),
                };
                for w in &notes.warnings {
                    eprintln!("portx: warning: {w}");
                }
                if notes.baseline_done && !ready.load(Ordering::Relaxed) {
                    if let Err(e) = drop_privileges(&mut kept, &probes, &live, verbose) {
                        break Err(e);
                    }
                    ready.store(true, Ordering::Release);
                    eprintln!(
                        "portx: baseline taken ({}, {} in TIME_WAIT); ready",
                        counted(served.model.socket_count() as u64, "socket"),
                        served.model.timewait_count()
                    );
                    // Type=notify: systemd counts the service started from here (a
                    // no-op without $NOTIFY_SOCKET).
                    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                        eprintln!("portx: warning: telling systemd we are ready: {e}");
                    }
                }
                // Scrapes that came meanwhile, now that this batch is in.
                while let Ok(req) = scrapes.try_recv() {
                    answer(&mut served, req);
                }
                tokio::task::yield_now().await;
            }
            Some(req) = scrapes.recv() => answer(&mut served, req),
            _ = ticker.tick() => served.model.tick(boottime_ns()),
            _ = sighup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                live.reread_settings();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                eprintln!("portx: SIGHUP: re-reading namespace settings");
            }
            _ = sigterm.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                break Ok(());
            }
            _ = sigint.recv() => break Ok(()),
        }
    };
    server.abort();
    if verbose {
        let (events, bytes, records, stalls) = live.ring_read();
        eprintln!(
            "portx: stopping; {} events dropped, {} undecodable, {} program runs skipped by the kernel (nested on one CPU), {stalls} drains held at a record being written; {events} events ({bytes} bytes) read from the ring in {records} records: {}",
            served.dropped,
            live.undecodable,
            probes.missed_runs(),
            live.tally
        );
    }
    result
}

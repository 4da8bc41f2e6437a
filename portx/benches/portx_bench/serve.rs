//! What `portx serve` costs per scrape, in process: the work the event loop does for
//! each `/metrics` request (tick, snapshot, render) at 10 to 100k destinations against
//! the snapshot alone; and the exporter's heap after an hour of churn toward ever-new
//! destinations against its heap after the first minute.

use std::{hint::black_box, net::Ipv4Addr, sync::atomic::Ordering, time::Instant};

use portx::{
    events::{Comm, Kind, TcpState},
    model::{Model, View},
    views::metrics::{Counters, DEFAULT_TOP_K, Exporter, SelfStats},
};

use crate::{Figure, LIVE, conn_event, median, model, report};

/// The `d`-th destination's address: 10.0.0.0/8 and up, distinct for any `d` used here.
fn dest(d: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + d as u32)
}

/// The view `portx serve` takes.
const SERVE_VIEW: View = View {
    netns: None,
    pid: None,
    max_destinations: 0,
    brief: true,
};

/// What one scrape does in the serve loop (`Served::body`): tick, snapshot (brief, as
/// serve takes it), self stats, render.
fn scrape(m: &mut Model, exporter: &mut Exporter, counters: &Counters, now: u64) -> String {
    let started = Instant::now();
    m.tick(now);
    let snap = m.snapshot(SERVE_VIEW);
    let stats = SelfStats {
        tracked_sockets: (m.socket_count() + m.timewait_count()) as u64,
        scrape_seconds: started.elapsed().as_secs_f64(),
    };
    exporter.render(&snap, counters, &stats, now)
}

/// A model with `n` destinations, 1 to 3 established connections toward each (so they
/// rank), and the counters the serve loop would have counted from the same events.
fn model_with(n: u64) -> (Model, Counters, u64) {
    let mut m = model();
    let mut counters = Counters::default();
    let comms: Vec<Comm> = (0..16)
        .map(|i| Comm::from(format!("worker{i}").as_str()))
        .collect();
    let mut i = 0u64;
    for d in 0..n {
        for _ in 0..1 + d % 3 {
            let sport = 10_000 + (i % 50_000) as u16;
            let comm = comms[(i % 16) as usize];
            let ts = i * 1_000;
            use TcpState::*;
            for (k, kind, sport, states) in [
                (0, Kind::State, 0, Some((Close, SynSent))),
                (1, Kind::State, sport, Some((SynSent, Established))),
                (2, Kind::Connect, sport, None),
            ] {
                let e = conn_event(i, ts + k, kind, sport, dest(d), states, comm);
                counters.on_event(&e);
                m.apply(&e);
            }
            i += 1;
        }
    }
    (m, counters, i * 1_000 + 10)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn bench_scrape(quick: bool) {
    let rounds = if quick { 3 } else { 5 };
    for n in [10u64, 1_000, 10_000, 100_000] {
        let (mut m, counters, mut now) = model_with(n);
        let mut exporter = Exporter::new(DEFAULT_TOP_K, env!("CARGO_PKG_VERSION"));
        let per_round = match n {
            10 => 200,
            1_000 => 100,
            10_000 => 20,
            _ if quick => 3,
            _ => 5,
        };
        // Per round: p50 and p99 of the scrapes, and of the snapshot alone just before.
        let (mut p50s, mut p99s, mut base50, mut base99, mut ratios) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut body, mut json) = (0, 0);
        for _ in 0..rounds {
            let mut snaps = Vec::with_capacity(per_round);
            for _ in 0..per_round {
                let t = Instant::now();
                black_box(m.snapshot(View::default()));
                snaps.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let mut scrapes = Vec::with_capacity(per_round);
            for _ in 0..per_round {
                // A second of event time between scrapes: retention and expiry run.
                now += 1_000_000_000;
                let t = Instant::now();
                let text = scrape(&mut m, &mut exporter, &counters, now);
                scrapes.push(t.elapsed().as_secs_f64() * 1e3);
                body = text.len();
            }
            let (s50, b50) = (percentile(&mut scrapes, 0.5), percentile(&mut snaps, 0.5));
            p50s.push(s50);
            p99s.push(percentile(&mut scrapes, 0.99));
            base50.push(b50);
            base99.push(percentile(&mut snaps, 0.99));
            ratios.push(s50 / b50);
        }
        json = json.max(serde_json::to_string(&m.snapshot(View::default())).map_or(0, |s| s.len()));
        let label = match n {
            10 => "10".to_owned(),
            n => format!("{}k", n / 1000),
        };
        let (p50, spread50) = median(p50s);
        let (p99, spread99) = median(p99s);
        let (b50, _) = median(base50);
        let (b99, _) = median(base99);
        let (ratio, _) = median(ratios);
        report(Figure {
            figure: &format!(
                "serve scrape (tick + snapshot + render) p50, {label} destinations ({per_round} scrapes x {rounds})"
            ),
            value: p50,
            unit: "ms",
            baseline: Some((b50, "full model snapshot alone (top --json's)")),
            target: "reported",
            pass: None,
            spread: spread50,
            paired_ratio: Some(ratio),
        });
        report(Figure {
            figure: &format!("serve scrape p99, {label} destinations"),
            value: p99,
            unit: "ms",
            baseline: Some((b99, "full model snapshot alone (top --json's)")),
            target: "< 100 ms",
            pass: Some(p99 < 100.0),
            spread: spread99,
            paired_ratio: None,
        });
        report(Figure {
            figure: &format!("serve /metrics body, {label} destinations (top K = 20)"),
            value: body as f64,
            unit: "B",
            baseline: Some((json as f64, "snapshot as JSON")),
            target: "<= 64 KiB (bounded by K)",
            pass: Some(body <= 64 * 1024),
            spread: 0.0,
            paired_ratio: None,
        });
    }
}

pub fn bench_churn(quick: bool) {
    // An hour of event time; every second `rate` connections, each to a destination
    // never seen before, opened and closed (leaving a TIME_WAIT for 60 s); a scrape
    // every 15 s, as Prometheus would, so destinations are pruned and retention expires.
    let rate: u64 = if quick { 100 } else { 300 };
    let before = LIVE.load(Ordering::Relaxed);
    let mut m = model();
    let mut counters = Counters::default();
    let mut exporter = Exporter::new(DEFAULT_TOP_K, env!("CARGO_PKG_VERSION"));
    let comm = Comm::from("churn");
    let mut at_minute = 0isize;
    let mut peak = 0isize;
    let mut i = 0u64;
    let t = Instant::now();
    for sec in 0..3600u64 {
        for j in 0..rate {
            let ts = sec * 1_000_000_000 + j * (1_000_000_000 / rate);
            let sport = 10_000 + (i % 50_000) as u16;
            use TcpState::*;
            for (k, kind, sport, states) in [
                (0, Kind::State, 0, Some((Close, SynSent))),
                (1, Kind::State, sport, Some((SynSent, Established))),
                (2, Kind::Connect, sport, None),
                (3, Kind::State, sport, Some((Established, FinWait1))),
                (4, Kind::State, sport, Some((FinWait1, FinWait2))),
                (5, Kind::State, sport, Some((FinWait2, Close))),
            ] {
                let e = conn_event(i, ts + k, kind, sport, dest(i), states, comm);
                counters.on_event(&e);
                m.apply(&e);
            }
            i += 1;
        }
        if (sec + 1) % 15 == 0 {
            black_box(scrape(
                &mut m,
                &mut exporter,
                &counters,
                (sec + 1) * 1_000_000_000,
            ));
            let live = LIVE.load(Ordering::Relaxed) - before;
            peak = peak.max(live);
            if sec + 1 == 60 {
                at_minute = live;
            }
        }
    }
    let end = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "serve churn: {i} connections to new destinations in {:.1} s; at the end {} destinations, {} in TIME_WAIT, peak heap {:.1} MiB",
        t.elapsed().as_secs_f64(),
        m.destination_count(),
        m.timewait_count(),
        peak as f64 / 1048576.0
    );
    let ratio = end as f64 / at_minute as f64;
    report(Figure {
        figure: &format!(
            "serve heap (model + exporter) after 1 h of churn, {rate} new destinations/s, scraped every 15 s"
        ),
        value: end as f64 / 1048576.0,
        unit: "MiB",
        baseline: Some((at_minute as f64 / 1048576.0, "heap after the first minute")),
        target: "<= 2x the first minute's",
        pass: Some(ratio <= 2.0),
        spread: 0.0,
        paired_ratio: None,
    });
    drop((m, exporter, counters));
}

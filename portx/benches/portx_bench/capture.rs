//! The capture format's figures: bytes per event against `trace --json` NDJSON,
//! encoding throughput on one core, the flight recorder's memory at its bound, and
//! `portx report` over a large recording against reading the same file.

use std::{
    hint::black_box, io::Write as _, process::Command, sync::atomic::Ordering, time::Instant,
};

use portx::{
    capture::{
        FORMAT_VERSION, FileHeader, Mode, Record,
        reader::Reader,
        ring::FlightRing,
        writer::{CaptureFile, Encoder},
    },
    events::{TraceEvent, filter::Filter},
    model::{
        NetnsConfig,
        input::{Input, NetnsState},
    },
    views::output::write_json_line,
};

use crate::{Figure, LIVE, NS, connection_events, median, report};

fn header() -> FileHeader {
    FileHeader {
        format_version: FORMAT_VERSION,
        portx_version: env!("CARGO_PKG_VERSION").into(),
        hostname: "bench".into(),
        kernel_release: "bench".into(),
        boot_id: "bench".into(),
        boot_to_wall_ns: 1_700_000_000_000_000_000,
        utc_offset_s: 0,
        started_ns: 0,
        recording_id: 1,
        file_seq: 0,
        mode: Mode::Record,
        hooks: Vec::new(),
        filter: Filter::default(),
        exact_timewait: false,
        command: Vec::new(),
    }
}

/// The start of a file, with the namespace's settings as a state.
fn file_start(enc: &mut Encoder) -> Vec<u8> {
    let mut b = Vec::new();
    enc.file_start(&header(), &mut b);
    enc.record(
        &Record::Input(Input::State(NetnsState {
            netns: NS,
            config: NetnsConfig {
                port_range: (1024, 65535),
                ..Default::default()
            },
            at_ns: 0,
            sockets: Vec::new(),
        })),
        &mut b,
    );
    b
}

/// Encodes `events` as the recorder does: a frame per `per_frame` events.
fn encode(enc: &mut Encoder, events: &[TraceEvent], per_frame: usize, out: &mut Vec<u8>) {
    for chunk in events.chunks(per_frame) {
        for e in chunk {
            enc.push_event(e);
        }
        enc.flush_events(out);
    }
}

/// The storm's events with the entropy real ones have: kernel socket addresses
/// scattered over the slab, timestamps a few microseconds apart with jitter, source
/// ports wherever the allocator found them (the synthetic sequence compresses far
/// better than anything the kernel produces).
fn realistic(mut events: Vec<TraceEvent>) -> Vec<TraceEvent> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut conn: Option<(u64, u64, u16)> = None;
    let mut ts = 0u64;
    let mut last_sock = u64::MAX;
    for e in &mut events {
        if e.sock != last_sock {
            last_sock = e.sock;
            let r = next();
            conn = Some((
                0xffff_8880_0000_0000 | ((r & 0x3fff_ffff) << 6),
                r >> 40,
                32768 + (r >> 20) as u16 % 28000,
            ));
        }
        let (sock, _, port) = conn.expect("set above");
        ts += 1_000 + next() % 20_000;
        e.ts_ns = ts;
        e.sock = sock;
        if e.sport != 0 {
            e.sport = port;
        }
    }
    events
}

pub fn bench_capture(quick: bool) {
    let events = realistic(connection_events(if quick { 20_000 } else { 100_000 }));
    // A storm's second is ~400k events; the recorder frames at most 65536 at once.
    let per_frame = 65536;

    // Bytes per event: the capture file against `portx trace --json` lines.
    let mut enc = Encoder::new();
    let mut file = file_start(&mut enc);
    let start = file.len();
    encode(&mut enc, &events, per_frame, &mut file);
    let capture_b = (file.len() - start) as f64 / events.len() as f64;
    let mut ndjson = Vec::new();
    for e in &events {
        let _ = write_json_line(&mut ndjson, e, None);
    }
    let ndjson_b = ndjson.len() as f64 / events.len() as f64;
    report(Figure {
        figure: "capture bytes per event (synthetic connect storm with scattered sockets, ports and times; 6 events per connection)",
        value: capture_b,
        unit: "B",
        baseline: Some((ndjson_b, "trace --json NDJSON")),
        target: "<= 16",
        pass: Some(capture_b <= 16.0),
        spread: 0.0,
        paired_ratio: None,
    });

    // Encoding throughput on one core, against writing the same events as NDJSON.
    let runs = if quick { 3 } else { 7 };
    let (mut enc_rates, mut json_rates, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut buf = Vec::with_capacity(ndjson.len());
        let t = Instant::now();
        for e in &events {
            let _ = write_json_line(&mut buf, e, None);
        }
        black_box(&buf);
        let json = events.len() as f64 / t.elapsed().as_secs_f64();
        let mut enc = Encoder::new();
        let mut out = Vec::with_capacity(file.len());
        let t = Instant::now();
        encode(&mut enc, &events, per_frame, &mut out);
        black_box(&out);
        let rate = events.len() as f64 / t.elapsed().as_secs_f64();
        enc_rates.push(rate);
        json_rates.push(json);
        paired.push(rate / json);
    }
    let (rate, _) = median(enc_rates);
    let (json, _) = median(json_rates);
    let (ratio, spread) = median(paired);
    report(Figure {
        figure: "capture encoding throughput, one core (framing + zstd)",
        value: rate,
        unit: "events/s",
        baseline: Some((json, "trace --json NDJSON writer")),
        target: "reported",
        pass: None,
        spread,
        paired_ratio: Some(ratio),
    });

    // The flight recorder's memory at its bound: feed it far more than it may keep.
    let bound = 8usize << 20;
    let heap_before = LIVE.load(Ordering::Relaxed);
    let mut ring = FlightRing::new(300_000_000_000, bound);
    let mut enc = Encoder::new();
    ring.start_generation(0, Vec::new());
    let mut peak_heap = 0isize;
    let mut peak_ring = 0usize;
    let mut fed = 0usize;
    let mut ts = 0u64;
    while fed < 8 * bound {
        let mut frames = Vec::new();
        encode(&mut enc, &events, per_frame, &mut frames);
        fed += frames.len();
        ts += 1_000_000_000;
        ring.push(frames, events.len() as u64, ts);
        if ring.newest_bytes() > bound / 4 {
            ring.start_generation(ts, file_start(&mut enc));
        }
        ring.evict(ts);
        peak_ring = peak_ring.max(ring.bytes());
        peak_heap = peak_heap.max(LIVE.load(Ordering::Relaxed) - heap_before);
    }
    let (evicted, _) = ring.evicted();
    report(Figure {
        figure: "flight recorder memory at its bound (8 MiB, fed 64 MiB of frames; heap growth)",
        value: peak_heap as f64 / (1 << 20) as f64,
        unit: "MiB",
        baseline: Some((bound as f64 / (1 << 20) as f64, "--buffer-mib")),
        target: "<= 1.5x the bound",
        pass: Some(peak_heap as f64 <= 1.5 * bound as f64 && evicted > 0),
        spread: 0.0,
        paired_ratio: None,
    });
    let _ = peak_ring;

    bench_report(quick, &events, per_frame);
}

/// `portx report` over a large recording, against iterating the same file's records.
fn bench_report(quick: bool, events: &[TraceEvent], per_frame: usize) {
    let target_bytes: u64 = if quick { 64 << 20 } else { 1 << 30 };
    let path = std::env::temp_dir().join(format!("portx-bench-{}.portx", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let Ok(mut f) = CaptureFile::create(&path, false) else {
        eprintln!(
            "skipping the report bench - cannot create {}",
            path.display()
        );
        return;
    };
    let mut enc = Encoder::new();
    let mut buf = file_start(&mut enc);
    let mut shifted: Vec<TraceEvent> = events.to_vec();
    let span = events.last().map_or(1, |e| e.ts_ns + 1);
    let mut total_events = 0u64;
    // Repeats the storm with time moving on and fresh socket addresses, as a long
    // recording would.
    let mut round = 0u64;
    while f.bytes() < target_bytes {
        for (e, o) in shifted.iter_mut().zip(events) {
            e.ts_ns = o.ts_ns + round * span;
            e.sock = o.sock + (round << 32);
        }
        encode(&mut enc, &shifted, per_frame, &mut buf);
        total_events += shifted.len() as u64;
        if f.write(&buf).is_err() {
            eprintln!(
                "skipping the report bench - cannot write {}",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            return;
        }
        buf.clear();
        round += 1;
    }
    let size = f.bytes();
    let _ = f.sync();
    let runs = if quick { 1 } else { 3 };
    let (mut read_s, mut report_s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let n = Reader::open(&path).map_or(0, |r| r.filter(Result::is_ok).count());
        black_box(n);
        read_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let ok = Command::new(env!("CARGO_BIN_EXE_portx"))
            .args(["report", "--json"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("portx report failed on the bench recording");
        }
        report_s.push(t.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_file(&path);
    let (rep, spread) = median(report_s);
    let (read, _) = median(read_s);
    let _ = std::io::stderr().flush();
    report(Figure {
        figure: &format!(
            "portx report --json over a {} MiB recording ({:.0}M events)",
            size >> 20,
            total_events as f64 / 1e6
        ),
        value: rep,
        unit: "s",
        baseline: Some((read, "reading its records alone")),
        target: "reported",
        pass: None,
        spread,
        paired_ratio: None,
    });
}

//! The report for people at a terminal: aligned, no colour.

use std::fmt::Write as _;

use super::{Completeness, FailureGroup, Report};
use crate::{model::snapshot::Holder, views::output::counted};

/// Task names and addresses are the recorded machine's: control characters would
/// move a terminal's cursor, so they are shown as `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn who(comm: &str, pid: u32) -> String {
    if pid == 0 {
        "(unknown)".to_owned()
    } else {
        format!("{}({pid})", clean(comm))
    }
}

/// `who`, and the workload when the cgroup was named: `curl(42) in pod shop/web (api)`.
fn who_in(comm: &str, pid: u32, w: Option<&crate::workload::Workload>) -> String {
    match w {
        Some(w) => format!("{} in {}", who(comm, pid), clean(&w.label())),
        None => who(comm, pid),
    }
}

fn hostport(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// One line on what the recording may be missing.
pub fn completeness_line(c: &Completeness) -> String {
    if c.ok {
        return "complete: no kernel drops, no evictions, no torn or corrupt files, no gaps"
            .to_owned();
    }
    let mut parts = Vec::new();
    if c.dropped > 0 {
        parts.push(format!("{} events dropped by the kernel", c.dropped));
    }
    if c.skipped_runs > 0 {
        parts.push(format!(
            "{} program runs skipped by the kernel",
            c.skipped_runs
        ));
    }
    if c.closes_missed > 0 {
        parts.push(format!(
            "{} that never reached portx (each found later and repaired)",
            counted(c.closes_missed, "close")
        ));
    }
    if c.evicted > 0 {
        parts.push(format!(
            "{} events evicted from the flight recorder's window",
            c.evicted
        ));
    }
    if !c.torn_tail.is_empty() {
        parts.push(format!(
            "torn tail in {} (read up to the cut)",
            c.torn_tail.join(", ")
        ));
    }
    for corrupt in &c.corrupt {
        parts.push(format!("corrupt: {corrupt} (read up to it)"));
    }
    for g in &c.gaps {
        parts.push(match g.missing {
            Some((a, b)) if a == b => format!("file {a} of the set missing"),
            Some((a, b)) => format!("files {a}-{b} of the set missing"),
            None => format!(
                "{:.1} s not recorded between files {} and {}",
                g.seconds,
                g.after_seq.map_or("-".to_owned(), |s| s.to_string()),
                g.before_seq
            ),
        });
    }
    if c.unknown_frames > 0 {
        parts.push(format!(
            "{} frames of unknown type skipped",
            c.unknown_frames
        ));
    }
    format!("INCOMPLETE: {}", parts.join("; "))
}

/// The failing call in a few words: `connect() to 127.0.0.1:9000` or `bind() of :3306`.
pub fn call(g: &FailureGroup) -> String {
    match g.sport {
        Some(port) => format!("bind() of port {port}"),
        None => format!("connect() to {}", hostport(&g.daddr, g.dport)),
    }
}

pub fn holder_line(h: &Holder) -> String {
    format!(
        "{} {} -> {} ({}{})",
        who_in(&h.comm, h.pid, h.workload.as_ref()),
        hostport(&h.saddr, h.sport),
        hostport(&h.daddr, h.dport),
        h.state,
        if h.ephemeral {
            ", ephemeral source port"
        } else {
            ""
        }
    )
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let files = r.files.len();
    let _ = writeln!(
        o,
        "portx report: {} (kernel {}, boot {})",
        clean(&r.host.hostname),
        clean(&r.host.kernel),
        clean(&r.host.boot_id)
    );
    let _ = writeln!(
        o,
        "{:<15}{} .. {} ({:.1} s), {} events, {files} file{}",
        "Span",
        r.span.start,
        r.span.end,
        r.span.seconds(),
        r.span.events,
        if files == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        o,
        "{:<15}{}",
        "Completeness",
        completeness_line(&r.complete)
    );
    match &r.trigger {
        Some(t) => {
            let _ = writeln!(
                o,
                "{:<15}{} {}: {}",
                "Trigger",
                t.at,
                clean(&t.spec),
                clean(&t.reason)
            );
        }
        None => {
            let _ = writeln!(o, "{:<15}none", "Trigger");
        }
    }
    match &r.first_failure {
        Some(f) => {
            let e = &f.failure.event;
            let _ = writeln!(
                o,
                "{:<15}{} {} by {}: {}",
                "First failure",
                f.at,
                e.event,
                who_in(&e.comm, e.pid, e.workload.as_ref()),
                e.error.as_deref().unwrap_or("error")
            );
            let _ = writeln!(o, "{:<15}{}", "", clean(&f.failure.explanation));
        }
        None => {
            let _ = writeln!(o, "{:<15}none", "First failure");
        }
    }
    o.push('\n');
    if r.failures.is_empty() {
        o.push_str("Failures: none\n");
    } else {
        let _ = writeln!(o, "Failures ({} groups)", r.failures.len());
        let _ = writeln!(
            o,
            "  {:>6}  {:<13} {:<14} {:<22} {:<30} {:<12}  LAST",
            "COUNT", "ERROR", "EVENT", "PROCESS", "CALL", "FIRST"
        );
        for g in &r.failures {
            let _ = writeln!(
                o,
                "  {:>6}  {:<13} {:<14} {:<22} {:<30} {:<12}  {}",
                g.count,
                g.error
                    .clone()
                    .unwrap_or_else(|| format!("errno {}", g.errno.unwrap_or(0))),
                g.event,
                who_in(&g.comm, g.pid, g.workload.as_ref()),
                call(g),
                time_of_day(&g.first),
                time_of_day(&g.last),
            );
            if let Some(h) = &g.holder {
                let _ = writeln!(o, "          held by {}", holder_line(h));
            }
            let _ = writeln!(o, "          {}", clean(&g.explanation));
        }
    }
    o.push('\n');
    if !r.diagnoses.is_empty() {
        o.push_str("Diagnoses (at the end of the recording)\n");
        for d in &r.diagnoses {
            let _ = writeln!(
                o,
                "  {:<8} {:<24} {}",
                d.severity,
                d.id,
                clean(&d.explanation)
            );
            let _ = writeln!(o, "           {:<24} {}", "", clean(&d.advice));
        }
        o.push('\n');
    }
    if r.destinations.is_empty() {
        o.push_str("Destinations: none used a source port\n");
    } else {
        o.push_str("Destinations (peak source ports used against capacity, busiest first)\n");
        for d in &r.destinations {
            let _ = writeln!(
                o,
                "  {} -> {}  netns {}",
                d.saddr,
                hostport(&d.daddr, d.dport),
                d.netns
            );
            let _ = writeln!(
                o,
                "    peak {:>6} of {:<6} ({:>3.0}%) at {}",
                d.peak_used,
                d.capacity,
                d.ratio() * 100.0,
                d.peak_at
            );
            let _ = writeln!(
                o,
                "    TIME_WAIT {:>6} at peak ({:.0}% of used)",
                d.timewait_at_peak,
                d.timewait_share * 100.0
            );
            for h in &d.holders_at_peak {
                let _ = writeln!(
                    o,
                    "    held by {:<24} {:>6} port{}",
                    who_in(&h.comm, h.pid, h.workload.as_deref()),
                    h.ports,
                    if h.ports == 1 { "" } else { "s" }
                );
            }
        }
    }
    // No trailing blanks from the padded last columns.
    let mut out: String = o.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

/// `12:00:02.000` of an RFC 3339 string (the date is in the span line).
fn time_of_day(rfc3339: &str) -> &str {
    rfc3339.get(11..23).unwrap_or(rfc3339)
}

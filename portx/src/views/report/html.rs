//! The report as one self-contained HTML page: inline CSS, inline SVG charts drawn
//! here (no scripts, fonts, styles or images from anywhere), readable on paper.
//! Every piece of recorded text goes through [`esc`]: task names are chosen by
//! whoever runs the task.

use std::fmt::Write as _;

use super::{DestinationReport, Report, Span, text};

/// Text made safe for HTML element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a; background: #fff; margin: 2em auto; max-width: 1100px; padding: 0 1em; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.2em; margin: 1.6em 0 .5em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; margin: 1.2em 0 .3em; font-family: ui-monospace, monospace; }
.meta { color: #444; margin: 0; }
.complete { padding: .5em .8em; border-left: 5px solid; margin: 1em 0; }
.complete.ok { border-color: #2e7d32; background: #eef7ee; }
.complete.bad { border-color: #c62828; background: #fdecea; }
table { border-collapse: collapse; width: 100%; margin: .4em 0; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e2e2e2; vertical-align: top; }
td.w { overflow-wrap: anywhere; }
th { background: #f4f4f4; }
td.t { white-space: nowrap; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, monospace; }
.expl { color: #333; font-size: .92em; }
.wl { color: #235; font-size: .9em; }
svg { width: 100%; height: auto; display: block; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
.axis { stroke: #888; stroke-width: 1; }
.grid { stroke: #e6e6e6; stroke-width: 1; }
.used { fill: none; stroke: #1565c0; stroke-width: 2; }
.tw { fill: none; stroke: #ef6c00; stroke-width: 1.5; stroke-dasharray: 5 3; }
.cap { stroke: #c62828; stroke-width: 1.5; stroke-dasharray: 8 4; }
.fail { stroke: #c62828; stroke-width: 1; opacity: .7; }
.failmark { fill: #c62828; }
.legend-used { fill: #1565c0; } .legend-tw { fill: #ef6c00; } .legend-cap { fill: #c62828; }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  .complete.ok, .complete.bad, th { background: none; }
  section.dest, table { break-inside: avoid; }
}
"#;

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let host = esc(&r.host.hostname);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>portx report: {host}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    );
    let _ = writeln!(o, "<header><h1>portx report: {host}</h1>");
    let _ = writeln!(
        o,
        "<p class=\"meta\">kernel <span class=\"mono\">{}</span>, boot <span class=\"mono\">{}</span></p>",
        esc(&r.host.kernel),
        esc(&r.host.boot_id)
    );
    let _ = writeln!(
        o,
        "<p class=\"meta\">{} to {} ({:.1} s), {} events, {} file(s)</p></header>",
        esc(&r.span.start),
        esc(&r.span.end),
        r.span.seconds(),
        r.span.events,
        r.files.len()
    );
    let _ = writeln!(
        o,
        "<p class=\"complete {}\">{}</p>",
        if r.complete.ok { "ok" } else { "bad" },
        esc(&text::completeness_line(&r.complete))
    );
    if let Some(t) = &r.trigger {
        let _ = writeln!(
            o,
            "<p><strong>Trigger</strong> {} <code>{}</code>: {}</p>",
            esc(&t.at),
            esc(&t.spec),
            esc(&t.reason)
        );
    }
    if let Some(f) = &r.first_failure {
        let e = &f.failure.event;
        let _ = writeln!(
            o,
            "<p><strong>First failure</strong> {}: {} by {}({}) failed with {}<br><span class=\"expl\">{}</span></p>",
            esc(&f.at),
            esc(&e.event),
            esc(&e.comm),
            e.pid,
            esc(e.error.as_deref().unwrap_or("an error")),
            esc(&f.failure.explanation)
        );
    }
    failures(&mut o, r);
    if !r.diagnoses.is_empty() {
        o.push_str("<h2>Diagnoses</h2>\n<table>\n<tr><th>severity</th><th>diagnosis</th><th>what was measured, and what to do</th></tr>\n");
        for d in &r.diagnoses {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td class=\"mono\">{}</td><td class=\"w\">{}<br><span class=\"expl\">{}</span></td></tr>",
                esc(&d.severity),
                esc(&d.id),
                esc(&d.explanation),
                esc(&d.advice)
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("<h2>Destinations</h2>\n");
    if r.destinations.is_empty() {
        o.push_str("<p>No source port was used toward any destination.</p>\n");
    }
    for d in &r.destinations {
        destination(&mut o, &r.span, d);
    }
    files(&mut o, r);
    o.push_str("</body>\n</html>\n");
    o
}

/// The workload under a process name, when the recording named it.
fn workload_cell(w: Option<&crate::workload::Workload>) -> String {
    w.map_or_else(String::new, |w| {
        format!("<br><span class=\"wl\">{}</span>", esc(&w.label()))
    })
}

fn failures(o: &mut String, r: &Report) {
    o.push_str("<h2>Failures</h2>\n");
    if r.failures.is_empty() {
        o.push_str("<p>No connect() or bind() failed.</p>\n");
        return;
    }
    o.push_str("<table>\n<tr><th>count</th><th>error</th><th>call</th><th>process</th><th>first</th><th>last</th><th>port held by</th></tr>\n");
    for g in &r.failures {
        let holder = g
            .holder
            .as_ref()
            .map_or(String::from("unknown"), |h| esc(&text::holder_line(h)));
        let _ = writeln!(
            o,
            "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}({}){}</td><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"w\">{}<br><span class=\"expl\">{}</span></td></tr>",
            g.count,
            esc(g.error.as_deref().unwrap_or("?")),
            esc(&text::call(g)),
            esc(&g.comm),
            g.pid,
            workload_cell(g.workload.as_ref()),
            // Date over time: keeps the table within the page.
            esc(&g.first).replacen('T', "<br>", 1),
            esc(&g.last).replacen('T', "<br>", 1),
            holder,
            esc(&g.explanation)
        );
    }
    o.push_str("</table>\n");
}

fn destination(o: &mut String, span: &Span, d: &DestinationReport) {
    let _ = writeln!(
        o,
        "<section class=\"dest\">\n<h3>{} &rarr; {}:{} <small>(netns {})</small></h3>",
        esc(&d.saddr),
        esc(&d.daddr),
        d.dport,
        d.netns
    );
    let _ = writeln!(
        o,
        "<p>Peak <strong>{} of {}</strong> source ports ({:.0}%) at {}; TIME_WAIT {} at the peak ({:.0}% of used).</p>",
        d.peak_used,
        d.capacity,
        d.ratio() * 100.0,
        esc(&d.peak_at),
        d.timewait_at_peak,
        d.timewait_share * 100.0
    );
    if d.series.is_some() {
        o.push_str(&chart(span, d));
    }
    if !d.holders_at_peak.is_empty() {
        o.push_str("<table>\n<tr><th>holders at the peak</th><th>pid</th><th>ports</th></tr>\n");
        for h in &d.holders_at_peak {
            let _ = writeln!(
                o,
                "<tr><td>{}{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&h.comm),
                workload_cell(h.workload.as_deref()),
                h.pid,
                h.ports
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("</section>\n");
}

fn files(o: &mut String, r: &Report) {
    o.push_str("<h2>Files</h2>\n<table>\n<tr><th>path</th><th>seq</th><th>frames</th><th>bytes</th><th>read</th></tr>\n");
    for f in &r.files {
        let read = match (&f.corrupt, f.torn_tail) {
            (Some(c), _) => format!("corrupt at {c}"),
            (None, Some(off)) => format!("torn tail at offset {off}"),
            (None, None) => "complete".to_owned(),
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"mono\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&f.path),
            f.seq.map_or("-".to_owned(), |s| s.to_string()),
            f.frames,
            f.bytes,
            esc(&read)
        );
    }
    o.push_str("</table>\n");
}

const W: f64 = 960.0;
const H: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;

/// Ports used (a step line) and TIME_WAIT over the span against the capacity line,
/// failures as red ticks, wall-clock (UTC) times on the x axis.
pub fn chart(span: &Span, d: &DestinationReport) -> String {
    let Some(series) = &d.series else {
        return String::new();
    };
    let (t0, t1) = (span.start_ns, span.end_ns.max(span.start_ns + 1));
    let x = |t: u64| LEFT + (t.clamp(t0, t1) - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT);
    let top_val = series
        .points
        .iter()
        .map(|p| p.used.max(p.time_wait))
        .max()
        .unwrap_or(0)
        .max(d.capacity)
        .max(1);
    let ymax = f64::from(top_val) * 1.1;
    let y = |v: u32| TOP + (1.0 - f64::from(v) / ymax) * (H - TOP - BOTTOM);
    let step = |val: fn(&super::Point) -> u32| {
        let mut pts = String::new();
        let mut prev: Option<f64> = None;
        for p in &series.points {
            let (px, py) = (x(p.t_ns), y(val(p)));
            if let Some(py0) = prev {
                let _ = write!(pts, "{px:.1},{py0:.1} ");
            }
            let _ = write!(pts, "{px:.1},{py:.1} ");
            prev = Some(py);
        }
        if let Some(py) = prev {
            let _ = write!(pts, "{:.1},{py:.1}", x(t1));
        }
        pts
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"source ports used toward {}:{} over time\">",
        esc(&d.daddr),
        d.dport
    );
    let (bottom, right) = (H - BOTTOM, W - RIGHT);
    // Horizontal grid and y labels: 0, half, the capacity.
    let mut ticks = vec![0, top_val / 2, d.capacity];
    ticks.dedup();
    for v in ticks {
        let _ = writeln!(
            s,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{yv:.1}\" x2=\"{right}\" y2=\"{yv:.1}\"/><text x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{v}</text>",
            yv = y(v),
            lx = LEFT - 6.0,
            ty = y(v) + 4.0
        );
    }
    // Time axis: five labels.
    for i in 0..=4u64 {
        let t = t0 + (t1 - t0) * i / 4;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{xv:.1}\" y1=\"{bottom}\" x2=\"{xv:.1}\" y2=\"{tb}\"/><text x=\"{xv:.1}\" y=\"{ty}\" text-anchor=\"{anchor}\">{}</text>",
            esc(&span.hms(t)),
            xv = x(t),
            tb = bottom + 5.0,
            ty = bottom + 20.0
        );
    }
    let _ = writeln!(
        s,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\"/><line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time (UTC)</text>",
        (LEFT + right) / 2.0,
        H - 6.0
    );
    let _ = writeln!(
        s,
        "<line class=\"cap\" x1=\"{LEFT}\" y1=\"{cy:.1}\" x2=\"{right}\" y2=\"{cy:.1}\"/>",
        cy = y(d.capacity)
    );
    for &t in &series.failures {
        let _ = writeln!(
            s,
            "<line class=\"fail\" x1=\"{xv:.1}\" y1=\"{TOP}\" x2=\"{xv:.1}\" y2=\"{bottom}\"><title>failure at {}</title></line><circle class=\"failmark\" cx=\"{xv:.1}\" cy=\"{TOP}\" r=\"3.5\"/>",
            esc(&span.wall(t)),
            xv = x(t)
        );
    }
    let _ = writeln!(
        s,
        "<polyline class=\"tw\" points=\"{}\"/>",
        step(|p| p.time_wait)
    );
    let _ = writeln!(
        s,
        "<polyline class=\"used\" points=\"{}\"/>",
        step(|p| p.used)
    );
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"16\"><tspan class=\"legend-used\">&#9632; ports used</tspan>  <tspan class=\"legend-tw\" dx=\"12\">&#9632; TIME_WAIT</tspan>  <tspan class=\"legend-cap\" dx=\"12\">&#9632; capacity {}</tspan>  <tspan class=\"legend-cap\" dx=\"12\">&#9679; failure</tspan></text>",
        d.capacity
    );
    s.push_str("</svg>\n");
    s
}

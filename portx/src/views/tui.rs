//! The terminal UI of `portx top`: which destination is running out of source ports,
//! how fast, and who takes them.
//!
//! Everything but [`run_terminal`] is pure: [`on_key`] only changes a [`TopState`],
//! [`draw`] only renders a [`Snapshot`], and the row building, sorting and filtering
//! behind both are small functions tested on their own.

use std::cell::Cell;
use std::cmp::Ordering;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures_util::StreamExt as _;
use ratatui::Frame;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell as TableCell, Paragraph, Row, Table};

use crate::views::output::{Clock, counted};
use crate::{
    model::snapshot::{Failure, NetnsUsage, Snapshot, WorkloadProcess},
    workload::Workload,
};

/// Redraws are at most this frequent, so a flood of snapshots or keys cannot starve
/// key handling.
const FRAME: Duration = Duration::from_millis(100);
/// Failure lines shown at most in the failures panel.
const MAX_FAILURE_LINES: usize = 6;
/// Diagnoses shown at most (two lines each: what was measured, what to do).
const MAX_DIAGNOSES: usize = 3;
/// Processes named at most in one workload row.
const MAX_WORKLOAD_MEMBERS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Destinations,
    Processes,
    /// Pods, containers and units.
    Workloads,
}

impl View {
    fn next(self) -> Self {
        match self {
            Self::Destinations => Self::Processes,
            Self::Processes => Self::Workloads,
            Self::Workloads => Self::Destinations,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Destinations => "destinations",
            Self::Processes => "processes",
            Self::Workloads => "workloads",
        }
    }
}

/// Sort order of the destinations view; each key's natural order puts the most urgent
/// row first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestSort {
    /// Share of the capacity used, highest first.
    Percent,
    Used,
    Rate,
    /// Soonest exhaustion first; destinations that are not growing last.
    Eta,
    TimeWait,
}

impl DestSort {
    fn next(self) -> Self {
        match self {
            Self::Percent => Self::Used,
            Self::Used => Self::Rate,
            Self::Rate => Self::Eta,
            Self::Eta => Self::TimeWait,
            Self::TimeWait => Self::Percent,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Percent => "% used",
            Self::Used => "used",
            Self::Rate => "rate",
            Self::Eta => "eta",
            Self::TimeWait => "time_wait",
        }
    }

    /// Index of the sorted column in [`DEST_COLUMNS`].
    fn column(self) -> usize {
        match self {
            Self::Percent => 3,
            Self::Used => 2,
            Self::Rate => 9,
            Self::Eta => 10,
            Self::TimeWait => 6,
        }
    }
}

/// Sort order of the processes and workloads views (`Pid` orders workloads by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcSort {
    /// Most ports first.
    Ports,
    Pid,
    Comm,
}

impl ProcSort {
    fn next(self) -> Self {
        match self {
            Self::Ports => Self::Pid,
            Self::Pid => Self::Comm,
            Self::Comm => Self::Ports,
        }
    }

    fn name(self, view: View) -> &'static str {
        match (self, view) {
            (Self::Ports, _) => "ports",
            (Self::Pid, View::Workloads) => "name",
            (Self::Pid, _) => "pid",
            (Self::Comm, _) => "comm",
        }
    }

    fn column(self, view: View) -> usize {
        match (self, view) {
            (Self::Ports, View::Workloads) => 2,
            (Self::Pid, View::Workloads) => 0,
            (Self::Comm, View::Workloads) => 4,
            (Self::Ports, _) => 4,
            (Self::Pid, _) => 1,
            (Self::Comm, _) => 2,
        }
    }
}

/// What the user chose: view, sort, filter, scroll position.
#[derive(Clone, Debug)]
pub struct TopState {
    pub view: View,
    pub dest_sort: DestSort,
    /// Used by the processes and workloads views.
    pub proc_sort: ProcSort,
    pub reversed: bool,
    /// Applied filter: case-insensitive substring; empty keeps everything.
    pub filter: String,
    /// The filter being typed after `/`, not applied yet.
    pub editing: Option<String>,
    /// Index of the first table row shown.
    pub scroll: usize,
    /// Rows and visible table lines at the last draw, so that scrolling keys can stop
    /// at the end (the only thing [`draw`] records).
    last_rows: Cell<usize>,
    last_page: Cell<usize>,
}

impl TopState {
    pub fn new(view: View) -> Self {
        Self {
            view,
            dest_sort: DestSort::Percent,
            proc_sort: ProcSort::Ports,
            reversed: false,
            filter: String::new(),
            editing: None,
            scroll: 0,
            last_rows: Cell::new(0),
            last_page: Cell::new(0),
        }
    }

    fn max_scroll(&self) -> usize {
        self.last_rows.get().saturating_sub(self.last_page.get())
    }

    fn sort_name(&self) -> &'static str {
        match self.view {
            View::Destinations => self.dest_sort.name(),
            View::Processes | View::Workloads => self.proc_sort.name(self.view),
        }
    }

    fn sort_column(&self) -> usize {
        match self.view {
            View::Destinations => self.dest_sort.column(),
            View::Processes | View::Workloads => self.proc_sort.column(self.view),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Nothing changed.
    Continue,
    /// The state changed: draw again.
    Redraw,
    Quit,
}

/// Applies one key to the state. Pure apart from the state.
pub fn on_key(state: &mut TopState, key: KeyEvent) -> KeyOutcome {
    // Terminals that report releases would otherwise apply every key twice.
    if key.kind == KeyEventKind::Release {
        return KeyOutcome::Continue;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return KeyOutcome::Quit;
    }
    if let Some(buf) = state.editing.as_mut() {
        match key.code {
            KeyCode::Enter => {
                state.filter = buf.trim().to_owned();
                state.editing = None;
                state.scroll = 0;
            }
            KeyCode::Esc => state.editing = None,
            KeyCode::Backspace => {
                buf.pop();
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => buf.push(c),
            _ => return KeyOutcome::Continue,
        }
        return KeyOutcome::Redraw;
    }
    let page = state.last_page.get().max(1);
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => return KeyOutcome::Quit,
        KeyCode::Char('d') => set_view(state, View::Destinations),
        KeyCode::Char('p') => set_view(state, View::Processes),
        KeyCode::Char('w' | 'c') => set_view(state, View::Workloads),
        KeyCode::Tab => set_view(state, state.view.next()),
        KeyCode::Char('s') => {
            match state.view {
                View::Destinations => state.dest_sort = state.dest_sort.next(),
                View::Processes | View::Workloads => state.proc_sort = state.proc_sort.next(),
            }
            state.scroll = 0;
        }
        KeyCode::Char('r') => {
            state.reversed = !state.reversed;
            state.scroll = 0;
        }
        // Starts from the applied filter so it can be edited; Enter on an empty line clears it.
        KeyCode::Char('/') => state.editing = Some(state.filter.clone()),
        KeyCode::Up => state.scroll = state.scroll.saturating_sub(1),
        KeyCode::Down => state.scroll = (state.scroll + 1).min(state.max_scroll()),
        KeyCode::PageUp => state.scroll = state.scroll.saturating_sub(page),
        KeyCode::PageDown => state.scroll = (state.scroll + page).min(state.max_scroll()),
        KeyCode::Home => state.scroll = 0,
        KeyCode::End => state.scroll = state.max_scroll(),
        _ => return KeyOutcome::Continue,
    }
    KeyOutcome::Redraw
}

fn set_view(state: &mut TopState, view: View) {
    state.view = view;
    state.scroll = 0;
}

// ---------------------------------------------------------------------------------
// Rows: what each view shows, sorted and filtered. Pure.

struct Column {
    title: &'static str,
    width: Constraint,
    right: bool,
}

const fn col(title: &'static str, width: Constraint, right: bool) -> Column {
    Column {
        title,
        width,
        right,
    }
}

const DEST_COLUMNS: [Column; 12] = [
    col("NETNS", Constraint::Length(10), false),
    col("DEST", Constraint::Min(21), false),
    col("USED/CAPACITY", Constraint::Length(13), true),
    col("%", Constraint::Length(4), true),
    col("ESTAB", Constraint::Length(6), true),
    col("SYN_SENT", Constraint::Length(8), true),
    col("TIME_WAIT", Constraint::Length(9), true),
    col("REUSE", Constraint::Length(6), true),
    col("OTHER", Constraint::Length(6), true),
    col("RATE/s", Constraint::Length(7), true),
    col("ETA", Constraint::Length(5), true),
    col("TOP OWNER", Constraint::Min(16), false),
];

const PROC_COLUMNS: [Column; 5] = [
    col("NETNS", Constraint::Length(10), false),
    col("PID", Constraint::Length(8), true),
    col("COMM", Constraint::Min(16), false),
    col("WORKLOAD", Constraint::Min(16), false),
    col("PORTS", Constraint::Length(7), true),
];

const WORKLOAD_COLUMNS: [Column; 5] = [
    col("WORKLOAD", Constraint::Min(24), false),
    col("KIND", Constraint::Length(9), false),
    col("PORTS", Constraint::Length(7), true),
    col("PROCS", Constraint::Length(5), true),
    col("PROCESSES", Constraint::Min(20), false),
];

fn columns(view: View) -> &'static [Column] {
    match view {
        View::Destinations => &DEST_COLUMNS,
        View::Processes => &PROC_COLUMNS,
        View::Workloads => &WORKLOAD_COLUMNS,
    }
}

/// How close a destination is to running out, for colouring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Critical,
}

#[derive(Clone, Debug, PartialEq)]
struct DestRow {
    netns: String,
    dest: String,
    used: u32,
    capacity: u32,
    established: u64,
    syn_sent: u64,
    time_wait: u64,
    other: u64,
    rate_per_s: f64,
    eta_s: Option<f64>,
    /// TIME_WAIT ports the kernel hands back to connect() (tcp_tw_reuse).
    reusable: u64,
    /// The clients level off below capacity (steady state): ETA says never.
    never: bool,
    top_owner: String,
    /// Text the filter looks at besides the shown columns (netns inode, owners).
    search: String,
}

impl DestRow {
    /// `used / capacity`; `None` when the capacity is unknown (0).
    fn ratio(&self) -> Option<f64> {
        (self.capacity > 0).then(|| f64::from(self.used) / f64::from(self.capacity))
    }

    /// Colour by what is held and not handed back: reusable TIME_WAIT is no limit.
    fn level(&self) -> Level {
        // Integer comparisons, so that exactly 90% is critical whatever the rounding.
        let (used, cap) = (
            u64::from(self.used).saturating_sub(self.reusable),
            u64::from(self.capacity),
        );
        if cap == 0 {
            Level::Ok
        } else if used * 100 >= cap * 90 {
            Level::Critical
        } else if used * 100 >= cap * 70 {
            Level::Warn
        } else {
            Level::Ok
        }
    }

    fn percent(&self) -> String {
        match self.capacity {
            0 => "-".to_owned(),
            // Rounded down, so 89.9% does not read as 90%.
            cap => format!("{}%", u64::from(self.used) * 100 / u64::from(cap)),
        }
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.netns.clone(),
            self.dest.clone(),
            format!("{}/{}", self.used, self.capacity),
            self.percent(),
            self.established.to_string(),
            self.syn_sent.to_string(),
            self.time_wait.to_string(),
            self.reusable.to_string(),
            self.other.to_string(),
            format!("{:.1}", self.rate_per_s),
            if self.never && self.eta_s.is_none() {
                "never".to_owned()
            } else {
                eta_human(self.eta_s)
            },
            self.top_owner.clone(),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProcRow {
    netns: String,
    netns_inode: u32,
    pid: u32,
    comm: String,
    /// The workload's label, or the cgroup id when it has no name.
    workload: String,
    ports: u32,
}

impl ProcRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.netns.clone(),
            self.pid.to_string(),
            self.comm.clone(),
            self.workload.clone(),
            self.ports.to_string(),
        ]
    }
}

/// `pod shop/web (api)`, or `cgroup 1234` when the cgroup could not be named.
fn workload_label(w: Option<&Workload>, cgroup_id: u64) -> String {
    w.map_or_else(|| format!("cgroup {cgroup_id}"), Workload::label)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct WorkloadRow {
    label: String,
    kind: &'static str,
    ports: u64,
    /// Most ports first.
    members: Vec<WorkloadProcess>,
    /// Text the filter looks at besides the shown columns (cgroup paths, ids).
    search: String,
}

impl WorkloadRow {
    fn cells(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members
            .iter()
            .take(MAX_WORKLOAD_MEMBERS)
            .map(|p| match &p.container {
                Some(c) => format!("{}({}) [{c}] {}", p.comm, p.pid, p.ports),
                None => format!("{}({}) {}", p.comm, p.pid, p.ports),
            })
            .collect();
        if self.members.len() > MAX_WORKLOAD_MEMBERS {
            names.push(format!(
                "+{} more",
                self.members.len() - MAX_WORKLOAD_MEMBERS
            ));
        }
        vec![
            self.label.clone(),
            self.kind.to_owned(),
            self.ports.to_string(),
            self.members.len().to_string(),
            names.join(", "),
        ]
    }

    /// The first member's name, for sorting by comm.
    fn first_comm(&self) -> &str {
        self.members.first().map_or("", |p| p.comm.as_str())
    }
}

/// `ip netns` name, else the namespace inode.
fn netns_label(ns: &NetnsUsage) -> String {
    match &ns.name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => ns.inode.to_string(),
    }
}

/// `addr:port`, with IPv6 addresses in brackets.
fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn who(comm: &str, pid: u32) -> String {
    let comm = if comm.is_empty() { "?" } else { comm };
    format!("{comm}({pid})")
}

/// Time until exhaustion in the largest whole unit: "45s", "12m", "2h", "3d"; "-" when
/// there is none (not growing, or nonsense such as NaN or a negative value).
fn eta_human(eta_s: Option<f64>) -> String {
    let Some(s) = eta_s.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".to_owned();
    };
    // Rounded down: an ETA should not promise more time than there is.
    let secs = s as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Case-insensitive substring match of an already lowercased needle.
fn matches(needle: &str, fields: &[&str]) -> bool {
    needle.is_empty() || fields.iter().any(|f| f.to_lowercase().contains(needle))
}

fn ordered(o: Ordering, reversed: bool) -> Ordering {
    if reversed { o.reverse() } else { o }
}

fn dest_rows(snap: &Snapshot, state: &TopState) -> Vec<DestRow> {
    let needle = state.filter.to_lowercase();
    let mut rows = Vec::new();
    for ns in &snap.netns {
        let netns = netns_label(ns);
        let inode = ns.inode.to_string();
        for d in &ns.destinations {
            let state_count = |name: &str| u64::from(d.states.get(name).copied().unwrap_or(0));
            let other = d
                .states
                .iter()
                .filter(|(k, _)| !matches!(k.as_ref(), "ESTABLISHED" | "SYN_SENT" | "TIME_WAIT"))
                .map(|(_, v)| u64::from(*v))
                .sum();
            // The model lists owners most ports first; do not rely on it.
            let top = d.owners.iter().max_by_key(|o| o.ports);
            let search: Vec<String> = d
                .owners
                .iter()
                .map(|o| match &o.workload {
                    Some(w) => format!("{} {} {}", o.comm, o.pid, w.label()),
                    None => format!("{} {}", o.comm, o.pid),
                })
                .collect();
            let row = DestRow {
                netns: netns.clone(),
                dest: endpoint(&d.daddr, d.dport),
                used: d.used,
                capacity: d.capacity,
                established: state_count("ESTABLISHED"),
                syn_sent: state_count("SYN_SENT"),
                time_wait: state_count("TIME_WAIT"),
                other,
                rate_per_s: if d.rate_per_s.is_finite() {
                    d.rate_per_s
                } else {
                    0.0
                },
                eta_s: d.eta_s.filter(|s| s.is_finite() && *s >= 0.0),
                reusable: u64::from(d.reusable),
                never: d.steady_state.is_some_and(|s| s < f64::from(d.capacity)),
                top_owner: top.map_or_else(
                    || "-".to_owned(),
                    |o| match o.workload.as_deref().filter(|w| w.is_container()) {
                        Some(w) => format!("{} {} {}", w.label(), who(&o.comm, o.pid), o.ports),
                        None => format!("{} {}", who(&o.comm, o.pid), o.ports),
                    },
                ),
                search: format!("{inode} {}", search.join(" ")),
            };
            if matches(&needle, &[&row.netns, &row.dest, &row.search]) {
                rows.push(row);
            }
        }
    }
    let key = state.dest_sort;
    rows.sort_by(|a, b| {
        let primary = match key {
            DestSort::Percent => cmp_ratio(b.ratio(), a.ratio()),
            DestSort::Used => b.used.cmp(&a.used),
            DestSort::Rate => b.rate_per_s.total_cmp(&a.rate_per_s),
            DestSort::Eta => match (a.eta_s, b.eta_s) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
            DestSort::TimeWait => b.time_wait.cmp(&a.time_wait),
        };
        // Ties: busiest, then a stable order so rows do not jump between frames.
        let o = primary
            .then_with(|| b.used.cmp(&a.used))
            .then_with(|| a.netns.cmp(&b.netns))
            .then_with(|| a.dest.cmp(&b.dest));
        ordered(o, state.reversed)
    });
    rows
}

/// Higher ratio first is done by the caller swapping arguments; unknown is lowest.
fn cmp_ratio(a: Option<f64>, b: Option<f64>) -> Ordering {
    a.unwrap_or(-1.0).total_cmp(&b.unwrap_or(-1.0))
}

fn all_proc_rows(snap: &Snapshot) -> Vec<ProcRow> {
    snap.netns
        .iter()
        .flat_map(|ns| {
            let netns = netns_label(ns);
            ns.processes.iter().map(move |p| ProcRow {
                netns: netns.clone(),
                netns_inode: ns.inode,
                pid: p.pid,
                comm: p.comm.clone(),
                workload: workload_label(p.workload.as_ref(), p.cgroup_id),
                ports: p.ports,
            })
        })
        .collect()
}

fn proc_matches(needle: &str, p: &ProcRow) -> bool {
    matches(
        needle,
        &[
            &p.netns,
            &p.netns_inode.to_string(),
            &p.pid.to_string(),
            &p.comm,
            &p.workload,
        ],
    )
}

fn proc_rows(snap: &Snapshot, state: &TopState) -> Vec<ProcRow> {
    let needle = state.filter.to_lowercase();
    let mut rows: Vec<ProcRow> = all_proc_rows(snap)
        .into_iter()
        .filter(|p| proc_matches(&needle, p))
        .collect();
    rows.sort_by(|a, b| {
        let o = match state.proc_sort {
            ProcSort::Ports => b.ports.cmp(&a.ports),
            ProcSort::Pid => a.pid.cmp(&b.pid),
            ProcSort::Comm => a.comm.cmp(&b.comm),
        }
        .then_with(|| b.ports.cmp(&a.ports))
        .then_with(|| a.pid.cmp(&b.pid))
        .then_with(|| a.netns_inode.cmp(&b.netns_inode));
        ordered(o, state.reversed)
    });
    rows
}

/// Ports summed per workload across all processes and namespaces (a pod's
/// containers together). A workload is kept when its name, a cgroup path or any of
/// its processes matches the filter; its sums stay whole.
fn workload_rows(snap: &Snapshot, state: &TopState) -> Vec<WorkloadRow> {
    let needle = state.filter.to_lowercase();
    let mut rows: Vec<WorkloadRow> = crate::workload::annotate::workloads(snap)
        .into_iter()
        .map(|u| WorkloadRow {
            label: u.workload.label(),
            kind: u.workload.kind.as_str(),
            ports: u.ports,
            search: u.cgroups.join(" "),
            members: u.processes,
        })
        .filter(|r| {
            matches(&needle, &[&r.label, r.kind, &r.search])
                || r.members.iter().any(|p| {
                    matches(
                        &needle,
                        &[&p.comm, &p.pid.to_string(), &p.netns.to_string()],
                    )
                })
        })
        .collect();
    rows.sort_by(|a, b| {
        let o = match state.proc_sort {
            ProcSort::Ports => b.ports.cmp(&a.ports),
            ProcSort::Pid => a.label.cmp(&b.label),
            ProcSort::Comm => a.first_comm().cmp(b.first_comm()),
        }
        .then_with(|| b.ports.cmp(&a.ports))
        .then_with(|| a.label.cmp(&b.label));
        ordered(o, state.reversed)
    });
    rows
}

/// The rows of the state's view as text cells, with the colour level of each row.
fn view_cells(snap: &Snapshot, state: &TopState) -> Vec<(Vec<String>, Level)> {
    match state.view {
        View::Destinations => dest_rows(snap, state)
            .into_iter()
            .map(|r| (r.cells(), r.level()))
            .collect(),
        View::Processes => proc_rows(snap, state)
            .into_iter()
            .map(|r| (r.cells(), Level::Ok))
            .collect(),
        View::Workloads => workload_rows(snap, state)
            .into_iter()
            .map(|r| (r.cells(), Level::Ok))
            .collect(),
    }
}

/// Parts of one failure line, kept apart so the TUI can colour them.
struct FailureText {
    what: String,
    /// ` x37 (first 12:00:01, last 12:03:10)` for a repeated failure, else empty.
    repeats: String,
    holder: Option<String>,
    explanation: String,
}

/// `HH:MM:SS` local time of a boot-time timestamp.
fn hms(clock: &Clock, boot_ns: u64) -> String {
    let mut t = clock.time_of_day(boot_ns);
    t.truncate("HH:MM:SS".len());
    t
}

/// ` in pod shop/web (api)` when the cgroup was named.
fn in_workload(w: Option<&Workload>) -> String {
    w.map_or_else(String::new, |w| format!(" in {}", w.label()))
}

fn failure_text(f: &Failure, clock: &Clock) -> FailureText {
    let e = &f.event;
    let error = match (&e.error, e.errno) {
        (Some(name), _) => name.clone(),
        (None, Some(n)) => format!("errno {n}"),
        (None, None) => "-".to_owned(),
    };
    // A bind asks for a local address; a connect for a remote one.
    let requested = if e.event.starts_with("bind") {
        endpoint(&e.saddr, e.sport)
    } else {
        endpoint(&e.daddr, e.dport)
    };
    let holder = f.holder.as_ref().map(|h| {
        let ephemeral = if h.ephemeral { " ephemeral" } else { "" };
        format!(
            "held by {}{} {}{ephemeral}",
            who(&h.comm, h.pid),
            in_workload(h.workload.as_ref()),
            h.state
        )
    });
    let repeats = if f.count > 1 {
        format!(
            " x{} (first {}, last {})",
            f.count,
            hms(clock, f.first_ts_ns),
            hms(clock, f.last_ts_ns)
        )
    } else {
        String::new()
    };
    FailureText {
        what: format!(
            "{} {error} {requested} by {}{}",
            e.event,
            who(&e.comm, e.pid),
            in_workload(e.workload.as_ref())
        ),
        repeats,
        holder,
        explanation: f.explanation.clone(),
    }
}

fn failure_line(f: &Failure, clock: &Clock) -> String {
    let t = failure_text(f, clock);
    let mut line = t.what;
    line.push_str(&t.repeats);
    if let Some(h) = t.holder {
        line.push_str(", ");
        line.push_str(&h);
    }
    if !t.explanation.is_empty() {
        line.push_str(": ");
        line.push_str(&t.explanation);
    }
    line
}

/// Plain-text table for when stdout is not a terminal (`portx top` piped): one header
/// line, one row per destination (or process/cgroup per view), same columns as the TUI,
/// no colours, then one line per recent failure (newest first, `failure: ` prefix;
/// `clock` turns the times of repeated ones into local time of day).
pub fn plain_table(snap: &Snapshot, view: View, clock: &Clock) -> String {
    let state = TopState::new(view);
    let cols = columns(view);
    let rows: Vec<Vec<String>> = view_cells(snap, &state)
        .into_iter()
        .map(|(cells, _)| cells)
        .collect();
    let mut widths: Vec<usize> = cols.iter().map(|c| c.title.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = cols.iter().map(|c| c.title.to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, ((cell, c), w)) in row.iter().zip(cols).zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if c.right {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        // Said, so that an empty table does not read as a failure to print one.
        out.push_str("(no outgoing connections)\n");
    }
    for d in &snap.diagnoses {
        out.push_str("diagnosis: ");
        out.push_str(&diagnosis_line(d));
        out.push('\n');
    }
    for f in snap.failures.iter().rev() {
        out.push_str("failure: ");
        out.push_str(&failure_line(f, clock));
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------
// Rendering. Pure apart from recording the table's size in the state.

/// Renders the snapshot as the state asks: header, table, recent failures, key help.
/// `clock` converts the snapshot's boot-time stamps to local time of day.
pub fn draw(frame: &mut Frame, snap: &Snapshot, state: &TopState, clock: &Clock) {
    let area = frame.area();
    let shown_failures = snap.failures.len().min(MAX_FAILURE_LINES);
    // Borders plus at least one line, so "no failures" has a place too.
    let failures_height = shown_failures.max(1) as u16 + 2;
    // No panel while nothing is diagnosed: the table keeps the room.
    let diagnoses_height = match snap.diagnoses.len().min(MAX_DIAGNOSES) {
        0 => 0,
        n => 2 * n as u16 + 2,
    };
    let [header, table, diagnoses, failures, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(diagnoses_height),
        Constraint::Length(failures_height),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, snap, state);
    draw_table(frame, table, snap, state);
    if diagnoses_height > 0 {
        draw_diagnoses(frame, diagnoses, snap);
    }
    draw_failures(frame, failures, snap, clock);
    draw_footer(frame, footer, state);
}

fn draw_header(frame: &mut Frame, area: Rect, snap: &Snapshot, state: &TopState) {
    let dests: usize = snap.netns.iter().map(|ns| ns.destinations.len()).sum();
    let dropped_style = if snap.dropped_events > 0 || snap.skipped_runs > 0 {
        Style::new()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::new().add_modifier(Modifier::DIM)
    };
    let mut spans = vec![
        Span::styled("portx top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  {} netns  {dests} dests  ", snap.netns.len())),
        Span::styled(
            if snap.skipped_runs > 0 {
                format!(
                    " dropped {} +{} skipped runs ",
                    snap.dropped_events, snap.skipped_runs
                )
            } else {
                format!(" dropped {} ", snap.dropped_events)
            },
            dropped_style,
        ),
        Span::raw(format!(
            "  drift {} checks +{} -{}{}  view {}  sort {}{}",
            snap.drift.checks,
            snap.drift.added,
            snap.drift.removed,
            // Only when some were: a close that never came is rare, and worth a look.
            match snap.drift.closes_missed {
                0 => String::new(),
                n => format!(" ({} missed)", counted(n, "close")),
            },
            state.view.name(),
            state.sort_name(),
            if state.reversed { " (reversed)" } else { "" },
        )),
    ];
    if !snap.hooks.is_empty() {
        spans.push(Span::raw(format!("  hooks {}", hook_summary(&snap.hooks))));
    }
    if !state.filter.is_empty() {
        spans.push(Span::raw("  filter "));
        spans.push(Span::styled(
            format!("'{}'", state.filter),
            Style::new().fg(Color::Cyan),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// `state:tp_btf connect:fexit ...`: the kind of attach point serving each need
/// (`portx top -v` and `portx trace -v` give the full names and the reasons).
fn hook_summary(hooks: &[crate::kernel::loader::HookPath]) -> String {
    hooks
        .iter()
        .map(|h| format!("{}:{}", h.hook, h.kind()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn level_style(level: Level) -> Style {
    match level {
        Level::Ok => Style::new(),
        Level::Warn => Style::new().fg(Color::Yellow),
        Level::Critical => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn aligned(text: String, right: bool) -> Line<'static> {
    let line = Line::from(text);
    if right {
        line.alignment(Alignment::Right)
    } else {
        line
    }
}

fn draw_table(frame: &mut Frame, area: Rect, snap: &Snapshot, state: &TopState) {
    let cols = columns(state.view);
    let rows = view_cells(snap, state);
    // Borders and the column header take three lines.
    let page = usize::from(area.height.saturating_sub(3));
    state.last_rows.set(rows.len());
    state.last_page.set(page);
    // The data may have shrunk since the last key: never scroll past the end.
    let offset = state.scroll.min(rows.len().saturating_sub(page));
    let end = (offset + page).min(rows.len());

    let sorted = state.sort_column();
    let header = Row::new(cols.iter().enumerate().map(|(i, c)| {
        let style = if i == sorted {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        TableCell::from(aligned(c.title.to_owned(), c.right)).style(style)
    }));
    let body = rows[offset..end].iter().map(|(cells, level)| {
        Row::new(cells.iter().zip(cols).enumerate().map(|(i, (text, c))| {
            let cell = TableCell::from(aligned(text.clone(), c.right));
            // The % column carries the colour; a critical destination's name too.
            match (state.view, i) {
                (View::Destinations, 3) => cell.style(level_style(*level)),
                (View::Destinations, 1) if *level == Level::Critical => {
                    cell.style(level_style(*level))
                }
                _ => cell,
            }
        }))
    });
    let title = if rows.is_empty() {
        if state.filter.is_empty() {
            format!(" {}: none yet ", state.view.name())
        } else {
            format!(
                " {}: nothing matches '{}' ",
                state.view.name(),
                state.filter
            )
        }
    } else {
        format!(
            " {} {}-{} of {} ",
            state.view.name(),
            offset + 1,
            end.max(offset + 1),
            rows.len()
        )
    };
    let table = Table::new(body, cols.iter().map(|c| c.width))
        .header(header)
        .column_spacing(1)
        .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

fn draw_diagnoses(frame: &mut Frame, area: Rect, snap: &Snapshot) {
    let mut lines = Vec::new();
    for d in snap.diagnoses.iter().take(MAX_DIAGNOSES) {
        let colour = if d.severity == "critical" {
            Color::Red
        } else {
            Color::Yellow
        };
        lines.push(Line::from(vec![
            Span::styled(
                format!("{} {}: ", d.severity, d.id),
                Style::new().fg(colour).add_modifier(Modifier::BOLD),
            ),
            Span::raw(d.explanation.clone()),
        ]));
        lines.push(Line::styled(
            format!("  -> {}", d.advice),
            Style::new().fg(Color::Cyan),
        ));
    }
    let title = format!(" diagnoses ({}, most severe first) ", snap.diagnoses.len());
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

/// One diagnosis as text: `critical short-lived-connections: ... -> advice`.
fn diagnosis_line(d: &crate::model::diagnosis::Diagnosis) -> String {
    format!("{} {}: {} -> {}", d.severity, d.id, d.explanation, d.advice)
}

fn draw_failures(frame: &mut Frame, area: Rect, snap: &Snapshot, clock: &Clock) {
    let lines: Vec<Line> = if snap.failures.is_empty() {
        vec![Line::styled(
            "no failed connect()/bind() yet",
            Style::new().add_modifier(Modifier::DIM),
        )]
    } else {
        snap.failures
            .iter()
            .rev()
            .take(MAX_FAILURE_LINES)
            .map(|f| {
                let t = failure_text(f, clock);
                let mut spans = vec![Span::styled(t.what, Style::new().fg(Color::Red))];
                if !t.repeats.is_empty() {
                    let bold = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
                    spans.push(Span::styled(t.repeats, bold));
                }
                if let Some(h) = t.holder {
                    spans.push(Span::raw(", "));
                    spans.push(Span::styled(h, Style::new().fg(Color::Yellow)));
                }
                if !t.explanation.is_empty() {
                    spans.push(Span::raw(format!(": {}", t.explanation)));
                }
                Line::from(spans)
            })
            .collect()
    };
    let title = format!(" recent failures ({}, newest first) ", snap.failures.len());
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect, state: &TopState) {
    let line = match &state.editing {
        Some(buf) => Line::from(vec![
            Span::styled("filter: ", Style::new().fg(Color::Cyan)),
            Span::raw(format!("{buf}_")),
            Span::styled(
                "  Enter apply  Esc cancel  (empty clears)",
                Style::new().add_modifier(Modifier::DIM),
            ),
        ]),
        None => Line::styled(
            "q quit  d/p/w/Tab view  s sort  r reverse  / filter  Up/Down/PgUp/PgDn scroll",
            Style::new().add_modifier(Modifier::DIM),
        ),
    };
    frame.render_widget(Paragraph::new(line), area);
}

// ---------------------------------------------------------------------------------
// The interactive terminal.

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Raw mode and the alternate screen for as long as it lives; a panic hook restores
/// the terminal before the panic message is printed, so the message stays readable.
struct TerminalGuard {
    prev_hook: Arc<PanicHook>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        let prev_hook: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let chained = Arc::clone(&prev_hook);
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            chained(info);
        }));
        // Built before changing the terminal, so a failure below is undone by Drop.
        let guard = Self { prev_hook };
        crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        crossterm::execute!(
            io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )
        .context("cannot switch to the alternate screen")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
        // Changing the hook while this thread panics would abort; the chained hook is
        // harmless to leave in place then.
        if !std::thread::panicking() {
            let _ours = std::panic::take_hook();
            let prev = Arc::clone(&self.prev_hook);
            std::panic::set_hook(Box::new(move |info| prev(info)));
        }
    }
}

/// Idempotent: also called from the panic hook, then again by the guard.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Runs the interactive terminal until the user quits (`q`, Esc, Ctrl-C) or the
/// snapshot sender is dropped. Raw mode and the alternate screen are restored on every
/// exit path, panics included. Redraws when a snapshot arrives, a key changes the view
/// or the terminal is resized, at most every 100 ms. Keys come from crossterm's
/// `EventStream`, which does not block the runtime (a current-thread one is fine).
pub async fn run_terminal(
    mut snapshots: tokio::sync::watch::Receiver<Snapshot>,
    view: View,
    clock: Clock,
) -> anyhow::Result<()> {
    let _guard = TerminalGuard::enter()?;
    let mut terminal = ratatui::Terminal::new(CrosstermBackend::new(io::stdout()))
        .context("cannot set up the terminal")?;
    let mut events = EventStream::new();
    let mut state = TopState::new(view);
    let mut dirty = true;
    let mut next_frame = tokio::time::Instant::now();
    loop {
        if dirty && tokio::time::Instant::now() >= next_frame {
            // A copy, so the producer is never blocked on the terminal's speed.
            let snap = snapshots.borrow_and_update().clone();
            terminal
                .draw(|frame| draw(frame, &snap, &state, &clock))
                .context("cannot draw")?;
            dirty = false;
            next_frame = tokio::time::Instant::now() + FRAME;
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                // Seen now, drawn at the next frame: otherwise changed() would return
                // at once again until then.
                snapshots.mark_unchanged();
                dirty = true;
            }
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) => match on_key(&mut state, key) {
                    KeyOutcome::Quit => return Ok(()),
                    KeyOutcome::Redraw => dirty = true,
                    KeyOutcome::Continue => {}
                },
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("cannot read terminal events"),
                // The terminal is gone: nothing left to show.
                None => return Ok(()),
            },
            () = tokio::time::sleep_until(next_frame), if dirty => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use std::collections::BTreeMap;

    use super::*;
    use crate::model::snapshot::{DestUsage, Drift, Holder, OwnerPorts, ProcessUsage};
    use crate::views::output::JsonEvent;

    fn owner(comm: &str, pid: u32, ports: u32) -> OwnerPorts {
        OwnerPorts {
            pid,
            comm: comm.to_owned(),
            ports,
            ..OwnerPorts::default()
        }
    }

    fn process(comm: &str, pid: u32, cgroup_id: u64, ports: u32) -> ProcessUsage {
        ProcessUsage {
            pid,
            comm: comm.to_owned(),
            cgroup_id,
            ports,
            ..ProcessUsage::default()
        }
    }

    fn event(kind: &str, comm: &str, pid: u32, error: &str, errno: u32) -> JsonEvent {
        JsonEvent {
            ts_ns: 1,
            event: kind.to_owned(),
            pid,
            tid: pid,
            comm: comm.to_owned(),
            cgroup_id: 1,
            cgroup: None,
            workload: None,
            netns: 4_026_531_840,
            family: "ipv4".to_owned(),
            saddr: "0.0.0.0".to_owned(),
            sport: 0,
            daddr: "0.0.0.0".to_owned(),
            dport: 0,
            old_state: None,
            new_state: None,
            errno: Some(errno),
            error: Some(error.to_owned()),
            bound_port: None,
            sock: String::new(),
        }
    }

    /// Two namespaces: a 95% used IPv4 destination, a 75% IPv6 one, a quiet one; two
    /// failures, the newest an EADDRINUSE on 3306 held by curl's ephemeral port.
    fn sample() -> Snapshot {
        let busy = DestUsage {
            saddr: "10.0.0.1".to_owned(),
            daddr: "10.0.0.9".to_owned(),
            dport: 443,
            used: 26_900,
            capacity: 28_232,
            states: BTreeMap::from([
                ("ESTABLISHED".into(), 1000),
                ("SYN_SENT".into(), 20),
                ("TIME_WAIT".into(), 25_790),
                ("FIN_WAIT2".into(), 7),
                ("CLOSE_WAIT".into(), 3),
            ]),
            rate_per_s: 40.0,
            eta_s: Some(35.3),
            owners: vec![owner("curl", 4242, 26_000), owner("app", 100, 820)],
            ..DestUsage::default()
        };
        let quiet = DestUsage {
            saddr: "10.0.0.1".to_owned(),
            daddr: "10.0.0.10".to_owned(),
            dport: 80,
            used: 900,
            capacity: 28_232,
            states: BTreeMap::from([("ESTABLISHED".into(), 900)]),
            rate_per_s: 0.0,
            eta_s: None,
            owners: vec![owner("nginx", 300, 900)],
            ..DestUsage::default()
        };
        let v6 = DestUsage {
            saddr: "2001:db8::2".to_owned(),
            daddr: "2001:db8::1".to_owned(),
            dport: 5432,
            used: 750,
            capacity: 1000,
            states: BTreeMap::from([("ESTABLISHED".into(), 700), ("TIME_WAIT".into(), 50)]),
            rate_per_s: 2.5,
            eta_s: Some(100.0),
            owners: vec![owner("psql", 555, 750)],
            ..DestUsage::default()
        };
        let mut older = event("connect_error", "app", 100, "EADDRNOTAVAIL", 99);
        older.daddr = "10.0.0.9".to_owned();
        older.dport = 443;
        let mut newest = event("bind_error", "mysqld", 900, "EADDRINUSE", 98);
        newest.sport = 3306;
        Snapshot {
            time: String::new(),
            netns: vec![
                NetnsUsage {
                    inode: 4_026_531_840,
                    name: None,
                    port_range: [32768, 60999],
                    capacity: 28_232,
                    destinations: vec![quiet, busy],
                    processes: vec![
                        process("curl", 4242, 77, 26_000),
                        process("app", 100, 77, 820),
                        process("nginx", 300, 88, 900),
                    ],
                },
                NetnsUsage {
                    inode: 4_026_532_000,
                    name: Some("blue".to_owned()),
                    port_range: [40000, 40999],
                    capacity: 1000,
                    destinations: vec![v6],
                    processes: vec![process("psql", 555, 99, 750)],
                },
            ],
            failures: vec![
                Failure {
                    event: older,
                    holder: None,
                    explanation: "no free source port toward 10.0.0.9:443".to_owned(),
                    count: 1,
                    first_ts_ns: 1,
                    last_ts_ns: 1,
                },
                Failure {
                    event: newest,
                    holder: Some(Holder {
                        pid: 4242,
                        comm: "curl".to_owned(),
                        saddr: "10.0.0.1".to_owned(),
                        sport: 3306,
                        daddr: "10.0.0.9".to_owned(),
                        dport: 443,
                        state: "ESTABLISHED".to_owned(),
                        ephemeral: true,
                        cgroup_id: 77,
                        workload: None,
                    }),
                    explanation: "reserve 3306 in ip_local_reserved_ports".to_owned(),
                    count: 1,
                    first_ts_ns: 1,
                    last_ts_ns: 1,
                },
            ],
            dropped_events: 17,
            skipped_runs: 0,
            drift: Drift {
                checks: 5,
                added: 2,
                removed: 1,
                baseline_gone: 0,
                closes_missed: 0,
            },
            hooks: vec![
                crate::kernel::loader::HookPath {
                    hook: "state".into(),
                    path: "tp_btf/inet_sock_set_state".into(),
                    rejected: vec![],
                },
                crate::kernel::loader::HookPath {
                    hook: "connect".into(),
                    path: "tracepoint syscalls:sys_exit_connect".into(),
                    rejected: vec!["fexit __inet_hash_connect: EPERM".into()],
                },
            ],
            workloads: Vec::new(),
            diagnoses: Vec::new(),
        }
    }

    /// Boot time read as UTC: a stamp of N s shows as N s past midnight.
    fn utc() -> Clock {
        Clock::new(0, 0)
    }

    fn render(snap: &Snapshot, state: &TopState, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| draw(frame, snap, state, &utc()))
            .unwrap();
        let buffer = terminal.backend().buffer();
        let width = usize::from(buffer.area.width.max(1));
        buffer
            .content
            .chunks(width)
            .map(|row| row.iter().map(|c| c.symbol()).collect())
            .collect()
    }

    fn line_of(lines: &[String], needle: &str) -> usize {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{}", lines.join("\n")))
    }

    fn press(state: &mut TopState, code: KeyCode) -> KeyOutcome {
        on_key(state, KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn type_str(state: &mut TopState, text: &str) {
        for c in text.chars() {
            press(state, KeyCode::Char(c));
        }
    }

    fn dests(snap: &Snapshot, state: &TopState) -> Vec<String> {
        dest_rows(snap, state).into_iter().map(|r| r.dest).collect()
    }

    #[test]
    fn busiest_destination_first_with_percent_and_eta() {
        let lines = render(&sample(), &TopState::new(View::Destinations), 160, 30);
        let busy = line_of(&lines, "10.0.0.9:443");
        let v6 = line_of(&lines, "[2001:db8::1]:5432");
        let quiet = line_of(&lines, "10.0.0.10:80");
        assert!(busy < v6 && v6 < quiet, "{}", lines.join("\n"));
        let row = &lines[busy];
        for expected in ["26900/28232", "95%", "35s", "25790", "curl(4242) 26000"] {
            assert!(row.contains(expected), "{expected:?} missing in {row:?}");
        }
        // OTHER sums FIN_WAIT2 and CLOSE_WAIT.
        let cells = &dest_rows(&sample(), &TopState::new(View::Destinations))[0];
        assert_eq!(cells.other, 10);
        assert!(lines[v6].contains("75%") && lines[v6].contains("1m"));
    }

    #[test]
    fn percent_levels_colour_the_cell() {
        let lines_state = TopState::new(View::Destinations);
        let mut terminal = Terminal::new(TestBackend::new(160, 30)).unwrap();
        terminal
            .draw(|frame| draw(frame, &sample(), &lines_state, &utc()))
            .unwrap();
        let buffer = terminal.backend().buffer();
        let lines = render(&sample(), &lines_state, 160, 30);
        let fg_at = |needle: &str| {
            let y = line_of(&lines, needle);
            let x = lines[y].find(needle).unwrap();
            buffer[(x as u16, y as u16)].fg
        };
        assert_eq!(fg_at("95%"), Color::Red);
        assert_eq!(fg_at("75%"), Color::Yellow);
        assert_eq!(fg_at("3%"), Color::Reset);
    }

    #[test]
    fn failures_newest_first_and_name_the_holder() {
        let lines = render(&sample(), &TopState::new(View::Destinations), 160, 30);
        let newest = line_of(&lines, "EADDRINUSE");
        assert!(newest < line_of(&lines, "EADDRNOTAVAIL"));
        let line = &lines[newest];
        for expected in [
            "bind_error",
            "0.0.0.0:3306",
            "mysqld(900)",
            "held by curl(4242) ESTABLISHED ephemeral",
            "ip_local_reserved_ports",
        ] {
            assert!(line.contains(expected), "{expected:?} missing in {line:?}");
        }
    }

    #[test]
    fn repeated_failure_shows_count_and_first_and_last_time() {
        let mut snap = sample();
        let f = snap.failures.last_mut().unwrap();
        // 01:00:05 and 02:03:04 past midnight, UTC.
        (f.count, f.first_ts_ns, f.last_ts_ns) = (37, 3_605_000_000_000, 7_384_000_000_000);
        let repeats = " x37 (first 01:00:05, last 02:03:04)";
        let lines = render(&snap, &TopState::new(View::Destinations), 200, 30);
        let line = &lines[line_of(&lines, "EADDRINUSE")];
        assert!(
            line.contains(&format!("mysqld(900){repeats}, held by")),
            "{line:?}"
        );
        // A single failure has no count.
        assert!(!lines[line_of(&lines, "EADDRNOTAVAIL")].contains(" x1"));
        let out = plain_table(&snap, View::Destinations, &utc());
        let plain: Vec<&str> = out.lines().filter(|l| l.starts_with("failure: ")).collect();
        assert!(plain[0].contains(repeats), "{out}");
        assert!(!plain[1].contains(" x1 "), "{out}");
    }

    #[test]
    fn header_shows_dropped_events_and_drift() {
        let lines = render(&sample(), &TopState::new(View::Destinations), 160, 30);
        assert!(lines[0].contains("dropped 17"), "{}", lines[0]);
        assert!(lines[0].contains("2 netns  3 dests"), "{}", lines[0]);
        assert!(lines[0].contains("drift 5 checks +2 -1"), "{}", lines[0]);
        assert!(
            lines[0].contains("hooks state:tp_btf connect:tracepoint"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("sort % used"), "{}", lines[0]);
        // Runs the kernel skipped are said beside the drops, only when there are some.
        assert!(!lines[0].contains("skipped"), "{}", lines[0]);
        let mut snap = sample();
        snap.skipped_runs = 3;
        let lines = render(&snap, &TopState::new(View::Destinations), 160, 30);
        assert!(
            lines[0].contains("dropped 17 +3 skipped runs"),
            "{}",
            lines[0]
        );
        // Closes that never came, likewise.
        assert!(!lines[0].contains("missed"), "{}", lines[0]);
        snap.drift.closes_missed = 2;
        let lines = render(&snap, &TopState::new(View::Destinations), 160, 30);
        assert!(
            lines[0].contains("drift 5 checks +2 -1 (2 closes missed)"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn p_shows_processes_and_w_workloads() {
        let snap = sample();
        let mut state = TopState::new(View::Destinations);
        assert_eq!(press(&mut state, KeyCode::Char('p')), KeyOutcome::Redraw);
        assert_eq!(state.view, View::Processes);
        let lines = render(&snap, &state, 120, 30);
        let curl = line_of(&lines, "curl");
        assert!(lines[curl].contains("4242") && lines[curl].contains("26000"));
        assert!(curl < line_of(&lines, "psql"));
        assert!(line_of(&lines, "WORKLOAD") < curl);

        press(&mut state, KeyCode::Char('w'));
        assert_eq!(state.view, View::Workloads);
        let lines = render(&snap, &state, 160, 30);
        let row = &lines[line_of(&lines, "curl(4242) 26000, app(100) 820")];
        assert!(
            row.contains("26820") && row.contains("cgroup id 77"),
            "{row}"
        );
        // `c`, the key of the older cgroups view, still gets there.
        press(&mut state, KeyCode::Char('d'));
        press(&mut state, KeyCode::Char('c'));
        assert_eq!(state.view, View::Workloads);
        press(&mut state, KeyCode::Tab);
        assert_eq!(state.view, View::Destinations);
    }

    #[test]
    fn workload_rows_sum_ports_per_workload() {
        let rows = workload_rows(&sample(), &TopState::new(View::Workloads));
        let summary: Vec<(&str, u64, usize)> = rows
            .iter()
            .map(|r| (r.label.as_str(), r.ports, r.members.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("cgroup id 77", 26_820, 2),
                ("cgroup id 88", 900, 1),
                ("cgroup id 99", 750, 1)
            ]
        );
        // Named: the pod's label, its container beside each process, and TOP OWNER
        // names the pod the owner is in.
        let mut snap = sample();
        let mut names: std::collections::HashMap<u64, std::sync::Arc<crate::workload::Named>> =
            Default::default();
        let uid = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
        let id = "a".repeat(64);
        let index = crate::workload::kubelet::Index::from_entries(
            [format!("shop_web-1_{uid}").as_str()],
            [(format!("web-1_shop_api-{id}.log").as_str(), None)],
        );
        let path = format!("/kubepods/besteffort/pod{uid}/{id}");
        for d in &mut snap.netns[0].destinations {
            for o in d.owners.iter_mut().filter(|o| o.pid == 4242) {
                o.cgroup_id = 77;
            }
        }
        names.insert(
            77,
            std::sync::Arc::new(crate::workload::Named::new(&path, &index)),
        );
        crate::workload::annotate::annotate(&mut snap, &mut names);
        let rows = workload_rows(&snap, &TopState::new(View::Workloads));
        assert_eq!(
            (rows[0].label.as_str(), rows[0].kind),
            ("pod shop/web-1", "pod")
        );
        assert!(
            rows[0].cells()[4].starts_with("curl(4242) [api] 26000"),
            "{:?}",
            rows[0].cells()
        );
        let dest = dest_rows(&snap, &TopState::new(View::Destinations));
        let curl = dest.iter().find(|d| d.top_owner.contains("curl")).unwrap();
        assert_eq!(curl.top_owner, "pod shop/web-1 (api) curl(4242) 26000");
        let mut state = TopState::new(View::Workloads);
        state.filter = "kubepods".into();
        assert_eq!(workload_rows(&snap, &state).len(), 1);
        // The failure's port holder (curl, cgroup 77) is named in its line.
        let held = snap.failures.iter().find(|f| f.holder.is_some()).unwrap();
        let line = failure_line(held, &utc());
        assert!(
            line.contains("held by curl(4242) in pod shop/web-1 (api) ESTABLISHED"),
            "{line}"
        );
    }

    #[test]
    fn filter_keeps_only_matching_rows() {
        let snap = sample();
        let mut state = TopState::new(View::Destinations);
        press(&mut state, KeyCode::Char('/'));
        type_str(&mut state, "PSQX");
        press(&mut state, KeyCode::Backspace);
        type_str(&mut state, "l");
        // Not applied while typing.
        assert_eq!(dests(&snap, &state).len(), 3);
        assert_eq!(press(&mut state, KeyCode::Enter), KeyOutcome::Redraw);
        assert_eq!(state.filter, "PSQl");
        assert_eq!(dests(&snap, &state), ["[2001:db8::1]:5432"]);
        let lines = render(&snap, &state, 160, 30);
        assert!(!lines.iter().any(|l| l.contains("10.0.0.10:80")));

        // By namespace name, destination and pid.
        state.filter = "blue".to_owned();
        assert_eq!(dests(&snap, &state), ["[2001:db8::1]:5432"]);
        state.filter = "10.0.0.9:".to_owned();
        assert_eq!(dests(&snap, &state), ["10.0.0.9:443"]);
        state.filter = "300".to_owned();
        assert_eq!(dests(&snap, &state), ["10.0.0.10:80"]);
        state.view = View::Processes;
        state.filter = "ngin".to_owned();
        let pids: Vec<u32> = proc_rows(&snap, &state).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [300]);
    }

    #[test]
    fn escape_cancels_the_filter_being_typed_then_quits() {
        let mut state = TopState::new(View::Destinations);
        state.filter = "curl".to_owned();
        press(&mut state, KeyCode::Char('/'));
        // q is text while typing, not quit.
        assert_eq!(press(&mut state, KeyCode::Char('q')), KeyOutcome::Redraw);
        assert_eq!(state.editing.as_deref(), Some("curlq"));
        assert_eq!(press(&mut state, KeyCode::Esc), KeyOutcome::Redraw);
        assert_eq!(
            (state.filter.as_str(), state.editing.is_none()),
            ("curl", true)
        );
        assert_eq!(press(&mut state, KeyCode::Esc), KeyOutcome::Quit);
        assert_eq!(press(&mut state, KeyCode::Char('q')), KeyOutcome::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        press(&mut state, KeyCode::Char('/'));
        assert_eq!(on_key(&mut state, ctrl_c), KeyOutcome::Quit);
        assert_eq!(press(&mut state, KeyCode::F(5)), KeyOutcome::Continue);
    }

    #[test]
    fn sort_key_cycles_and_reverses() {
        let snap = sample();
        let mut state = TopState::new(View::Destinations);
        let (busy, v6, quiet) = ("10.0.0.9:443", "[2001:db8::1]:5432", "10.0.0.10:80");
        assert_eq!(dests(&snap, &state), [busy, v6, quiet]);
        press(&mut state, KeyCode::Char('s'));
        assert_eq!(state.dest_sort, DestSort::Used);
        assert_eq!(dests(&snap, &state), [busy, quiet, v6]);
        press(&mut state, KeyCode::Char('s'));
        assert_eq!(dests(&snap, &state), [busy, v6, quiet]); // rate
        press(&mut state, KeyCode::Char('s'));
        assert_eq!(state.dest_sort, DestSort::Eta);
        press(&mut state, KeyCode::Char('r'));
        assert_eq!(dests(&snap, &state), [quiet, v6, busy]);
        press(&mut state, KeyCode::Char('s'));
        press(&mut state, KeyCode::Char('r'));
        assert_eq!(state.dest_sort, DestSort::TimeWait);
        assert_eq!(dests(&snap, &state), [busy, v6, quiet]);
        press(&mut state, KeyCode::Char('s'));
        assert_eq!(state.dest_sort, DestSort::Percent);
        let lines = render(&snap, &state, 160, 30);
        assert!(lines[0].contains("sort % used"), "{}", lines[0]);

        state.view = View::Processes;
        let pids = |state: &TopState| -> Vec<u32> {
            proc_rows(&snap, state).iter().map(|p| p.pid).collect()
        };
        assert_eq!(pids(&state), [4242, 300, 100, 555]);
        press(&mut state, KeyCode::Char('s'));
        assert_eq!(pids(&state), [100, 300, 555, 4242]);
        press(&mut state, KeyCode::Char('s'));
        assert_eq!(pids(&state), [100, 4242, 300, 555]); // app, curl, nginx, psql
        press(&mut state, KeyCode::Char('r'));
        assert_eq!(pids(&state), [555, 300, 4242, 100]);
    }

    #[test]
    fn diagnoses_panel_and_reusable_timewait() {
        let mut snap = sample();
        // The busy destination: most of its TIME_WAIT handed back, and it levels off.
        let busy = snap.netns[0]
            .destinations
            .iter_mut()
            .find(|d| d.daddr == "10.0.0.9")
            .unwrap();
        busy.reusable = 25_000;
        busy.steady_state = Some(1900.0);
        busy.eta_s = None;
        snap.diagnoses = vec![crate::model::diagnosis::Diagnosis {
            id: "short-lived-connections".into(),
            severity: "critical".into(),
            netns: 4_026_531_840,
            who: None,
            saddr: "10.0.0.1".into(),
            daddr: "10.0.0.9".into(),
            dport: 443,
            numbers: Default::default(),
            explanation: "curl(4242) opens 450 connections/s".into(),
            advice: "reuse connections".into(),
        }];
        let rows = dest_rows(&snap, &TopState::new(View::Destinations));
        let row = rows.iter().find(|r| r.dest == "10.0.0.9:443").unwrap();
        // 1900 of 28232 held and not handed back: not red.
        assert_eq!(row.level(), Level::Ok);
        assert_eq!(row.cells()[7], "25000");
        assert_eq!(row.cells()[10], "never");
        let lines = render(&snap, &TopState::new(View::Destinations), 160, 30);
        let at = line_of(
            &lines,
            "critical short-lived-connections: curl(4242) opens 450",
        );
        assert!(
            lines[at + 1].contains("-> reuse connections"),
            "{}",
            lines[at + 1]
        );
        assert!(line_of(&lines, "diagnoses (1") < line_of(&lines, "recent failures"));
        let plain = plain_table(&snap, View::Destinations, &utc());
        assert!(plain.contains("diagnosis: critical short-lived-connections: curl(4242) opens 450 connections/s -> reuse connections"), "{plain}");
    }

    #[test]
    fn plain_table_has_header_rows_and_failures() {
        let out = plain_table(&sample(), View::Destinations, &utc());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1 + 3 + 2, "{out}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NETNS",
                "DEST",
                "USED/CAPACITY",
                "%",
                "ESTAB",
                "SYN_SENT",
                "TIME_WAIT",
                "REUSE",
                "OTHER",
                "RATE/s",
                "ETA",
                "TOP",
                "OWNER"
            ]
        );
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            first,
            [
                "4026531840",
                "10.0.0.9:443",
                "26900/28232",
                "95%",
                "1000",
                "20",
                "25790",
                "0",
                "10",
                "40.0",
                "35s",
                "curl(4242)",
                "26000"
            ]
        );
        assert!(lines[2].starts_with("blue") && lines[2].contains("[2001:db8::1]:5432"));
        assert!(lines[4].starts_with("failure: bind_error EADDRINUSE 0.0.0.0:3306"));
        assert!(lines[4].contains("held by curl(4242) ESTABLISHED ephemeral"));
        assert!(!out.contains('\x1b'));
        assert!(!out.contains("(no outgoing connections)"), "{out}");
        // A host with nothing outgoing: the header, and a line saying so.
        let empty = plain_table(&Snapshot::default(), View::Destinations, &utc());
        assert_eq!(
            empty.lines().nth(1),
            Some("(no outgoing connections)"),
            "{empty}"
        );

        let procs = plain_table(&sample(), View::Processes, &utc());
        let lines: Vec<&str> = procs.lines().collect();
        assert_eq!(lines.len(), 1 + 4 + 2, "{procs}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NETNS", "PID", "COMM", "WORKLOAD", "PORTS"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["4026531840", "4242", "curl", "cgroup", "77", "26000"]
        );
        let cgroups = plain_table(&sample(), View::Workloads, &utc());
        assert!(
            cgroups.lines().nth(1).unwrap().contains("26820"),
            "{cgroups}"
        );
    }

    #[test]
    fn eta_is_human() {
        assert_eq!(eta_human(Some(45.9)), "45s");
        assert_eq!(eta_human(Some(720.0)), "12m");
        assert_eq!(eta_human(Some(7300.0)), "2h");
        assert_eq!(eta_human(Some(3.0 * 86_400.0)), "3d");
        assert_eq!(eta_human(Some(0.2)), "0s");
        assert_eq!(eta_human(None), "-");
        assert_eq!(eta_human(Some(f64::NAN)), "-");
        assert_eq!(eta_human(Some(-5.0)), "-");
    }

    #[test]
    fn scrolling_stops_at_the_last_row() {
        let mut snap = sample();
        snap.netns[0].destinations = (0..50)
            .map(|i| DestUsage {
                daddr: format!("10.1.0.{i}"),
                dport: 80,
                used: 1000 - i,
                capacity: 28_232,
                ..DestUsage::default()
            })
            .collect();
        let mut state = TopState::new(View::Destinations);
        let lines = render(&snap, &state, 160, 20);
        assert!(line_of(&lines, "10.1.0.0:80") < line_of(&lines, "10.1.0.1:80"));
        press(&mut state, KeyCode::Down);
        let lines = render(&snap, &state, 160, 20);
        // The IPv6 destination (75%) was first; now 10.1.0.0 is right under the header.
        assert!(!lines.iter().any(|l| l.contains("[2001:db8::1]:5432")));
        assert_eq!(line_of(&lines, "10.1.0.0:80"), line_of(&lines, "NETNS") + 1);
        for _ in 0..20 {
            press(&mut state, KeyCode::PageDown);
        }
        let lines = render(&snap, &state, 160, 20);
        // 51 rows (the IPv6 one is first at 75%), the last is 10.1.0.49.
        let last = line_of(&lines, "10.1.0.49:80");
        assert!(lines[last + 1].starts_with('└'), "{}", lines.join("\n"));
        assert_eq!(state.scroll, state.max_scroll());
        press(&mut state, KeyCode::Home);
        assert_eq!(state.scroll, 0);
    }

    #[test]
    fn odd_data_and_tiny_terminals_do_not_panic() {
        let mut odd = sample();
        let long = "x".repeat(500);
        odd.netns[0].name = Some(long.clone());
        odd.netns[0].destinations.push(DestUsage {
            daddr: long.clone(),
            dport: 1,
            used: 5,
            capacity: 0,
            rate_per_s: f64::INFINITY,
            eta_s: Some(f64::NAN),
            owners: vec![owner(&long, u32::MAX, u32::MAX)],
            states: BTreeMap::from([
                ("TIME_WAIT".into(), u32::MAX),
                (long.clone().into(), u32::MAX),
            ]),
            ..DestUsage::default()
        });
        odd.netns[0]
            .processes
            .push(process(&long, 1, u64::MAX, u32::MAX));
        odd.netns[0]
            .processes
            .push(process("", 2, u64::MAX, u32::MAX));
        let odd_row = dest_rows(&odd, &TopState::new(View::Destinations))
            .into_iter()
            .find(|r| r.capacity == 0)
            .unwrap();
        assert_eq!(
            (odd_row.percent(), odd_row.level()),
            ("-".to_owned(), Level::Ok)
        );
        assert_eq!(eta_human(odd_row.eta_s), "-");
        assert_eq!(odd_row.other, u64::from(u32::MAX));
        let cg = workload_rows(&odd, &TopState::new(View::Workloads));
        assert_eq!(cg[0].ports, 2 * u64::from(u32::MAX));

        let empty = Snapshot::default();
        for snap in [&odd, &empty] {
            for view in [View::Destinations, View::Processes, View::Workloads] {
                let mut state = TopState::new(view);
                state.scroll = usize::MAX;
                state.editing = Some(long.clone());
                for (w, h) in [(20, 5), (1, 1), (0, 0), (3, 40), (400, 2)] {
                    let lines = render(snap, &state, w, h);
                    assert_eq!(lines.len(), usize::from(h) * usize::from(w.min(1)));
                }
                press(&mut state, KeyCode::PageDown);
                press(&mut state, KeyCode::End);
                assert!(!plain_table(snap, view, &utc()).is_empty());
            }
        }
        let lines = render(&empty, &TopState::new(View::Destinations), 80, 12);
        line_of(&lines, "destinations: none yet");
        line_of(&lines, "no failed connect()/bind() yet");
        assert!(lines[0].contains("dropped 0"));
    }
}

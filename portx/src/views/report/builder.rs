//! Feeding a recording to the model and gathering the report as it goes.

use std::{
    collections::{BTreeSet, HashMap},
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
};

use super::{
    Completeness, DestSeries, DestinationReport, FailureGroup, FileReport, FirstFailure, Gap, Host,
    MAX_CHARTS, MAX_DESTINATIONS, Report, Span, Trigger,
    series::{Point, Series},
};
use crate::{
    capture::{FileHeader, NameTable, Record, reader::ReadStatus, remember_names},
    events::sock_owners::SockOwners,
    events::{Kind, TraceEvent},
    model::{
        Model,
        input::Input,
        snapshot::{Failure, OwnerPorts},
    },
    views::output::write_json_line,
    workload::annotate::name_failure,
};

/// Consecutive files of a set further apart than this are reported as a time gap
/// (rotation starts the next file at once; a second is far more than it takes).
pub const TIME_GAP_NS: u64 = 1_000_000_000;
/// Destinations followed over time at once; a new one replaces the least used.
const MAX_SERIES: usize = 64;
/// Failure marks kept per destination's chart.
const MAX_MARKS: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// Each recording has its own sockets, clock and gaps: mixed in one model they
    /// would be counted together as if one machine held them all at once.
    #[error(
        "{path}: from another recording ({other:016x}, not {first:016x}): report one recording at a time"
    )]
    MixedRecordings {
        path: String,
        first: u64,
        other: u64,
    },
    #[error("{path}: file_seq {seq} again: the same file given twice?")]
    DuplicateSeq { path: String, seq: u32 },
}

/// Sorts files (with their headers, `None` for a file without one) into the
/// timeline: by recording, then file_seq, then start time. Files of different
/// recordings are an error (see [`ReportError::MixedRecordings`]).
pub fn timeline_order(files: &mut [(PathBuf, Option<FileHeader>)]) -> Result<(), ReportError> {
    files.sort_by_key(|(p, h)| {
        (
            h.as_ref()
                .map(|h| (h.recording_id, h.file_seq, h.started_ns)),
            p.clone(),
        )
    });
    let mut first: Option<u64> = None;
    for (path, h) in files.iter() {
        let Some(h) = h else { continue };
        match first {
            None => first = Some(h.recording_id),
            Some(id) if id != h.recording_id => {
                return Err(ReportError::MixedRecordings {
                    path: path.display().to_string(),
                    first: id,
                    other: h.recording_id,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Writes event records as `portx trace --json` writes them: recordings keep events
/// as the kernel gave them, so owners are joined here the way `trace` joins them
/// (softirq state changes take their socket's owner). Other records write nothing.
#[derive(Default)]
pub struct EventWriter {
    owners: SockOwners,
    names: NameTable,
}

impl EventWriter {
    pub fn write(&mut self, out: &mut impl Write, r: &Record) -> io::Result<()> {
        match r {
            Record::Input(Input::Event(e)) => {
                let mut e = e.clone();
                self.owners.join(&mut e);
                write_json_line(out, &e, self.names.get(&e.cgroup_id).map(|n| &**n))
            }
            Record::Cgroups(names) => {
                remember_names(&mut self.names, names);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What failures are grouped by: kind, errno, pid, comm, destination, bind()'s port.
type GroupKey = (Kind, Option<u32>, u32, String, IpAddr, u16, Option<u16>);

/// A destination's identity as the model keys it.
type DestId = (u32, IpAddr, IpAddr, u16);

#[derive(Default)]
pub struct ReportBuilder {
    model: Model,
    /// The first file's header: host, clock, recording.
    first: Option<FileHeader>,
    /// The previous file of the set: (file_seq, last timestamp).
    prev: Option<(u32, u64)>,
    seqs: BTreeSet<u32>,
    /// Load namespace states in this file (first file, or after a gap).
    load_states: bool,
    /// Namespaces whose state the model has.
    known_netns: BTreeSet<u32>,
    files: Vec<FileReport>,
    /// The file being read: its last timestamp.
    file_end_ns: u64,
    start_ns: Option<u64>,
    end_ns: u64,
    events: u64,
    complete: Completeness,
    trigger: Option<crate::capture::TriggerFired>,
    first_failure: Option<(u64, Failure)>,
    groups: Vec<FailureGroup>,
    group_index: HashMap<GroupKey, usize>,
    series: HashMap<DestId, Series>,
    /// (netns, daddr, dport, ts) of failures, for the charts' marks.
    marks: Vec<(u32, String, u16, u64)>,
    /// The recording's names of cgroup ids.
    names: NameTable,
}

impl ReportBuilder {
    pub fn new() -> Self {
        let mut model = Model::new();
        model.track_peaks(true);
        Self {
            model,
            load_states: true,
            ..Self::default()
        }
    }

    /// Starts a file (before its records).
    pub fn begin_file(&mut self, path: &str) {
        self.files.push(FileReport {
            path: path.to_owned(),
            seq: None,
            frames: 0,
            bytes: 0,
            torn_tail: None,
            corrupt: None,
        });
        self.file_end_ns = 0;
    }

    /// Ends a file with how far it could be read.
    pub fn end_file(&mut self, status: &ReadStatus) {
        let Some(f) = self.files.last_mut() else {
            return;
        };
        f.frames = status.frames;
        f.bytes = status.bytes;
        f.torn_tail = status.torn_tail;
        f.corrupt = status
            .corrupt
            .as_ref()
            .map(|(off, why)| format!("offset {off}: {why}"));
        if status.torn_tail.is_some() {
            self.complete.torn_tail.push(f.path.clone());
        }
        if let Some(c) = &f.corrupt {
            self.complete.corrupt.push(format!("{}: {c}", f.path));
        }
        self.complete.unknown_frames += status.unknown_frames;
        if let Some(seq) = f.seq {
            self.prev = Some((seq, self.file_end_ns));
        }
    }

    fn path(&self) -> String {
        self.files
            .last()
            .map(|f| f.path.clone())
            .unwrap_or_default()
    }

    fn saw(&mut self, ts: u64) {
        self.start_ns = Some(self.start_ns.map_or(ts, |s| s.min(ts)));
        self.end_ns = self.end_ns.max(ts);
        self.file_end_ns = self.file_end_ns.max(ts);
    }

    /// Feeds one record, in file order.
    pub fn feed(&mut self, r: &Record) -> Result<(), ReportError> {
        match r {
            Record::Header(h) => self.header(h)?,
            Record::Input(input) => self.input(input),
            Record::Counters(c) => {
                self.saw(c.at_ns);
                // Running totals since the recording started: the last is the total.
                self.complete.dropped = c.kernel_dropped;
                self.complete.skipped_runs = c.kernel_skipped_runs;
                self.complete.evicted = self.complete.evicted.max(c.evicted_events);
            }
            Record::Trigger(t) => {
                self.saw(t.at_ns);
                if self.trigger.is_none() {
                    self.trigger = Some(t.clone());
                }
            }
            Record::End(e) => self.saw(e.at_ns),
            Record::Cgroups(names) => remember_names(&mut self.names, names),
        }
        Ok(())
    }

    fn header(&mut self, h: &FileHeader) -> Result<(), ReportError> {
        let path = self.path();
        if let Some(first) = &self.first
            && first.recording_id != h.recording_id
        {
            return Err(ReportError::MixedRecordings {
                path,
                first: first.recording_id,
                other: h.recording_id,
            });
        }
        if !self.seqs.insert(h.file_seq) {
            return Err(ReportError::DuplicateSeq {
                path,
                seq: h.file_seq,
            });
        }
        if let Some(f) = self.files.last_mut() {
            f.seq = Some(h.file_seq);
        }
        self.load_states = match self.prev {
            None => {
                if self.first.is_none() && h.file_seq > 0 {
                    self.gap(None, h.file_seq, 0.0);
                }
                true
            }
            Some((prev, prev_end)) => {
                let apart = h.started_ns.saturating_sub(prev_end);
                if h.file_seq != prev + 1 {
                    self.gap(Some(prev), h.file_seq, apart as f64 / 1e9);
                    true
                } else if apart > TIME_GAP_NS {
                    self.complete.gaps.push(Gap {
                        kind: "time".into(),
                        after_seq: Some(prev),
                        before_seq: h.file_seq,
                        missing: None,
                        seconds: apart as f64 / 1e9,
                    });
                    true
                } else {
                    false
                }
            }
        };
        if self.first.is_none() {
            self.model.set_exact_timewait(h.exact_timewait);
            self.first = Some(h.clone());
        }
        self.saw(h.started_ns);
        Ok(())
    }

    fn gap(&mut self, after: Option<u32>, before: u32, seconds: f64) {
        let from = after.map_or(0, |a| a + 1);
        self.complete.gaps.push(Gap {
            kind: "missing_files".into(),
            after_seq: after,
            before_seq: before,
            missing: (from < before).then(|| (from, before - 1)),
            seconds,
        });
    }

    fn input(&mut self, input: &Input) {
        if let Some(ts) = input.ts_ns() {
            self.saw(ts);
        }
        match input {
            Input::State(s) => {
                // A later file of a continuous set starts with the state the model
                // already reached from the events before it: loading it again would
                // only re-add what closed meanwhile.
                if self.load_states || !self.known_netns.contains(&s.netns) {
                    self.known_netns.insert(s.netns);
                    self.model.feed(input);
                }
            }
            Input::Event(e) => {
                self.events += 1;
                self.model.feed(input);
                if e.kind.is_error() {
                    self.failure(e);
                }
                self.sample(e);
            }
            Input::Settings { .. }
            | Input::TimeWait { .. }
            | Input::BaselineGone { .. }
            | Input::NetnsGone { .. } => self.model.feed(input),
        }
    }

    fn failure(&mut self, e: &TraceEvent) {
        let Some(f) = self.model.last_failure().cloned() else {
            return;
        };
        // Where the chart marks it: the destination connect() went to, or the one
        // whose connection held the port bind() wanted.
        let mark = match (e.kind, &f.holder) {
            (Kind::ConnectError, _) => Some((e.daddr.to_string(), e.dport)),
            (_, Some(h)) if h.dport != 0 => Some((h.daddr.clone(), h.dport)),
            _ => None,
        };
        if let Some((daddr, dport)) = mark
            && self.marks.len() < MAX_MARKS * MAX_SERIES
        {
            self.marks.push((e.netns, daddr, dport, e.ts_ns));
        }
        let sport = (e.kind == Kind::BindError).then_some(e.sport);
        let key = (
            e.kind,
            e.errno,
            e.pid,
            e.comm.to_string(),
            e.daddr,
            e.dport,
            sport,
        );
        match self.group_index.get(&key) {
            Some(&i) => {
                let g = &mut self.groups[i];
                g.count += 1;
                g.last_ns = g.last_ns.max(e.ts_ns);
            }
            None => {
                self.group_index.insert(key, self.groups.len());
                self.groups.push(FailureGroup {
                    event: e.kind.as_str().to_owned(),
                    error: e.error_name().map(str::to_owned),
                    errno: e.errno,
                    pid: e.pid,
                    comm: e.comm.to_string(),
                    cgroup_id: e.cgroup_id,
                    workload: None,
                    daddr: e.daddr.to_string(),
                    dport: e.dport,
                    sport,
                    count: 1,
                    first: String::new(),
                    last: String::new(),
                    first_ns: e.ts_ns,
                    last_ns: e.ts_ns,
                    holder: f.holder.clone(),
                    explanation: f.explanation.clone(),
                });
            }
        }
        if self.first_failure.is_none() {
            self.first_failure = Some((e.ts_ns, f));
        }
    }

    /// The event's destination level after the event, for its chart.
    fn sample(&mut self, e: &TraceEvent) {
        if e.dport == 0 || e.kind.is_error() {
            return;
        }
        let Some((used, time_wait)) = self.model.dest_level(e.netns, e.saddr, e.daddr, e.dport)
        else {
            return;
        };
        let id: DestId = (e.netns, e.saddr, e.daddr, e.dport);
        let point = Point {
            t_ns: e.ts_ns,
            used,
            time_wait,
        };
        if let Some(s) = self.series.get_mut(&id) {
            s.push(point);
            return;
        }
        if used == 0 && time_wait == 0 {
            return;
        }
        if self.series.len() >= MAX_SERIES {
            // Full: make room only by dropping a destination used less than this one.
            let Some((&least, _)) = self
                .series
                .iter()
                .filter(|(_, s)| s.max_used() < used)
                .min_by_key(|(_, s)| s.max_used())
            else {
                return;
            };
            self.series.remove(&least);
        }
        let mut s = Series::default();
        s.push(point);
        self.series.insert(id, s);
    }

    pub fn finish(mut self) -> Report {
        let first = self.first.take();
        let boot_to_wall_ns = first.as_ref().map_or(0, |h| h.boot_to_wall_ns);
        let start_ns = self.start_ns.unwrap_or(0);
        let span = Span {
            start: String::new(),
            end: String::new(),
            start_ns,
            end_ns: self.end_ns.max(start_ns),
            events: self.events,
            boot_to_wall_ns,
        };
        let span = Span {
            start: span.wall(span.start_ns),
            end: span.wall(span.end_ns),
            ..span
        };
        self.model.tick(span.end_ns);
        let diagnoses = self.model.snapshot(crate::model::View::default()).diagnoses;
        let names = std::mem::take(&mut self.names);
        let mut name = |id: u64| names.get(&id).cloned();
        let failures: Vec<FailureGroup> = self
            .groups
            .into_iter()
            .map(|mut g| {
                g.first = span.wall(g.first_ns);
                g.last = span.wall(g.last_ns);
                g.workload = name(g.cgroup_id).map(|n| n.workload.clone());
                if let Some(h) = &mut g.holder {
                    h.workload = name(h.cgroup_id).map(|n| n.workload.clone());
                }
                g
            })
            .collect();
        let mut first_failure = self.first_failure.take();
        if let Some((_, f)) = &mut first_failure {
            name_failure(f, &mut name);
        }
        let mut destinations = Vec::new();
        for (rank, p) in self
            .model
            .peaks()
            .into_iter()
            .take(MAX_DESTINATIONS)
            .enumerate()
        {
            let series = (rank < MAX_CHARTS)
                .then(|| {
                    let id: DestId = (
                        p.netns,
                        p.saddr.parse().ok()?,
                        p.daddr.parse().ok()?,
                        p.dport,
                    );
                    let s = self.series.remove(&id)?;
                    let (used, time_wait) = self.model.dest_level(id.0, id.1, id.2, id.3)?;
                    let peak = Point {
                        t_ns: p.at_ns,
                        used: p.used,
                        time_wait: p.time_wait,
                    };
                    let end = Point {
                        t_ns: span.end_ns,
                        used,
                        time_wait,
                    };
                    let failures = self
                        .marks
                        .iter()
                        .filter(|(ns, d, port, _)| {
                            *ns == p.netns && *d == p.daddr && *port == p.dport
                        })
                        .map(|m| m.3)
                        .take(MAX_MARKS)
                        .collect();
                    Some(DestSeries {
                        points: s.finish(&[peak, end]),
                        failures,
                    })
                })
                .flatten();
            destinations.push(DestinationReport {
                netns: p.netns,
                saddr: p.saddr.clone(),
                daddr: p.daddr.clone(),
                dport: p.dport,
                capacity: p.capacity,
                peak_used: p.used,
                peak_at: span.wall(p.at_ns),
                peak_at_ns: p.at_ns,
                holders_at_peak: p
                    .owners
                    .iter()
                    .map(|o| OwnerPorts {
                        workload: name(o.cgroup_id).map(|n| Box::new(n.workload.clone())),
                        ..o.clone()
                    })
                    .collect(),
                timewait_at_peak: p.time_wait,
                timewait_share: if p.used == 0 {
                    0.0
                } else {
                    f64::from(p.time_wait) / f64::from(p.used)
                },
                series,
            });
        }
        let mut complete = self.complete;
        complete.closes_missed = self.model.drift().closes_missed;
        complete.ok = complete.dropped == 0
            && complete.skipped_runs == 0
            && complete.closes_missed == 0
            && complete.evicted == 0
            && complete.torn_tail.is_empty()
            && complete.corrupt.is_empty()
            && complete.gaps.is_empty()
            && complete.unknown_frames == 0;
        let host = first.map_or_else(Host::default, |h| Host {
            hostname: h.hostname,
            kernel: h.kernel_release,
            boot_id: h.boot_id,
        });
        Report {
            trigger: self.trigger.map(|t| Trigger {
                at: span.wall(t.at_ns),
                at_ns: t.at_ns,
                spec: t.spec,
                reason: t.reason,
            }),
            first_failure: first_failure.map(|(ts, failure)| FirstFailure {
                at: span.wall(ts),
                failure,
            }),
            span,
            host,
            files: self.files,
            complete,
            failures,
            destinations,
            diagnoses,
        }
    }
}

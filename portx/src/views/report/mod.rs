//! `portx report`: what a recording says happened, offline. A [`ReportBuilder`] is fed
//! the records of one recording (one file, or a rotation set in file order), drives a
//! [`crate::model::Model`] through `Model::feed` exactly as `portx top` does live, and
//! gathers the time span, completeness, failures (with who held the port then) and
//! each destination's peak. The [`Report`] renders as text ([`text`]), one JSON
//! object (serde), or a self-contained HTML page ([`html`]).

mod builder;
#[doc(hidden)]
pub mod fixture;
pub mod html;
mod series;
pub mod text;

#[cfg(test)]
mod tests;

use serde::Serialize;

pub use builder::{EventWriter, ReportBuilder, ReportError, timeline_order};
pub use series::{MAX_POINTS, Point};

use crate::{
    model::snapshot::{Failure, Holder, OwnerPorts},
    views::time,
};

/// The report. Field names are part of portx's interface (README).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub span: Span,
    pub host: Host,
    pub files: Vec<FileReport>,
    pub complete: Completeness,
    pub trigger: Option<Trigger>,
    pub first_failure: Option<FirstFailure>,
    /// Grouped; in order of first occurrence.
    pub failures: Vec<FailureGroup>,
    /// Busiest (peak_used / capacity) first, at most [`MAX_DESTINATIONS`].
    pub destinations: Vec<DestinationReport>,
    /// Why destinations ran out and what to change, as the model saw it at the
    /// recording's end (most severe first).
    pub diagnoses: Vec<crate::model::diagnosis::Diagnosis>,
}

/// Destinations a report lists.
pub const MAX_DESTINATIONS: usize = 50;
/// Destinations that get a time series (the chart), busiest first.
pub const MAX_CHARTS: usize = 8;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Span {
    /// RFC 3339, UTC.
    pub start: String,
    pub end: String,
    /// Boot-time clock of the recording machine.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Events (trace events) in the recording.
    pub events: u64,
    /// Wall clock = boot-time clock + this (the first file's), nanoseconds.
    pub boot_to_wall_ns: i64,
}

impl Span {
    /// Wall-clock nanoseconds of a boot-time timestamp.
    pub fn wall_ns(&self, boot_ns: u64) -> i128 {
        i128::from(boot_ns) + i128::from(self.boot_to_wall_ns)
    }

    /// RFC 3339 of a boot-time timestamp.
    pub fn wall(&self, boot_ns: u64) -> String {
        time::rfc3339(self.wall_ns(boot_ns))
    }

    /// `HH:MM:SS` UTC of a boot-time timestamp.
    pub fn hms(&self, boot_ns: u64) -> String {
        time::hms(self.wall_ns(boot_ns))
    }

    pub fn seconds(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Host {
    pub hostname: String,
    pub kernel: String,
    pub boot_id: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FileReport {
    pub path: String,
    /// `file_seq` of its header (null without one).
    pub seq: Option<u32>,
    pub frames: u64,
    pub bytes: u64,
    /// Offset of an incomplete last frame.
    pub torn_tail: Option<u64>,
    /// `offset N: why` of a bad frame that ended the reading.
    pub corrupt: Option<String>,
}

/// Whether the recording holds everything that happened.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Completeness {
    /// Events the kernel dropped (ring buffer full), from the last counters.
    pub dropped: u64,
    /// Runs of portx's programs the kernel skipped (their events are missing), from
    /// the last counters; 0 in recordings of an older portx.
    pub skipped_runs: u64,
    /// Events a flight recorder evicted from its window before writing.
    pub evicted: u64,
    /// Sockets whose close never reached portx, as the recording's inputs show them
    /// to the model (`drift.closes_missed`; docs/missed-moves.md).
    pub closes_missed: u64,
    /// Files whose last frame was cut short (what precedes it is reported).
    pub torn_tail: Vec<String>,
    /// `path: offset N: why` of files whose reading ended at a bad frame.
    pub corrupt: Vec<String>,
    pub gaps: Vec<Gap>,
    /// Frames of types this portx does not know, skipped.
    pub unknown_frames: u64,
    /// None of the above.
    pub ok: bool,
}

/// Something missing between the files of a set.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Gap {
    /// `missing_files` (file_seq numbers absent) or `time` (files do not meet).
    pub kind: String,
    /// file_seq of the file before the gap (null: before the first file).
    pub after_seq: Option<u32>,
    pub before_seq: u32,
    /// The absent file_seq numbers, first and last (for `missing_files`).
    pub missing: Option<(u32, u32)>,
    /// Seconds between the end of the file before and the start of the one after.
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Trigger {
    pub at: String,
    pub at_ns: u64,
    pub spec: String,
    pub reason: String,
}

/// The first failed connect()/bind(), as `portx top` shows a failure.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FirstFailure {
    pub at: String,
    #[serde(flatten)]
    pub failure: Failure,
}

/// Failures of one kind, errno, process and destination (and port, for bind()).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailureGroup {
    /// `connect_error` or `bind_error`.
    pub event: String,
    pub error: Option<String>,
    pub errno: Option<u32>,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The caller's workload, where the recording named its cgroup.
    pub workload: Option<crate::workload::Workload>,
    pub daddr: String,
    pub dport: u16,
    /// bind(): the port asked for; null for connect() (its source port varies).
    pub sport: Option<u16>,
    pub count: u64,
    /// RFC 3339 of the first and last occurrence.
    pub first: String,
    pub last: String,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Who held the port at the first occurrence.
    pub holder: Option<Holder>,
    /// The model's explanation at the first occurrence.
    pub explanation: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DestinationReport {
    pub netns: u32,
    pub saddr: String,
    pub daddr: String,
    pub dport: u16,
    pub capacity: u32,
    pub peak_used: u32,
    /// RFC 3339 of the first time the peak was reached.
    pub peak_at: String,
    pub peak_at_ns: u64,
    /// Most ports first (the top few).
    pub holders_at_peak: Vec<OwnerPorts>,
    pub timewait_at_peak: u32,
    /// `timewait_at_peak / peak_used` (0 when nothing was used).
    pub timewait_share: f64,
    /// Use over time for the busiest destinations (null for the others).
    pub series: Option<DestSeries>,
}

impl DestinationReport {
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            f64::from(self.peak_used) / f64::from(self.capacity)
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DestSeries {
    /// At most [`MAX_POINTS`], in time order; each is the level after an event (a
    /// step chart), the highest of its time bucket.
    pub points: Vec<Point>,
    /// Boot-time clock of the failures about this destination: connect() to it, and
    /// bind() of a port a connection to it held.
    pub failures: Vec<u64>,
}

//! The capture format: `portx record` writes it, the flight recorder keeps it in
//! memory, `portx report` and `portx top --replay` read it. Pure: files and bytes,
//! no kernel access. The format is specified in `docs/capture-format.md`.
//!
//! A file is a magic and a sequence of self-contained frames (`frame`): each says its
//! type, length and checksum, and is decodable alone, so a reader recovers every frame
//! whose write completed and skips types it does not know. The content of a frame is
//! a [`Record`]; a file's events are written in batches (`codec`), one frame per batch.

use serde::{Deserialize, Serialize};

use crate::{
    events::filter::Filter, kernel::loader::HookPath, model::input::Input, workload::Named,
};

mod body;
pub mod civil;
pub mod codec;
pub mod disk;
pub mod frame;
pub mod reader;
pub mod ring;
pub mod rotate;
#[cfg(test)]
mod testdata;
pub mod writer;

/// The first eight bytes of every capture file.
pub const MAGIC: [u8; 8] = *b"PORTXCAP";
/// Format version written in the header; readers accept what they know and skip
/// frame types they do not.
pub const FORMAT_VERSION: u16 = 1;

/// How the file was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// `portx record -o`: everything from start to stop (or rotation).
    Record,
    /// A flight recorder's dump: the window before a trigger and a tail after it.
    FlightRecorder { window_s: u32, post_s: u32 },
}

/// What a later reader needs and cannot look up: the first frame of every file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    pub format_version: u16,
    pub portx_version: String,
    pub hostname: String,
    pub kernel_release: String,
    /// `/proc/sys/kernel/random/boot_id`: timestamps of two files compare only when
    /// it is the same.
    pub boot_id: String,
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME` when the file was started, nanoseconds:
    /// an event's wall-clock time is `ts_ns + boot_to_wall_ns`.
    pub boot_to_wall_ns: i64,
    /// Seconds east of UTC of the recording machine's local time zone.
    pub utc_offset_s: i32,
    /// Boot-time clock when the file was started.
    pub started_ns: u64,
    /// Random, the same for every file of one `portx record` run (a rotation set, or
    /// a flight recorder's dumps).
    pub recording_id: u64,
    /// 0, 1, 2, ... within the run: a missing number is a gap.
    pub file_seq: u32,
    pub mode: Mode,
    /// The attach point serving each need.
    pub hooks: Vec<HookPath>,
    /// What was recorded (the same filter `portx trace` takes).
    pub filter: Filter,
    /// TIME_WAIT ends are reported by a hook (not only modelled as 60 s).
    pub exact_timewait: bool,
    /// The command line, for the record.
    pub command: Vec<String>,
}

/// Running totals, written when they change (at most every flush) and at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Boot-time clock.
    pub at_ns: u64,
    /// Events the kernel dropped (ring buffer full) since the recording started.
    pub kernel_dropped: u64,
    /// Events a flight recorder evicted from its window (memory bound) before this
    /// file was written, and the time of the newest one evicted.
    pub evicted_events: u64,
    pub evicted_until_ns: u64,
    /// Runs of portx's programs the kernel skipped (the program already running on
    /// that CPU) since the recording started: their events are missing too. Appended
    /// after format version 1: absent (read as 0) in files of an older portx.
    pub kernel_skipped_runs: u64,
}

/// A flight recorder's trigger that fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerFired {
    /// Boot-time clock.
    pub at_ns: u64,
    /// The spec as given (`failure:EADDRNOTAVAIL`, `util:90`, `signal`, ...).
    pub spec: String,
    /// What happened, in one line ("connect() by curl(4242) to 10.0.0.5:443 failed: EADDRNOTAVAIL").
    pub reason: String,
}

/// The end of a file written by a clean stop (absent after kill -9: not an error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndSummary {
    /// Boot-time clock.
    pub at_ns: u64,
    /// Events in this file.
    pub events: u64,
    /// Why the file ended.
    pub rotated: bool,
}

/// What a cgroup id of the recording was, as the recording host named it: its path
/// and what the kubelet's logs said of its pod. The reader classifies the path
/// again ([`crate::workload::classify`]), so a newer portx reads a newer layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupName {
    pub id: u64,
    pub path: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
}

impl CgroupName {
    pub fn new(id: u64, n: &Named) -> Self {
        Self {
            id,
            path: n.cgroup.clone(),
            namespace: n.workload.namespace.clone(),
            pod: n.workload.pod.clone(),
            container: n.workload.container.clone(),
        }
    }

    pub fn to_named(&self) -> Named {
        let mut w = crate::workload::classify(&self.path);
        if let (Some(ns), Some(pod)) = (&self.namespace, &self.pod) {
            w.set_pod_names(ns, pod, self.container.as_deref());
        }
        Named::from_parts(self.path.clone(), w)
    }
}

/// A recording's names of cgroup ids, as its Cgroups frames give them.
pub type NameTable = std::collections::HashMap<u64, std::sync::Arc<Named>>;

/// Adds a Cgroups frame's names to `table` (a later frame's name wins).
pub fn remember_names(table: &mut NameTable, names: &[CgroupName]) {
    for n in names {
        table.insert(n.id, std::sync::Arc::new(n.to_named()));
    }
}

/// The content of one frame (an events frame yields one `Input::Event` per event).
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Header(Box<FileHeader>),
    Input(Input),
    Counters(Counters),
    Trigger(TriggerFired),
    End(EndSummary),
    /// Names of cgroup ids: each file has every name its events need, before them.
    Cgroups(Vec<CgroupName>),
}

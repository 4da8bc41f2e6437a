//! What `portx top` shows and `portx top --once --json` prints: a point-in-time view of
//! the port accounting model. Field names are part of portx's interface (README).

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};

use super::{clients::ClientView, diagnosis::Diagnosis};
use crate::{views::output::JsonEvent, workload::Workload};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// When this picture of the kernel holds (RFC 3339, UTC, milliseconds). A snapshot
    /// `portx top` prints counts every socket change the kernel made before it; in
    /// a replay, the recording's time. Empty where nothing set it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
    pub netns: Vec<NetnsUsage>,
    /// Recent failed connect()/bind() calls, newest last.
    pub failures: Vec<Failure>,
    /// Events the kernel could not deliver (ring buffer full) since start.
    pub dropped_events: u64,
    /// Runs of portx's programs the kernel skipped since start because the program
    /// was already running on that CPU (a softirq nested in it): what they would have
    /// sent is missing too.
    #[serde(default)]
    pub skipped_runs: u64,
    /// TIME_WAIT entries the model corrected after comparing with the kernel's own
    /// view (sock_diag): added (the model missed them) and removed (already gone).
    pub drift: Drift,
    /// The attach point serving each need (state, connect, bind, timewait).
    pub hooks: Vec<crate::kernel::loader::HookPath>,
    /// Ports held per workload (pod, container, unit) across namespaces, most first;
    /// filled when cgroups can be named ([`crate::workload::annotate`]).
    #[serde(default)]
    pub workloads: Vec<WorkloadUsage>,
    /// Why destinations run out and what to change, most severe first.
    #[serde(default)]
    pub diagnoses: Vec<Diagnosis>,
}

/// One workload's ports and the processes holding them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkloadUsage {
    pub workload: Workload,
    /// Its cgroups' paths (a pod has one per container).
    pub cgroups: Vec<String>,
    /// Local ports held, summed over its processes.
    pub ports: u64,
    /// Most ports first.
    pub processes: Vec<WorkloadProcess>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkloadProcess {
    pub pid: u32,
    pub comm: String,
    pub netns: u32,
    pub ports: u32,
    /// In a pod: the container's name, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    pub checks: u64,
    pub added: u64,
    pub removed: u64,
    /// Sockets of the start-up baseline forgotten because the kernel no longer had
    /// them ([`super::Model::forget_baseline`]).
    #[serde(default)]
    pub baseline_gone: u64,
    /// Sockets whose close never came (docs/missed-moves.md): drift checks over a
    /// second apart both found the live socket's 4-tuple as a timewait socket, into
    /// which it was closed (`Model::reconcile_timewait`, counted in `added` too), or a
    /// new socket took its kernel address while the model still held it
    /// (`Model::on_state`; a check then adds any timewait socket it left).
    #[serde(default)]
    pub closes_missed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct NetnsUsage {
    pub inode: u32,
    /// `ip netns` name when it has one.
    pub name: Option<String>,
    /// `net.ipv4.ip_local_port_range` (also used by IPv6).
    pub port_range: [u16; 2],
    /// Source ports a connect() toward one destination can count on.
    pub capacity: u32,
    /// Busiest first.
    pub destinations: Vec<DestUsage>,
    /// Most ports first.
    pub processes: Vec<ProcessUsage>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct DestUsage {
    pub saddr: String,
    pub daddr: String,
    pub dport: u16,
    /// Local ports inside the ephemeral range held toward this destination.
    pub used: u32,
    pub capacity: u32,
    /// Sockets toward this destination by TCP state name (TIME_WAIT included). The
    /// names are static (no allocation each, at 100k destinations a snapshot).
    pub states: BTreeMap<Cow<'static, str>, u32>,
    /// New source ports allocated per second, recently.
    pub rate_per_s: f64,
    /// Seconds until `used` reaches `capacity` at the current rate; null when not growing.
    pub eta_s: Option<f64>,
    /// Most ports first.
    pub owners: Vec<OwnerPorts>,
    /// Of `used`, TIME_WAIT ports a new connect() may take over (`tcp_tw_reuse`
    /// applies here and they are over a second old): held, but not a limit.
    #[serde(default)]
    pub reusable: u32,
    /// Ports the clients will hold if they keep behaving as measured (rate x how long
    /// each connection holds its port); null until every opening client has closed
    /// some connections.
    #[serde(default)]
    pub steady_state: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct OwnerPorts {
    pub pid: u32,
    pub comm: String,
    pub ports: u32,
    #[serde(default)]
    pub cgroup_id: u64,
    /// Boxed, as `client`: a snapshot holds an owner per destination, and a
    /// scrape of 100k destinations moves and sorts them all.
    #[serde(default)]
    pub workload: Option<Box<Workload>>,
    /// How this owner connects to the destination (rate, lifetime, who closes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Box<ClientView>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Local ports held (sockets in any state but LISTEN and CLOSE).
    pub ports: u32,
    /// The cgroup's path, when it could be resolved.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub workload: Option<Workload>,
}

/// A failed connect()/bind(): the trace event's fields, and who held the port.
/// Repeats of one failure are one entry (see `Model::on_failure`); its event, holder
/// and explanation are those of the latest occurrence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Failure {
    #[serde(flatten)]
    pub event: JsonEvent,
    pub holder: Option<Holder>,
    /// One line a person can act on.
    pub explanation: String,
    /// Occurrences, at least 1.
    pub count: u64,
    /// Boot-time clock, as `ts_ns`, of the first and the latest occurrence.
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
    pub state: String,
    /// The port was taken as an ephemeral source port by connect(), not bound.
    pub ephemeral: bool,
    #[serde(default)]
    pub cgroup_id: u64,
    #[serde(default)]
    pub workload: Option<Workload>,
}

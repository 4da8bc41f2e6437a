//! `portx serve`'s metrics, built from a model [`Snapshot`] and the serve loop's own
//! counters at each scrape, encoded in the Prometheus text format (0.0.4) by the
//! official `prometheus-client` crate.
//!
//! Pure: no kernel, no clock of its own (the caller passes the time), so the output is
//! tested against a golden file. Series are rebuilt at every scrape, so a destination
//! or holder that vanished from the model goes away; the only state kept between
//! scrapes is when each series was last in its top K ([`Retention`]), and the
//! counters, which only grow.
//!
//! Cardinality is bounded by design: per exported namespace at most `2 K` destination
//! series for each of the two destination metrics (the top K plus at most K that left
//! it less than [`RETAIN_NS`] ago), `2 K` holders, `2 K` workloads, and a fixed set of errno series;
//! at most [`MAX_NETNS`] namespaces. See [`series_bound`].

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    events::{Kind, TraceEvent},
    kernel::loader::HookPath,
    model::snapshot::Snapshot,
};

/// Errno values that get their own `errno` label value; the rest are `other`.
pub const ERRNOS: [(&str, i32); 9] = [
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("EACCES", libc::EACCES),
    ("EPERM", libc::EPERM),
    ("EINVAL", libc::EINVAL),
];
/// Slots per errno counter: the fixed list, then `other`.
const ERRNO_SLOTS: usize = ERRNOS.len() + 1;

/// Default number of destinations (and holders) exported per namespace.
pub const DEFAULT_TOP_K: usize = 20;
/// How long a series stays after leaving the top K: 5 minutes.
pub const RETAIN_NS: u64 = 300 * 1_000_000_000;
/// Namespaces exported at most (the busiest first).
pub const MAX_NETNS: usize = 64;

/// The most series one scrape can hold with top K `k`: what `sample_limit` must allow.
/// Per namespace: capacity, used_max, connects, binds (4), 2 K destinations for each
/// of used, reusable and time_wait, 2 K holders, 2 K workloads, K diagnoses, 10 errno
/// series for each of connect and bind errors; plus the self metrics (build, dropped,
/// skipped runs, drift, closes missed, sockets, scrape duration, 4 omitted kinds, 4
/// attach needs: 14).
pub const fn series_bound(k: usize) -> usize {
    MAX_NETNS * (4 + 3 * (2 * k) + 2 * k + 2 * k + k + 2 * ERRNO_SLOTS) + 14
}

fn errno_slot(errno: u32) -> usize {
    ERRNOS
        .iter()
        .position(|(_, n)| *n as u32 == errno)
        .unwrap_or(ERRNOS.len())
}

fn errno_label(slot: usize) -> &'static str {
    ERRNOS.get(slot).map_or("other", |(name, _)| name)
}

/// One namespace's connect()/bind() counts since serve started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsCounters {
    /// connect() calls seen: connections that got a source port and an answer (the
    /// handshake went on), and calls that failed.
    pub connects: u64,
    pub binds: u64,
    pub connect_errors: [u64; ERRNO_SLOTS],
    pub bind_errors: [u64; ERRNO_SLOTS],
}

impl NsCounters {
    fn errors(&self) -> u64 {
        self.connect_errors.iter().chain(&self.bind_errors).sum()
    }
}

/// Counted in the serve loop from every event: the model keeps only recent failures,
/// and a counter must never go back.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub per_ns: BTreeMap<u32, NsCounters>,
}

impl Counters {
    /// Counts an event; a namespace the prober let go of (deleted: a stopped
    /// container) takes its counters with it, so its series end rather than pile up,
    /// one set per pod a node ever ran.
    pub fn on_input(&mut self, input: &crate::model::input::Input) {
        use crate::model::input::Input;
        match input {
            Input::Event(e) => self.on_event(e),
            Input::NetnsGone { netns } => {
                self.per_ns.remove(netns);
            }
            _ => {}
        }
    }

    pub fn on_event(&mut self, e: &TraceEvent) {
        let slot = || errno_slot(e.errno.unwrap_or(0));
        match e.kind {
            // A port allocated, told by the socket's transition out of SYN_SENT (the
            // accounting path serve runs on sends no `connect` events), whatever the
            // answer: a non-blocking connect() refused or timed out returned
            // EINPROGRESS, and its socket's move to CLOSE is all there is of it.
            Kind::State if e.left_syn_sent_with_port() => {
                self.per_ns.entry(e.netns).or_default().connects += 1;
            }
            // A failure with a local port had its SYN out and was counted at that
            // move; one without never got that far.
            Kind::ConnectError => {
                let c = self.per_ns.entry(e.netns).or_default();
                if e.sport == 0 {
                    c.connects += 1;
                }
                c.connect_errors[slot()] += 1;
            }
            Kind::Bind => self.per_ns.entry(e.netns).or_default().binds += 1,
            Kind::BindError => {
                let c = self.per_ns.entry(e.netns).or_default();
                c.binds += 1;
                c.bind_errors[slot()] += 1;
            }
            Kind::Connect | Kind::State | Kind::TimewaitEnd => {}
        }
    }
}

/// What the serve loop knows about itself, besides the snapshot.
#[derive(Clone, Debug, Default)]
pub struct SelfStats {
    /// Sockets and TIME_WAIT entries the model tracks.
    pub tracked_sockets: u64,
    /// Seconds this scrape took to snapshot the model (the loop's share of the work).
    pub scrape_seconds: f64,
}

/// When each series was last in its namespace's top K (boot-time ns).
#[derive(Debug)]
pub struct Retention<K> {
    last_top: FxHashMap<K, u64>,
}

impl<K> Default for Retention<K> {
    fn default() -> Self {
        Self {
            last_top: FxHashMap::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Retention<K> {
    /// From `ranked` (busiest first), the top `k` and up to `k` more that were in the
    /// top K less than `ttl_ns` ago (most recently first), in rank order; and how many
    /// were left out.
    pub fn select<V>(
        &mut self,
        ranked: Vec<(K, V)>,
        k: usize,
        ttl_ns: u64,
        now_ns: u64,
    ) -> (Vec<(K, V)>, usize) {
        let total = ranked.len();
        let mut kept = Vec::with_capacity(total.min(2 * k));
        let mut retained = Vec::new();
        for (i, (key, v)) in ranked.into_iter().enumerate() {
            if i < k {
                self.last_top.insert(key.clone(), now_ns);
                kept.push((key, v));
            } else if let Some(&t) = self.last_top.get(&key)
                && now_ns.saturating_sub(t) < ttl_ns
            {
                retained.push((t, i, key, v));
            }
        }
        // At most k retained: the ones in the top K most recently.
        retained.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        retained.truncate(k);
        retained.sort_by_key(|r| r.1);
        kept.extend(retained.into_iter().map(|(_, _, key, v)| (key, v)));
        let omitted = total - kept.len();
        (kept, omitted)
    }

    /// Forgets series out of the top K for `ttl_ns` or longer.
    pub fn expire(&mut self, ttl_ns: u64, now_ns: u64) {
        self.last_top
            .retain(|_, t| now_ns.saturating_sub(*t) < ttl_ns);
    }

    pub fn len(&self) -> usize {
        self.last_top.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_top.is_empty()
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug)]
enum Value {
    Gauge(i64),
    GaugeF(f64),
    Counter(u64),
}

/// One metric family as it is encoded: name (without `_total` for counters), help,
/// and its series in output order.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    series: Vec<(Labels, Value)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            counter: false,
            series: Vec::new(),
        }
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            counter: true,
            ..Self::gauge(name, help)
        }
    }
}

/// The families of one scrape, handed to `prometheus-client` as a collector of a fresh
/// registry.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut m = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, v) in &f.series {
                let e = m.encode_family(labels)?;
                match *v {
                    Value::Gauge(n) => ConstGauge::new(n).encode(e)?,
                    Value::GaugeF(x) => ConstGauge::new(x).encode(e)?,
                    Value::Counter(n) => ConstCounter::new(n).encode(e)?,
                }
            }
        }
        Ok(())
    }
}

/// The `Content-Type` of what [`Exporter::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Destination series key: a hash of netns, saddr, daddr and dport. Hashed rather
/// than cloned: a scrape looks up every destination of the snapshot (100k on a busy
/// host), and cloning two strings for each was a fifth of the scrape. A collision
/// would at worst keep one series a while longer, or drop one sooner.
type DestKey = u64;

fn dest_key(netns: u32, d: &crate::model::snapshot::DestUsage) -> DestKey {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = rustc_hash::FxHasher::default();
    (netns, &d.saddr, &d.daddr, d.dport).hash(&mut h);
    h.finish()
}

/// Builds the metrics text at each scrape, remembering only the top-K retention.
#[derive(Debug)]
pub struct Exporter {
    k: usize,
    ttl_ns: u64,
    version: String,
    dests: Retention<DestKey>,
    holders: Retention<(u32, String)>,
    workloads: Retention<(u32, WorkloadLabels)>,
}

/// A workload's labels: kind, workload (its name), namespace, pod, container, unit
/// (empty where they do not apply, which Prometheus reads as absent).
type WorkloadLabels = [String; 6];

const WORKLOAD_LABELS: [&str; 6] = ["kind", "workload", "namespace", "pod", "container", "unit"];

fn workload_labels(w: &crate::workload::Workload) -> WorkloadLabels {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    [
        w.kind.as_str().to_owned(),
        w.name.clone(),
        s(&w.namespace),
        s(&w.pod),
        s(&w.container),
        s(&w.unit),
    ]
}

impl Exporter {
    pub fn new(k: usize, version: &str) -> Self {
        Self {
            k,
            ttl_ns: RETAIN_NS,
            version: version.to_owned(),
            dests: Retention::default(),
            holders: Retention::default(),
            workloads: Retention::default(),
        }
    }

    /// The metrics text for `snap` (a full snapshot: every destination) at `now_ns`.
    pub fn render(
        &mut self,
        snap: &Snapshot,
        counters: &Counters,
        stats: &SelfStats,
        now_ns: u64,
    ) -> String {
        let families = self.families(snap, counters, stats, now_ns);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(families)));
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            out = format!("# portx: encoding failed: {e}\n");
        }
        out
    }

    fn families(
        &mut self,
        snap: &Snapshot,
        counters: &Counters,
        stats: &SelfStats,
        now_ns: u64,
    ) -> Vec<Family> {
        let k = self.k;
        let ttl = self.ttl_ns;
        self.dests.expire(ttl, now_ns);
        self.holders.expire(ttl, now_ns);
        self.workloads.expire(ttl, now_ns);

        let mut capacity = Family::gauge(
            "portx_ephemeral_port_capacity",
            "Source ports a connect() toward one destination can rely on (ip_local_port_range, rounded down to even, minus reserved ports).",
        );
        let mut used = Family::gauge(
            "portx_ephemeral_ports_used",
            "Local ports inside the ephemeral range held toward a destination (TIME_WAIT included); the top K destinations, kept 5 minutes after leaving it.",
        );
        let mut used_max = Family::gauge(
            "portx_ephemeral_ports_used_max",
            "Ports used toward the busiest destination of the namespace, exact whatever K.",
        );
        let mut reusable = Family::gauge(
            "portx_ephemeral_ports_reusable",
            "Of portx_ephemeral_ports_used, TIME_WAIT ports a new connect() may take over (tcp_tw_reuse applies and they are over 1 s old): held, but not a limit.",
        );
        let mut diagnosis = Family::gauge(
            "portx_diagnosis",
            "1 for each diagnosis of why a destination runs out of ports (id, severity), per client (comm, empty for the destination as a whole); the top K per namespace, critical first.",
        );
        let mut time_wait = Family::gauge(
            "portx_ephemeral_ports_time_wait",
            "Sockets in TIME_WAIT toward a destination, for the destinations of portx_ephemeral_ports_used.",
        );
        let mut connect_errors = Family::counter(
            "portx_connect_errors",
            "Failed connect() calls by errno (a fixed list, the rest as other) since portx serve started.",
        );
        let mut bind_errors = Family::counter(
            "portx_bind_errors",
            "Failed bind() calls by errno (a fixed list, the rest as other) since portx serve started.",
        );
        let mut connects = Family::counter(
            "portx_connects",
            "connect() calls seen (connections that got a source port and an answer, and failed calls) since portx serve started.",
        );
        let mut binds = Family::counter(
            "portx_binds",
            "bind() calls seen (successful and failed) since portx serve started.",
        );
        let mut held = Family::gauge(
            "portx_ports_held",
            "Local ports of outgoing connections held by processes of this name (TIME_WAIT they left included); the top K.",
        );
        let mut workload_held = Family::gauge(
            "portx_workload_ports_held",
            "Local ports of outgoing connections held by a workload (pod container, container, systemd unit; TIME_WAIT included); the top K.",
        );

        // Namespaces: the busiest first, at most MAX_NETNS.
        let by_inode: BTreeMap<u32, &crate::model::snapshot::NetnsUsage> =
            snap.netns.iter().map(|n| (n.inode, n)).collect();
        let inodes: BTreeSet<u32> = by_inode
            .keys()
            .chain(counters.per_ns.keys())
            .copied()
            .filter(|&i| i != 0)
            .collect();
        let busiest = |i: &u32| {
            let max = by_inode
                .get(i)
                .and_then(|n| n.destinations.iter().map(|d| d.used).max())
                .unwrap_or(0);
            let errors = counters.per_ns.get(i).map_or(0, NsCounters::errors);
            (std::cmp::Reverse(max), std::cmp::Reverse(errors), *i)
        };
        let mut ranked: Vec<u32> = inodes.into_iter().collect();
        ranked.sort_by_key(busiest);
        let omitted_netns = ranked.len().saturating_sub(MAX_NETNS);
        ranked.truncate(MAX_NETNS);
        ranked.sort_unstable();

        let mut omitted_dests = 0;
        let mut omitted_holders = 0;
        let mut omitted_workloads = 0;
        for inode in ranked {
            let ns = inode.to_string();
            let l = || vec![("netns", ns.clone())];
            if let Some(n) = by_inode.get(&inode) {
                capacity
                    .series
                    .push((l(), Value::Gauge(i64::from(n.capacity))));
                let max = n.destinations.iter().map(|d| d.used).max().unwrap_or(0);
                used_max.series.push((l(), Value::Gauge(i64::from(max))));
                // Destinations come busiest first from the snapshot.
                let ranked_dests = n
                    .destinations
                    .iter()
                    .map(|d| (dest_key(inode, d), d))
                    .collect();
                let (kept, omitted) = self.dests.select(ranked_dests, k, ttl, now_ns);
                omitted_dests += omitted;
                for (_, d) in kept {
                    let (u, r) = (d.used, d.reusable);
                    let tw = d.states.get("TIME_WAIT").copied().unwrap_or(0);
                    let labels = vec![
                        ("netns", ns.clone()),
                        ("saddr", d.saddr.clone()),
                        ("daddr", d.daddr.clone()),
                        ("dport", d.dport.to_string()),
                    ];
                    used.series
                        .push((labels.clone(), Value::Gauge(i64::from(u))));
                    reusable
                        .series
                        .push((labels.clone(), Value::Gauge(i64::from(r))));
                    time_wait.series.push((labels, Value::Gauge(i64::from(tw))));
                }
                // Diagnoses: the snapshot lists them most severe first.
                for d in snap.diagnoses.iter().filter(|d| d.netns == inode).take(k) {
                    diagnosis.series.push((
                        vec![
                            ("netns", ns.clone()),
                            ("id", d.id.clone()),
                            ("severity", d.severity.clone()),
                            ("saddr", d.saddr.clone()),
                            ("daddr", d.daddr.clone()),
                            ("dport", d.dport.to_string()),
                            (
                                "comm",
                                d.who.as_ref().map(|w| w.comm.clone()).unwrap_or_default(),
                            ),
                        ],
                        Value::Gauge(1),
                    ));
                }
                // Holders by process name: pids come and go, names are what people
                // look for, and they bound the series better.
                let mut by_comm: BTreeMap<&str, u64> = BTreeMap::new();
                for p in &n.processes {
                    *by_comm.entry(p.comm.as_str()).or_default() += u64::from(p.ports);
                }
                let mut comms: Vec<(&str, u64)> =
                    by_comm.into_iter().filter(|(_, n)| *n > 0).collect();
                comms.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                let ranked_holders = comms
                    .into_iter()
                    .map(|(c, n)| ((inode, c.to_owned()), n))
                    .collect();
                let (kept, omitted) = self.holders.select(ranked_holders, k, ttl, now_ns);
                omitted_holders += omitted;
                for ((_, comm), ports) in kept {
                    held.series.push((
                        vec![("netns", ns.clone()), ("comm", comm)],
                        Value::Gauge(ports as i64),
                    ));
                }
                // Workloads: named cgroups only (the rest are in portx_ports_held).
                let mut by_workload: BTreeMap<WorkloadLabels, u64> = BTreeMap::new();
                for p in &n.processes {
                    if let Some(w) = &p.workload {
                        *by_workload.entry(workload_labels(w)).or_default() += u64::from(p.ports);
                    }
                }
                let mut ranked: Vec<(WorkloadLabels, u64)> =
                    by_workload.into_iter().filter(|(_, n)| *n > 0).collect();
                ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let ranked = ranked.into_iter().map(|(l, n)| ((inode, l), n)).collect();
                let (kept, omitted) = self.workloads.select(ranked, k, ttl, now_ns);
                omitted_workloads += omitted;
                for ((_, labels), ports) in kept {
                    let mut l = vec![("netns", ns.clone())];
                    l.extend(WORKLOAD_LABELS.into_iter().zip(labels));
                    workload_held.series.push((l, Value::Gauge(ports as i64)));
                }
            }
            let c = counters.per_ns.get(&inode).cloned().unwrap_or_default();
            connects.series.push((l(), Value::Counter(c.connects)));
            binds.series.push((l(), Value::Counter(c.binds)));
            for slot in 0..ERRNO_SLOTS {
                let labels = vec![("netns", ns.clone()), ("errno", errno_label(slot).into())];
                connect_errors
                    .series
                    .push((labels.clone(), Value::Counter(c.connect_errors[slot])));
                bind_errors
                    .series
                    .push((labels, Value::Counter(c.bind_errors[slot])));
            }
        }

        let mut build = Family::gauge("portx_build_info", "portx's version; always 1.");
        build
            .series
            .push((vec![("version", self.version.clone())], Value::Gauge(1)));
        let mut dropped = Family::counter(
            "portx_events_dropped",
            "Events the kernel could not deliver because the ring buffer was full.",
        );
        dropped
            .series
            .push((Vec::new(), Value::Counter(snap.dropped_events)));
        let mut skipped = Family::counter(
            "portx_program_runs_skipped",
            "Runs of portx's programs the kernel skipped because the program was already running on that CPU (nested in a softirq); their events are missing.",
        );
        skipped
            .series
            .push((Vec::new(), Value::Counter(snap.skipped_runs)));
        let mut drift = Family::counter(
            "portx_drift_corrections",
            "TIME_WAIT entries the model corrected after comparing with the kernel's sock_diag view (added plus removed).",
        );
        drift.series.push((
            Vec::new(),
            Value::Counter(snap.drift.added + snap.drift.removed),
        ));
        let mut missed = Family::counter(
            "portx_closes_missed",
            "Sockets whose close never reached portx: drift checks over a second apart found the live socket's 4-tuple as a timewait socket, or a new socket took its kernel address while the model still held it.",
        );
        missed
            .series
            .push((Vec::new(), Value::Counter(snap.drift.closes_missed)));
        let mut sockets = Family::gauge(
            "portx_tracked_sockets",
            "Sockets and TIME_WAIT entries the model tracks.",
        );
        sockets
            .series
            .push((Vec::new(), Value::Gauge(stats.tracked_sockets as i64)));
        let mut omitted = Family::gauge(
            "portx_series_omitted",
            "Destinations, holders and namespaces left out of this scrape by the top K and the namespace cap.",
        );
        for (kind, n) in [
            ("destinations", omitted_dests),
            ("holders", omitted_holders),
            ("workloads", omitted_workloads),
            ("netns", omitted_netns),
        ] {
            omitted
                .series
                .push((vec![("kind", kind.into())], Value::Gauge(n as i64)));
        }
        let mut duration = Family::gauge(
            "portx_scrape_duration_seconds",
            "Seconds the event loop spent taking the model's snapshot for this scrape.",
        );
        duration
            .series
            .push((Vec::new(), Value::GaugeF(stats.scrape_seconds)));
        let mut attach = Family::gauge(
            "portx_attach_info",
            "The kind of attach point serving each need (state, connect, bind, timewait); always 1.",
        );
        attach.series.extend(snap.hooks.iter().map(|h: &HookPath| {
            (
                vec![("need", h.hook.clone()), ("path", h.kind().to_owned())],
                Value::Gauge(1),
            )
        }));

        vec![
            capacity,
            used,
            used_max,
            time_wait,
            reusable,
            diagnosis,
            connects,
            connect_errors,
            binds,
            bind_errors,
            held,
            workload_held,
            build,
            dropped,
            skipped,
            drift,
            missed,
            sockets,
            omitted,
            duration,
            attach,
        ]
    }
}

#[cfg(test)]
mod tests;

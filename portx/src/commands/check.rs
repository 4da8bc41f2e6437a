//! `portx check`: audit a namespace's port configuration and say exactly what to change.
//!
//! [`gather`] reads the settings and one sock_diag dump (kernel-facing); [`findings`]
//! applies the rules to them (pure, unit-tested with fixture values).

use std::{collections::HashMap, io::Read as _};

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::{
    events::TcpState,
    kernel::proc_owners::{self, ProcOwner},
    kernel::sockdiag::{self, DiagSocket, NetnsProbe, NetnsRef},
    model::{
        BaselineSocket, Model, NetnsConfig, Tuple, View,
        capacity::{capacity, is_ephemeral},
    },
    views::output::counted,
};

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warn,
    Critical,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Critical => "CRITICAL",
        }
    }
}

/// One finding. `id`s are stable (README).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub title: String,
    /// One sentence on the mechanism.
    pub detail: String,
    /// Commands to fix it now, then a line for `/etc/sysctl.d/` to keep it.
    pub fix: Vec<String>,
}

/// The settings the rules look at (one namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub port_range: (u16, u16),
    pub reserved: Vec<(u16, u16)>,
    pub tw_reuse: Option<u32>,
    pub fin_timeout: Option<u32>,
    pub max_tw_buckets: Option<u32>,
    pub somaxconn: Option<u32>,
    pub max_syn_backlog: Option<u32>,
    /// Config files that still set `tcp_tw_recycle` (host namespace only).
    pub tw_recycle_in: Vec<String>,
}

/// Everything the rules need.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub netns: u32,
    pub name: Option<String>,
    pub settings: Settings,
    pub sockets: Vec<DiagSocket>,
    pub owners: HashMap<u64, ProcOwner>,
    /// What could not be seen (e.g. without root).
    pub not_seen: Vec<String>,
}

/// A namespace's report (`portx check --json`).
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    pub netns: u32,
    pub name: Option<String>,
    pub findings: Vec<Finding>,
    pub not_seen: Vec<String>,
}

/// Ports of common services: a service on one of them inside the ephemeral range can
/// fail to bind after a restart.
pub const SERVICE_PORTS: &[(u16, &str)] = &[
    (2181, "ZooKeeper"),
    (3306, "MySQL"),
    (5432, "PostgreSQL"),
    (5672, "RabbitMQ"),
    (6379, "Redis"),
    (8080, "HTTP alternate"),
    (8443, "HTTPS alternate"),
    (9090, "Prometheus"),
    (9092, "Kafka"),
    (9200, "Elasticsearch"),
    (11211, "memcached"),
    (27017, "MongoDB"),
];

/// A capacity toward one destination below this is called small.
const SMALL_CAPACITY: u32 = 4096;
/// `portx check` writes persistent settings here.
const SYSCTL_FILE: &str = "/etc/sysctl.d/90-portx.conf";

fn persist(key: &str, value: &str) -> String {
    format!("echo '{key} = {value}' >> {SYSCTL_FILE}")
}

fn sysctl_w(key: &str, value: &str) -> String {
    if value.contains(' ') {
        format!("sysctl -w {key}=\"{value}\"")
    } else {
        format!("sysctl -w {key}={value}")
    }
}

/// `ip_local_reserved_ports` with `ports` added, in the kernel's "a-b,c" form.
pub fn reserved_with(reserved: &[(u16, u16)], ports: &[u16]) -> String {
    let mut all: Vec<(u16, u16)> = reserved.to_vec();
    all.extend(ports.iter().map(|&p| (p, p)));
    all.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in all {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn reserve_fix(settings: &Settings, ports: &[u16]) -> Vec<String> {
    let value = reserved_with(&settings.reserved, ports);
    vec![
        sysctl_w("net.ipv4.ip_local_reserved_ports", &value),
        persist("net.ipv4.ip_local_reserved_ports", &value),
    ]
}

fn owner_name(owners: &HashMap<u64, ProcOwner>, s: &DiagSocket) -> Option<String> {
    owners
        .get(&s.inode)
        .map(|o| format!("{}({})", o.comm, o.pid))
}

/// Applies every rule.
pub fn findings(inputs: &Inputs) -> Vec<Finding> {
    let st = &inputs.settings;
    let (lo, hi) = st.port_range;
    let cap = capacity(lo, hi, &st.reserved);
    let mut out = Vec::new();

    // The range itself.
    out.push(Finding {
        id: "port-range",
        severity: if cap < SMALL_CAPACITY { Severity::Warn } else { Severity::Info },
        title: format!("ip_local_port_range is {lo}-{hi}: {cap} source ports per destination"),
        detail: "Each outgoing connection takes a source port from this range, and toward one destination (address and port) a source address can hold at most this many at once, TIME_WAIT included, before connect() fails with EADDRNOTAVAIL.".into(),
        fix: if cap < SMALL_CAPACITY {
            vec![
                sysctl_w("net.ipv4.ip_local_port_range", "15000 65000"),
                persist("net.ipv4.ip_local_port_range", "15000 65000"),
            ]
        } else {
            Vec::new()
        },
    });

    // Listeners inside the range: one finding per port.
    let mut listening: Vec<(u16, Option<String>)> = Vec::new();
    for s in inputs
        .sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
    {
        if is_ephemeral(s.sport, lo, hi, &st.reserved)
            && !listening.iter().any(|(p, _)| *p == s.sport)
        {
            listening.push((s.sport, owner_name(&inputs.owners, s)));
        }
    }
    listening.sort();
    for (port, who) in &listening {
        let who = who
            .clone()
            .unwrap_or_else(|| "a process portx could not identify".into());
        out.push(Finding {
            id: "listener-in-ephemeral-range",
            severity: Severity::Critical,
            title: format!("{who} listens on port {port}, inside the ephemeral range {lo}-{hi}"),
            detail: format!("bind() claims a port while connect() takes any free one from the range for its source side: after {who} restarts, an outgoing connection can hold {port} first and the service's bind() fails with EADDRINUSE; reserve the port or move the range."),
            fix: reserve_fix(st, &[*port]),
        });
    }

    // Well-known service ports in the range, nothing listening on them now.
    let idle: Vec<(u16, &str)> = SERVICE_PORTS
        .iter()
        .copied()
        .filter(|(p, _)| is_ephemeral(*p, lo, hi, &st.reserved))
        .filter(|(p, _)| !listening.iter().any(|(l, _)| l == p))
        .collect();
    if !idle.is_empty() {
        let names = idle
            .iter()
            .map(|(p, n)| format!("{p} ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let ports: Vec<u16> = idle.iter().map(|(p, _)| *p).collect();
        out.push(Finding {
            id: "service-port-in-ephemeral-range",
            severity: Severity::Warn,
            title: format!("service ports inside the ephemeral range: {names}"),
            detail: "Nothing listens on them now, but a service started on one later can find it taken as an outgoing connection's source port and fail to bind with EADDRINUSE.".into(),
            fix: reserve_fix(st, &ports),
        });
    }

    // Use against capacity, from the model fed with this dump.
    let mut model = Model::new();
    model.set_netns_config(
        inputs.netns,
        NetnsConfig {
            name: inputs.name.clone(),
            port_range: st.port_range,
            reserved: st.reserved.clone(),
            tcp: crate::model::TcpSysctls {
                tw_reuse: st.tw_reuse,
                ..Default::default()
            },
        },
    );
    let baseline: Vec<BaselineSocket> = inputs
        .sockets
        .iter()
        .map(|s| BaselineSocket {
            sock: 0,
            tuple: Tuple::new(s.saddr, s.sport, s.daddr, s.dport),
            state: s.state,
            owner: inputs
                .owners
                .get(&s.inode)
                .map(|o| (o.pid, o.comm.clone(), o.cgroup_id)),
            expires_ms: s.expires_ms,
            orphan: s.inode == 0,
        })
        .collect();
    // Any time after boot: TIME_WAIT ages are reckoned back from it.
    model.load_baseline(inputs.netns, &baseline, 2 * crate::model::TIME_WAIT_NS);
    let snap = model.snapshot(View::default());
    let dests: Vec<_> = snap
        .netns
        .iter()
        .flat_map(|n| n.destinations.iter())
        .collect();
    // Every timewait socket counts toward tcp_max_tw_buckets, the FIN_WAIT2 ones of an
    // orphaned close too (inet_twsk_alloc checks tw_refcount, which holds them all).
    // https://elixir.bootlin.com/linux/v6.12/source/net/ipv4/inet_timewait_sock.c (inet_twsk_alloc)
    let tw_total = inputs.sockets.iter().filter(|s| s.timewait).count() as u32;
    for d in &dests {
        // TIME_WAIT the kernel hands back to connect() (tcp_tw_reuse) is no limit.
        let held = d.used.saturating_sub(d.reusable);
        let pct = (held * 100).checked_div(d.capacity).unwrap_or(100);
        if pct < 70 {
            continue;
        }
        let tw = d.states.get("TIME_WAIT").copied().unwrap_or(0);
        let reusable = if d.reusable > 0 {
            format!(" ({} of them reusable, not counted)", d.reusable)
        } else {
            String::new()
        };
        out.push(Finding {
            id: "destination-near-capacity",
            severity: if pct >= 90 { Severity::Critical } else { Severity::Warn },
            title: format!("{}:{} from {}: {held} of {} source ports in use ({pct}%), {tw} in TIME_WAIT{reusable}", d.daddr, d.dport, d.saddr, d.capacity),
            detail: "A connection is its 4-tuple, so toward one destination a source address has only the range's ports; when they are all held, new connect() calls fail with EADDRNOTAVAIL. Widen the range, add source addresses, reuse connections, or let connect() reuse TIME_WAIT ports (tcp_tw_reuse=1).".into(),
            fix: vec![
                sysctl_w("net.ipv4.ip_local_port_range", "15000 65000"),
                persist("net.ipv4.ip_local_port_range", "15000 65000"),
            ],
        });
    }
    if let Some(busiest) = dests.first() {
        let list = dests
            .iter()
            .take(3)
            .map(|d| {
                let tw = d.states.get("TIME_WAIT").copied().unwrap_or(0);
                format!(
                    "{}:{} {}/{} ({} TIME_WAIT)",
                    d.daddr, d.dport, d.used, d.capacity, tw
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Finding {
            id: "busiest-destinations",
            severity: Severity::Info,
            title: format!("busiest destinations: {list}"),
            detail: format!(
                "{} in use; the busiest holds {}.",
                counted(dests.len() as u64, "destination"),
                counted(busiest.used, "source port")
            ),
            fix: Vec::new(),
        });
    }

    // TIME_WAIT settings.
    let busiest_tw = dests
        .iter()
        .map(|d| (d.states.get("TIME_WAIT").copied().unwrap_or(0), d.capacity))
        .max()
        .unwrap_or((0, cap));
    if let Some(reuse) = st.tw_reuse {
        let meaning = match reuse {
            0 => "connect() never reuses a port still in TIME_WAIT",
            1 => {
                "connect() may reuse a TIME_WAIT port toward the same destination when TCP timestamps make it safe"
            }
            2 => "connect() reuses TIME_WAIT ports only for loopback traffic (the default)",
            _ => "an unknown value",
        };
        // TIME_WAIT holding a third of a destination's ports is worth acting on.
        let heavy = busiest_tw.0 > 0 && busiest_tw.0 * 3 >= busiest_tw.1;
        let warn = heavy && reuse != 1;
        out.push(Finding {
            id: "tcp-tw-reuse",
            severity: if warn { Severity::Warn } else { Severity::Info },
            title: format!("net.ipv4.tcp_tw_reuse = {reuse}: {meaning}"),
            detail: if warn {
                format!("TIME_WAIT holds {} of {} ports toward the busiest destination; with tcp_tw_reuse=1 connect() could take them back early (needs TCP timestamps on both ends).", busiest_tw.0, busiest_tw.1)
            } else {
                "A socket closed first by this host keeps its 4-tuple in TIME_WAIT for 60 s.".into()
            },
            fix: if warn {
                vec![sysctl_w("net.ipv4.tcp_tw_reuse", "1"), persist("net.ipv4.tcp_tw_reuse", "1")]
            } else {
                Vec::new()
            },
        });
    }
    if let Some(fin) = st.fin_timeout {
        let long = fin > 60;
        out.push(Finding {
            id: "tcp-fin-timeout",
            severity: if long { Severity::Warn } else { Severity::Info },
            title: format!("net.ipv4.tcp_fin_timeout = {fin} s"),
            detail: format!("A socket closed by its application while the peer has not closed yet (orphaned FIN_WAIT2) keeps its port for {fin} s{}.", if long { ", longer than TIME_WAIT's 60 s" } else { "" }),
            fix: if long {
                vec![sysctl_w("net.ipv4.tcp_fin_timeout", "60"), persist("net.ipv4.tcp_fin_timeout", "60")]
            } else {
                Vec::new()
            },
        });
    }
    if let Some(max) = st.max_tw_buckets {
        let (sev, what) = if tw_total >= max {
            (
                Severity::Critical,
                "reached: the kernel is closing sockets without TIME_WAIT (\"time wait bucket table overflow\"), which risks mixing old and new connections",
            )
        } else if u64::from(tw_total) * 5 >= u64::from(max) * 4 {
            (Severity::Warn, "almost reached")
        } else {
            (Severity::Ok, "far from reached")
        };
        let fix_value = (max.saturating_mul(2))
            .max(tw_total.saturating_mul(2))
            .to_string();
        out.push(Finding {
            id: "tcp-max-tw-buckets",
            severity: sev,
            title: format!("{tw_total} sockets in TIME_WAIT of net.ipv4.tcp_max_tw_buckets = {max}: {what}"),
            detail: "tcp_max_tw_buckets caps how many timewait sockets the namespace keeps (TIME_WAIT, and FIN_WAIT2 after an orphaned close, both counted here); past it, closing sockets skip TIME_WAIT.".into(),
            fix: if sev >= Severity::Warn {
                vec![sysctl_w("net.ipv4.tcp_max_tw_buckets", &fix_value), persist("net.ipv4.tcp_max_tw_buckets", &fix_value)]
            } else {
                Vec::new()
            },
        });
    }

    // Listen backlogs: full accept queues, and backlogs capped by somaxconn.
    if let Some(somax) = st.somaxconn {
        let listeners: Vec<&DiagSocket> = inputs
            .sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .collect();
        let full: Vec<String> = listeners
            .iter()
            .filter(|s| s.send_queue > 0 && s.recv_queue >= s.send_queue)
            .map(|s| format!("{} ({}/{})", s.sport, s.recv_queue, s.send_queue))
            .collect();
        let capped: Vec<String> = listeners
            .iter()
            .filter(|s| s.send_queue == somax)
            .map(|s| s.sport.to_string())
            .collect();
        let syn = st
            .max_syn_backlog
            .map_or(String::new(), |v| format!(", tcp_max_syn_backlog = {v}"));
        let target = (somax.max(1024) * 4).to_string();
        out.push(Finding {
            id: "listen-backlog",
            severity: if full.is_empty() { Severity::Info } else { Severity::Warn },
            title: if full.is_empty() {
                format!("net.core.somaxconn = {somax}{syn}; {}, none with a full accept queue", counted(listeners.len() as u64, "listener"))
            } else {
                format!("accept queue full on port {}", full.join(", "))
            },
            detail: format!("listen(backlog) is capped at somaxconn{}; when the accept queue is full new connections are dropped or retried, which clients see as slow or failed connects.", if capped.is_empty() { String::new() } else { format!(" (capped now on port {})", capped.join(", ")) }),
            fix: if full.is_empty() {
                Vec::new()
            } else {
                vec![sysctl_w("net.core.somaxconn", &target), persist("net.core.somaxconn", &target), "and raise the service's own listen backlog".into()]
            },
        });
    }

    for file in &st.tw_recycle_in {
        out.push(Finding {
            id: "tcp-tw-recycle",
            severity: Severity::Warn,
            title: format!("{file} sets net.ipv4.tcp_tw_recycle, which Linux 4.12 removed"),
            detail: "The setting no longer exists (it broke clients behind NAT), so the line only makes `sysctl -p` fail; use tcp_tw_reuse for outgoing connections instead.".into(),
            fix: vec![format!("sed -i '/tcp_tw_recycle/d' {file}")],
        });
    }
    out
}

/// Exit status: 0 when nothing is above info, 1 for warn, 2 for critical.
pub fn exit_status(reports: &[Report]) -> u8 {
    match reports
        .iter()
        .flat_map(|r| &r.findings)
        .map(|f| f.severity)
        .max()
    {
        Some(Severity::Critical) => 2,
        Some(Severity::Warn) => 1,
        _ => 0,
    }
}

pub fn render_text(r: &Report) -> String {
    let mut s = format!(
        "portx check: netns {}{}\n",
        r.netns,
        r.name.as_ref().map_or(String::new(), |n| format!(" ({n})"))
    );
    let mut sorted: Vec<&Finding> = r.findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in sorted {
        s.push_str(&format!(
            "[{}] {}: {}\n    {}\n",
            f.severity.label(),
            f.id,
            f.title,
            f.detail
        ));
        for (i, cmd) in f.fix.iter().enumerate() {
            s.push_str(&format!(
                "    {} {cmd}\n",
                if i == 0 { "fix:" } else { "    " }
            ));
        }
    }
    for n in &r.not_seen {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

// ---------------------------------------------------------------------------------
// Kernel-facing: reading one namespace.
// ---------------------------------------------------------------------------------

fn read_u32(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The TCP sysctls, read in the calling thread's namespace.
fn read_tcp_sysctls(s: &mut Settings) {
    s.tw_reuse = read_u32("/proc/sys/net/ipv4/tcp_tw_reuse");
    s.fin_timeout = read_u32("/proc/sys/net/ipv4/tcp_fin_timeout");
    s.max_tw_buckets = read_u32("/proc/sys/net/ipv4/tcp_max_tw_buckets");
    s.somaxconn = read_u32("/proc/sys/net/core/somaxconn");
    s.max_syn_backlog = read_u32("/proc/sys/net/ipv4/tcp_max_syn_backlog");
}

/// Config files that still mention `tcp_tw_recycle`.
fn tw_recycle_files() -> Vec<String> {
    let mut files = vec!["/etc/sysctl.conf".to_owned()];
    if let Ok(dir) = std::fs::read_dir("/etc/sysctl.d") {
        let mut more: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path().display().to_string())
            .filter(|p| p.ends_with(".conf"))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
        .into_iter()
        .filter(|f| {
            let mut text = String::new();
            std::fs::File::open(f)
                .and_then(|mut h| h.read_to_string(&mut text))
                .is_ok()
                && text.lines().any(|l| {
                    let l = l.trim();
                    !l.starts_with('#') && !l.starts_with(';') && l.contains("tcp_tw_recycle")
                })
        })
        .collect()
}

/// Reads one namespace: `ns = None` is the caller's own (works without root).
pub fn gather(ns: Option<&NetnsRef>) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let probe = match ns {
        Some(ns) => NetnsProbe::open(ns)?,
        None => NetnsProbe::open_current()?,
    };
    inputs.netns = probe.inode;
    inputs.name = ns.and_then(|n| n.name.clone());
    inputs.settings.port_range = probe.port_range()?;
    inputs.settings.reserved = probe.reserved_ports()?;
    match ns {
        Some(ns) => {
            let mut s = inputs.settings.clone();
            sockdiag::in_netns(ns, || {
                read_tcp_sysctls(&mut s);
                Ok(s)
            })
            .map(|s| inputs.settings = s)?;
        }
        None => read_tcp_sysctls(&mut inputs.settings),
    }
    let host = std::fs::metadata("/proc/1/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32 == inputs.netns)
        .unwrap_or(ns.is_none());
    if host {
        inputs.settings.tw_recycle_in = tw_recycle_files();
    }
    inputs.sockets = probe.dump_tcp(sockdiag::ALL_STATES)?;
    // Holders of this namespace's listeners: its own processes.
    inputs.owners = proc_owners::socket_owners(Some(probe.inode));
    let unattributed = inputs
        .sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen && !inputs.owners.contains_key(&s.inode))
        .count();
    // SAFETY: geteuid has no preconditions.
    if unattributed > 0 && unsafe { libc::geteuid() } != 0 {
        inputs.not_seen.push(format!(
            "{unattributed} listening sockets belong to processes this user cannot inspect; run as root to name them"
        ));
    }
    Ok(inputs)
}

pub fn report(inputs: &Inputs) -> Report {
    Report {
        netns: inputs.netns,
        name: inputs.name.clone(),
        findings: findings(inputs),
        not_seen: inputs.not_seen.clone(),
    }
}

/// Finds a namespace by `--netns` argument among those `list_netns` reaches.
pub fn find_netns(arg: &str) -> Result<NetnsRef> {
    let inode = crate::kernel::netns::resolve(arg)?;
    if let Some(found) = sockdiag::list_netns()?
        .into_iter()
        .find(|n| n.inode == inode)
    {
        return Ok(found);
    }
    // A path the user gave that no process or name reaches: use it as given.
    if arg.contains('/') {
        return Ok(NetnsRef {
            inode,
            name: None,
            path: arg.into(),
        });
    }
    Err(anyhow!(
        "network namespace {arg} (inode {inode}) has no process or name portx can reach"
    ))
}

/// `portx check`: returns the exit status (0, 1 or 2).
pub fn run(args: &crate::cli::CheckArgs) -> Result<u8> {
    let targets: Vec<Option<NetnsRef>> = if args.all_netns {
        sockdiag::list_netns()?.into_iter().map(Some).collect()
    } else if let Some(arg) = &args.netns {
        vec![Some(find_netns(arg)?)]
    } else {
        vec![None]
    };
    let mut reports = Vec::new();
    for t in &targets {
        match gather(t.as_ref()) {
            Ok(inputs) => {
                let mut r = report(&inputs);
                if let Some(secs) = args.watch {
                    let found = watch::diagnoses(inputs.netns, secs, args.verbose)?;
                    r.findings.extend(found.iter().map(watch::finding));
                    r.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
                }
                reports.push(r);
            }
            // With --all-netns one unreadable namespace (it just vanished) is a note.
            Err(e) if args.all_netns => eprintln!(
                "portx: skipping {}: {e:#}",
                t.as_ref().map_or(String::new(), ToString::to_string)
            ),
            Err(e) => return Err(e),
        }
    }
    if args.json {
        let text = if args.all_netns {
            serde_json::to_string(&reports)?
        } else {
            serde_json::to_string(&reports[0])?
        };
        println!("{text}");
    } else {
        for r in &reports {
            print!("{}", render_text(r));
        }
    }
    Ok(exit_status(&reports))
}

#[cfg(test)]
mod tests;
mod watch;

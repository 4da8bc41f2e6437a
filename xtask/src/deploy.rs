//! `cargo xtask deploy-check`: the deployment files under `deploy/` checked by the
//! tools that consume them (systemd-analyze, kubernetes-validate, promtool, man) and
//! against each other (labels, the port, the capability set, metric names); and
//! `cargo xtask dist`: a static musl binary and a `.deb`, with their checks.
//!
//! Each check prints one line (`ok` or `FAIL`, its name, what it saw); the last line is
//! `N passed, M failed`. The tools are installed when missing (Debian packages, and
//! kubernetes-validate in a venv kept beside bpf-linker).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::setup::{self, Tools};

/// What `portx serve` exports. The dashboard and the alert rules may name only these
/// and [`BUILTIN_METRICS`].
pub const METRICS: &[&str] = &[
    "portx_ephemeral_port_capacity",
    "portx_ephemeral_ports_used",
    "portx_ephemeral_ports_used_max",
    "portx_ephemeral_ports_time_wait",
    "portx_ephemeral_ports_reusable",
    "portx_diagnosis",
    "portx_connect_errors_total",
    "portx_bind_errors_total",
    "portx_connects_total",
    "portx_binds_total",
    "portx_ports_held",
    "portx_workload_ports_held",
    "portx_build_info",
    "portx_events_dropped_total",
    "portx_program_runs_skipped_total",
    "portx_drift_corrections_total",
    "portx_closes_missed_total",
    "portx_tracked_sockets",
    "portx_series_omitted",
    "portx_scrape_duration_seconds",
    "portx_attach_info",
];
/// Series Prometheus itself makes for every target.
const BUILTIN_METRICS: &[&str] = &["up"];

/// The capabilities portx uses, in the unit (`CAP_` + these) and the DaemonSet.
const CAPABILITIES: &[&str] = &[
    "BPF",
    "PERFMON",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];

/// kubernetes-validate ships the API schemas, so it works offline once installed.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest Kubernetes the manifests are for (`securityContext.appArmorProfile` is
/// 1.30's), and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// `systemd-analyze security` exposure (0-100, shown as 0.0-10.0) the unit must stay
/// under: it is 3.4 now; a hardening line lost shows here.
const SECURITY_THRESHOLD: &str = "40";

const MUSL: &str = "x86_64-unknown-linux-musl";
/// The package's Maintainer field unless `PORTX_DEB_MAINTAINER` says otherwise.
const DEFAULT_MAINTAINER: &str = "portx developers <portx@example.invalid>";
const SUBCOMMANDS: &[&str] = &["trace", "top", "record", "report", "check", "serve"];

/// One line per check, then the totals.
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn new() -> Self {
        Self {
            passed: 0,
            failed: 0,
        }
    }

    fn check(&mut self, name: &str, f: impl FnOnce() -> Result<String>) {
        let start = Instant::now();
        match f() {
            Ok(detail) => {
                self.passed += 1;
                println!(
                    "ok   {name}: {detail} ({:.1} s)",
                    start.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e:#}");
            }
        }
    }

    fn finish(&self) -> bool {
        println!("{} passed, {} failed", self.passed, self.failed);
        self.failed == 0
    }
}

/// The lines of a tool's output worth a FAIL line: not the passes
/// (kubernetes-validate's INFO lines), not a Python traceback's frames.
fn summarize(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.contains(" passed for resource ")
                && !l.starts_with("Traceback")
                && !l.starts_with("File \"")
                && !l.starts_with("^")
        })
        .collect();
    // A traceback's verdict is its last line.
    if text.contains("Traceback") {
        return lines.last().map_or_else(String::new, |l| (*l).to_owned());
    }
    lines
        .iter()
        .take(6)
        .copied()
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Runs `cmd`; its stdout when it exits 0 and writes nothing to stderr (the tools
/// here report problems as warnings with exit 0: `systemd-analyze verify` on a bad
/// value, `man --warnings`).
fn clean_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            program(cmd),
            out.status,
            summarize(&format!("{stderr}\n{stdout}"))
        );
    }
    if !stderr.trim().is_empty() {
        bail!("{} warned: {}", program(cmd), summarize(&stderr));
    }
    Ok(stdout)
}

/// Runs `cmd`; its stdout when it exits 0 (stderr may hold progress or info lines).
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            program(cmd),
            out.status,
            summarize(&format!(
                "{}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            ))
        );
    }
    Ok(stdout)
}

fn program(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The workspace as cargo sees it.
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub version: String,
}

pub fn workspace() -> Result<Workspace> {
    let json = output(Command::new(env!("CARGO")).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let meta: Value = serde_json::from_str(&json).context("parsing cargo metadata")?;
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let version = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "portx"))
        .and_then(|p| s(&p["version"]))
        .ok_or_else(|| anyhow!("no portx package in cargo metadata"))?;
    Ok(Workspace {
        root: s(&meta["workspace_root"])
            .ok_or_else(|| anyhow!("no workspace_root"))?
            .into(),
        target_dir: s(&meta["target_directory"])
            .ok_or_else(|| anyhow!("no target_directory"))?
            .into(),
        version,
    })
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("portx-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The Python of a venv holding kubernetes-validate (and its PyYAML and jsonschema),
/// made once under the tools directory.
fn ensure_kubernetes_validate() -> Result<PathBuf> {
    let venv = setup::tools_dir()?.join(format!("venv-{}", KUBERNETES_VALIDATE.replace("==", "-")));
    let python = venv.join("bin/python3");
    let ready = venv.join("bin/kubernetes-validate");
    if ready.is_file() {
        return Ok(python);
    }
    setup::ensure_commands(&[("python3", "python3")])?;
    let make = |_: ()| -> Result<()> {
        let _ = fs::remove_dir_all(&venv);
        output(Command::new("python3").arg("-m").arg("venv").arg(&venv)).map(drop)
    };
    if make(()).is_err() {
        // Debian's python3 keeps venv (ensurepip) in its own package.
        setup::apt_install(&["python3-venv"])?;
        make(())?;
    }
    eprintln!(
        "xtask: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    output(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", KUBERNETES_VALIDATE])
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    )
    .context("pip install (PyPI must be reachable the first time)")?;
    ensure!(
        ready.is_file(),
        "{} missing after pip install",
        ready.display()
    );
    Ok(python)
}

/// Every YAML document of `path` as JSON (PyYAML of the venv).
fn yaml_docs(python: &Path, path: &Path) -> Result<Vec<Value>> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let json = output(Command::new(python).args(["-c", SCRIPT]).arg(path))
        .with_context(|| format!("reading {} as YAML", path.display()))?;
    serde_json::from_str(&json).with_context(|| format!("{} as JSON", path.display()))
}

/// Metric names in a PromQL expression: identifiers that are not functions (followed by
/// `(`), keywords, label names in `by`/`on`/... lists or label matchers, durations,
/// strings or Grafana variables (`$instance`, `${DS}`, `$__rate_interval`).
pub fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "inf",
        "nan",
    ];
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_string = |i: usize| {
        let quote = b[i];
        let mut j = i + 1;
        while j < b.len() && b[j] != quote {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        j + 1
    };
    let skip_to = |mut j: usize, close: u8| {
        while j < b.len() && b[j] != close {
            j = if b[j] == b'"' || b[j] == b'\'' || b[j] == b'`' {
                skip_string(j)
            } else {
                j + 1
            };
        }
        j + 1
    };
    let is_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let is_cont = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(i);
        } else if c == b'{' {
            i = skip_to(i + 1, b'}');
        } else if c == b'[' {
            i = skip_to(i + 1, b']');
        } else if c == b'$' {
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = skip_to(i, b'}');
            } else {
                while i < b.len() && is_cont(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (is_cont(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < b.len() && is_cont(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let next = b.get(j).copied();
            if GROUPING.contains(&word) {
                if next == Some(b'(') {
                    i = skip_to(j + 1, b')');
                }
            } else if next == Some(b'(') || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                // A function call or a keyword.
            } else {
                names.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The names in `exprs` that portx does not export, or an error naming them.
fn only_known_metrics<'a>(exprs: impl IntoIterator<Item = &'a str>) -> Result<usize> {
    let mut used = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut n = 0;
    for expr in exprs {
        n += 1;
        let names = metric_names(expr);
        ensure!(!names.is_empty(), "no metric in `{expr}`");
        for name in names {
            if METRICS.contains(&name.as_str()) || BUILTIN_METRICS.contains(&name.as_str()) {
                used.insert(name);
            } else {
                unknown.insert(name);
            }
        }
    }
    ensure!(
        unknown.is_empty(),
        "not exported by portx serve: {}",
        unknown.into_iter().collect::<Vec<_>>().join(", ")
    );
    Ok(n)
}

/// `Key=Value` lines of a unit file, by key (comments and sections left out).
fn unit_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.trim().to_owned())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    keys
}

/// The port of an `ADDR:PORT` (the last colon's right side).
fn port_of(listen: &str) -> Result<u16> {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in `{listen}`"))
}

/// The unit's `--listen` port.
fn unit_port(unit: &BTreeMap<String, Vec<String>>) -> Result<u16> {
    let exec = unit
        .get("ExecStart")
        .and_then(|v| v.first())
        .ok_or_else(|| anyhow!("no ExecStart"))?;
    let mut words = exec.split_whitespace();
    while let Some(w) = words.next() {
        if let Some(l) = w.strip_prefix("--listen=") {
            return port_of(l);
        }
        if w == "--listen" {
            return port_of(words.next().unwrap_or_default());
        }
    }
    bail!("ExecStart has no --listen (serve's default would be implicit)")
}

fn check_unit(text: &str) -> Result<String> {
    let keys = unit_keys(text);
    let one = |k: &str| -> Result<&str> {
        match keys.get(k).map(Vec::as_slice) {
            Some([v]) => Ok(v.as_str()),
            Some(_) => bail!("{k}= set more than once"),
            None => bail!("{k}= missing"),
        }
    };
    for (k, want) in [
        ("Type", "notify"),
        ("User", "root"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
    ] {
        ensure!(one(k)? == want, "{k}={} (want {want})", one(k)?);
    }
    ensure!(
        one("ExecStart")?.starts_with("/usr/bin/portx serve"),
        "ExecStart={} (want /usr/bin/portx serve ...)",
        one("ExecStart")?
    );
    for k in [
        "PrivateNetwork",
        "PrivateUsers",
        "ProtectProc",
        "ProcSubset",
    ] {
        ensure!(
            !keys.contains_key(k),
            "{k}= set: portx needs the host's network, user namespace and every /proc/PID"
        );
    }
    let want: BTreeSet<String> = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
    for k in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let got: BTreeSet<String> = one(k)?.split_whitespace().map(str::to_owned).collect();
        ensure!(
            got == want,
            "{k}= is {got:?}, want exactly {want:?} (portx needs these and nothing else, not CAP_NET_ADMIN)"
        );
    }
    Ok(format!(
        "Type=notify, root with {} capabilities, port {}",
        want.len(),
        unit_port(&keys)?
    ))
}

fn check_unit_verify(ws: &Workspace, portx: &Path, tmp: &Path) -> Result<String> {
    let text = fs::read_to_string(ws.root.join("deploy/systemd/portx.service"))?;
    ensure!(
        text.contains("ExecStart=/usr/bin/portx "),
        "ExecStart is not /usr/bin/portx"
    );
    // verify wants the command to exist: point a copy at the built binary.
    let copy = tmp.join("portx.service");
    fs::write(
        &copy,
        text.replace(
            "ExecStart=/usr/bin/portx ",
            &format!("ExecStart={} ", portx.display()),
        ),
    )?;
    // And it runs `man` for Documentation=man:portx(8): serve it the page.
    let man8 = tmp.join("man/man8");
    fs::create_dir_all(&man8)?;
    fs::copy(ws.root.join("deploy/man/portx.8"), man8.join("portx.8"))?;
    clean_output(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("MANPATH", tmp.join("man")),
    )?;
    // Exit 1 above the threshold; the level is on the last line either way.
    let security = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=yes",
            &format!("--threshold={SECURITY_THRESHOLD}"),
            "--no-pager",
        ])
        .arg(&copy)
        .output()?;
    let text = String::from_utf8_lossy(&security.stdout);
    let level = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for portx.service: "))
        .and_then(|(_, l)| l.split_whitespace().next())
        .ok_or_else(|| {
            anyhow!(
                "systemd-analyze security: {}",
                summarize(&String::from_utf8_lossy(&security.stderr))
            )
        })?
        .to_owned();
    let threshold = SECURITY_THRESHOLD.parse::<f64>().unwrap_or(0.0) / 10.0;
    ensure!(
        security.status.success(),
        "systemd-analyze security: exposure {level}, above {threshold}: a hardening setting was lost"
    );
    Ok(format!(
        "systemd-analyze verify clean; security exposure {level} (at most {threshold})"
    ))
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn find_kind<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .ok_or_else(|| anyhow!("no {kind}"))
}

/// The manifests against each other and against what portx needs.
fn check_kubernetes_consistency(
    docs: &BTreeMap<&str, Vec<Value>>,
    unit_port: u16,
) -> Result<String> {
    let ds = find_kind(&docs["daemonset.yaml"], "DaemonSet")?;
    let ns = get(ds, "metadata.namespace")
        .as_str()
        .ok_or_else(|| anyhow!("DaemonSet has no namespace"))?;
    let namespace = find_kind(&docs["00-namespace.yaml"], "Namespace")?;
    ensure!(
        get(namespace, "metadata.name") == ns,
        "00-namespace.yaml makes {}, the DaemonSet is in {ns}",
        get(namespace, "metadata.name")
    );
    ensure!(
        get(namespace, "metadata.labels")["pod-security.kubernetes.io/enforce"] == "privileged",
        "namespace {ns} must allow privileged-level pods (hostPID, hostPath, capabilities)"
    );
    let pod = get(ds, "spec.template.spec");
    let pod_labels = str_map(get(ds, "spec.template.metadata.labels"));
    ensure!(
        selects(&str_map(get(ds, "spec.selector.matchLabels")), &pod_labels),
        "the DaemonSet's selector does not match its pods"
    );
    ensure!(pod["hostPID"] == true, "hostPID is not true");
    ensure!(pod["hostNetwork"] == true, "hostNetwork is not true");
    let tolerates_all = pod["tolerations"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null())
    });
    ensure!(
        tolerates_all,
        "no `operator: Exists` toleration for all taints"
    );
    let containers = pod["containers"]
        .as_array()
        .ok_or_else(|| anyhow!("no containers"))?;
    ensure!(containers.len() == 1, "one container expected");
    let c = &containers[0];
    let sc = &c["securityContext"];
    for (k, want) in [
        ("privileged", Value::Bool(false)),
        ("allowPrivilegeEscalation", Value::Bool(false)),
        ("readOnlyRootFilesystem", Value::Bool(true)),
        ("runAsUser", Value::from(0)),
    ] {
        ensure!(
            sc[k] == want,
            "securityContext.{k} is {}, want {want}",
            sc[k]
        );
    }
    let caps = |k: &str| -> BTreeSet<String> {
        sc["capabilities"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    ensure!(
        caps("drop") == BTreeSet::from(["ALL".to_owned()]),
        "capabilities.drop is not [ALL]"
    );
    let want: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    ensure!(
        caps("add") == want,
        "capabilities.add is {:?}, want {want:?}",
        caps("add")
    );
    let port = c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "metrics"))
        .and_then(|p| p["containerPort"].as_u64())
        .ok_or_else(|| anyhow!("no container port named metrics"))?;
    let args: Vec<&str> = c["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(
        args.first() == Some(&"serve"),
        "args do not start with serve"
    );
    let listen = args
        .iter()
        .zip(args.iter().skip(1).chain([&""]))
        .find_map(|(a, next)| {
            a.strip_prefix("--listen=")
                .or((*a == "--listen").then_some(*next))
        })
        .ok_or_else(|| anyhow!("no --listen in args"))?;
    ensure!(
        listen.starts_with("0.0.0.0:"),
        "--listen {listen}: probes and scrapes come on the node IP"
    );
    ensure!(
        u64::from(port_of(listen)?) == port,
        "--listen {listen} but containerPort {port}"
    );
    ensure!(
        u64::from(unit_port) == port,
        "the systemd unit listens on {unit_port}, the DaemonSet on {port}"
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let h = &c[probe]["httpGet"];
        ensure!(
            h["path"] == "/healthz" && h["port"] == "metrics",
            "{probe} is not httpGet /healthz on port metrics"
        );
    }
    let node_name = c["env"].as_array().is_some_and(|e| {
        e.iter().any(|e| {
            e["name"] == "NODE_NAME" && get(e, "valueFrom.fieldRef.fieldPath") == "spec.nodeName"
        })
    });
    ensure!(node_name, "no NODE_NAME from spec.nodeName");
    for k in ["requests", "limits"] {
        let r = &c["resources"][k];
        ensure!(
            r["cpu"].is_string() && r["memory"].is_string(),
            "resources.{k} lacks cpu or memory"
        );
    }
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    for m in &mounts {
        ensure!(
            m["readOnly"] == true,
            "volume mount {} is not read-only",
            m["mountPath"]
        );
    }
    let mounted: BTreeSet<String> = mounts
        .iter()
        .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
        .collect();
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/run/netns"] {
        ensure!(mounted.contains(path), "{path} is not mounted");
    }
    // Workload names: the host's cgroup tree, /proc and kubelet logs under the
    // --host-root portx is given.
    let host_root = args
        .iter()
        .find_map(|a| a.strip_prefix("--host-root="))
        .ok_or_else(|| anyhow!("no --host-root=DIR in args"))?;
    for path in [
        "/proc",
        "/sys/fs/cgroup",
        "/var/log/pods",
        "/var/log/containers",
    ] {
        let under = format!("{}{path}", host_root.trim_end_matches('/'));
        ensure!(
            mounted.contains(&under),
            "{under} is not mounted (--host-root={host_root})"
        );
    }

    let svc = find_kind(&docs["service.yaml"], "Service")?;
    ensure!(get(svc, "metadata.namespace") == ns, "Service not in {ns}");
    ensure!(
        selects(&str_map(get(svc, "spec.selector")), &pod_labels),
        "the Service's selector does not match the pods"
    );
    let svc_port = get(svc, "spec.ports")
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "metrics"))
        .ok_or_else(|| anyhow!("the Service has no port named metrics"))?;
    ensure!(
        svc_port["targetPort"] == "metrics" && svc_port["port"].as_u64() == Some(port),
        "the Service's metrics port is {svc_port}, want port {port}, targetPort metrics"
    );

    let pm = find_kind(&docs["podmonitor.yaml"], "PodMonitor")?;
    ensure!(
        selects(&str_map(get(pm, "spec.selector.matchLabels")), &pod_labels),
        "the PodMonitor's selector does not match the pods"
    );
    let ns_ok = get(pm, "spec.namespaceSelector.matchNames")
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n == ns))
        || get(pm, "metadata.namespace") == ns;
    ensure!(ns_ok, "the PodMonitor does not look in namespace {ns}");
    let job = get(pm, "spec.jobLabel")
        .as_str()
        .and_then(|l| pod_labels.get(l));
    ensure!(
        job.map(String::as_str) == Some("portx"),
        "the PodMonitor's jobLabel gives job={job:?}; the alerts and dashboard want job=\"portx\""
    );
    let endpoints_ok = get(pm, "spec.podMetricsEndpoints")
        .as_array()
        .is_some_and(|e| {
            !e.is_empty()
                && e.iter()
                    .all(|e| e["port"] == "metrics" && e["path"] == "/metrics")
        });
    ensure!(
        endpoints_ok,
        "PodMonitor endpoints are not port metrics, path /metrics"
    );
    Ok(format!(
        "namespace {ns}, selectors match, port {port} (unit, DaemonSet, Service), {} capabilities, {} read-only mounts",
        want.len(),
        mounts.len()
    ))
}

/// Every `expr` string under `v` (panels, rows' panels, targets), with where it is.
fn dashboard_exprs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let here = match (m.get("title"), m.get("refId")) {
                (Some(Value::String(t)), _) => format!("{at}/{t}"),
                (_, Some(Value::String(r))) => format!("{at}/{r}"),
                _ => at.to_owned(),
            };
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push((here.clone(), e.clone())),
                    _ => dashboard_exprs(v, &here, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, at, out)),
        _ => {}
    }
}

/// The metric selector of a `label_values(SELECTOR, label)` variable query.
fn variable_selector(query: &str) -> Option<&str> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    Some(inner.rsplit_once(',').map_or(inner, |(sel, _)| sel).trim())
}

/// An expression with Grafana's variables replaced, for promtool.
fn without_grafana_variables(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (var, value) in [
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
    ] {
        out = out.replace(var, value);
    }
    // `$name` and `${name}` only appear inside label matchers here: any value.
    let mut res = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            res.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
        } else {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                chars.next();
            }
        }
        res.push_str(".*");
    }
    res
}

struct Dashboard {
    exprs: Vec<(String, String)>,
    variables: Vec<(String, String)>,
}

fn read_dashboard(path: &Path) -> Result<Dashboard> {
    let text = fs::read_to_string(path)?;
    let d: Value = serde_json::from_str(&text).context("not valid JSON")?;
    let vars = d["templating"]["list"]
        .as_array()
        .ok_or_else(|| anyhow!("no templating.list"))?;
    let names: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    for want in ["DS_PROMETHEUS", "instance", "netns"] {
        ensure!(names.contains(want), "no `{want}` variable");
    }
    let panels = d["panels"].as_array().ok_or_else(|| anyhow!("no panels"))?;
    let mut exprs = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        ensure!(
            p["datasource"]["uid"] == "${DS_PROMETHEUS}",
            "panel `{title}`: datasource is not ${{DS_PROMETHEUS}}"
        );
        let before = exprs.len();
        dashboard_exprs(p, "", &mut exprs);
        ensure!(exprs.len() > before, "panel `{title}` has no query");
    }
    let variables = vars
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            let sel = q
                .and_then(variable_selector)
                .ok_or_else(|| anyhow!("variable {}: not a label_values() query", v["name"]))?;
            Ok((v["name"].as_str().unwrap_or("?").to_owned(), sel.to_owned()))
        })
        .collect::<Result<_>>()?;
    Ok(Dashboard { exprs, variables })
}

/// Runs the expressions through `promtool check rules` as recording rules.
fn promtool_parses(exprs: &[String], tmp: &Path) -> Result<()> {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&without_grafana_variables(e))?
        ));
    }
    let file = tmp.join("dashboard-queries.yml");
    fs::write(&file, rules)?;
    output(Command::new("promtool").args(["check", "rules"]).arg(&file)).map(drop)
}

fn check_man(ws: &Workspace) -> Result<String> {
    let page = ws.root.join("deploy/man/portx.8");
    let text = fs::read_to_string(&page)?;
    let th = text
        .lines()
        .find(|l| l.starts_with(".TH "))
        .ok_or_else(|| anyhow!("no .TH line"))?;
    ensure!(
        th.contains(&format!("\"portx {}\"", ws.version)),
        "`{th}` does not say portx {}",
        ws.version
    );
    for sub in SUBCOMMANDS {
        ensure!(
            text.contains(&format!(".SS \"portx {sub}\"")),
            "no section for portx {sub}"
        );
    }
    for m in METRICS {
        ensure!(text.contains(m), "serve's metric {m} is not listed");
    }
    let rendered = clean_output(
        Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0"),
    )?;
    Ok(format!(
        "man --warnings -l: no warnings, {} lines; {} subcommands, {} metrics",
        rendered.lines().count(),
        SUBCOMMANDS.len(),
        METRICS.len()
    ))
}

/// `cargo xtask deploy-check [--dist]`. Returns whether every check passed.
pub fn check(tools: &Tools, dist: bool) -> Result<bool> {
    setup::ensure_commands(&[
        ("systemd-analyze", "systemd"),
        ("promtool", "prometheus"),
        ("man", "man-db"),
        ("gzip", "gzip"),
        ("file", "file"),
    ])?;
    let python = ensure_kubernetes_validate()?;
    let ws = workspace()?;
    let deploy = ws.root.join("deploy");
    // systemd-analyze verify wants ExecStart's binary to exist.
    crate::run(
        &mut crate::cargo(tools, &["build", "--package", "portx"])?,
        "cargo build (the binary the unit check points at)",
    )?;
    let portx = ws.target_dir.join("debug/portx");
    let tmp = TempDir::new("deploy-check")?;
    let mut r = Report::new();
    let unit_text = fs::read_to_string(deploy.join("systemd/portx.service"))?;

    r.check("systemd: unit verifies", || {
        check_unit_verify(&ws, &portx, &tmp.0)
    });
    r.check("systemd: type, user, hardening, capabilities", || {
        check_unit(&unit_text)
    });

    let k8s = deploy.join("kubernetes");
    let mut manifests: Vec<PathBuf> = fs::read_dir(&k8s)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    manifests.sort();
    let kv = python.with_file_name("kubernetes-validate");
    r.check("kubernetes: kubernetes-validate --strict", || {
        // CRDs (PodMonitor) have no schema there; they are checked next.
        let core: Vec<&PathBuf> = manifests
            .iter()
            .filter(|p| !p.ends_with("podmonitor.yaml"))
            .collect();
        for version in KUBERNETES_VERSIONS {
            let out = output(
                Command::new(&kv)
                    .args(["--strict", "--no-warn", "-k", version])
                    .args(&core),
            )?;
            let passed = out.lines().filter(|l| l.contains(" passed ")).count();
            ensure!(
                passed >= core.len(),
                "{version}: {passed} resources passed in {} files: {out}",
                core.len()
            );
        }
        Ok(format!(
            "{} files against Kubernetes {}",
            core.len(),
            KUBERNETES_VERSIONS.join(" and ")
        ))
    });
    r.check("kubernetes: PodMonitor matches its schema", || {
        const SCRIPT: &str = "import json, sys, yaml, jsonschema\n\
            schema = json.load(open(sys.argv[1]))\n\
            jsonschema.Draft202012Validator.check_schema(schema)\n\
            v = jsonschema.Draft202012Validator(schema)\n\
            docs = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]\n\
            errs = ['/'.join(map(str, e.absolute_path)) + ': ' + e.message for d in docs for e in v.iter_errors(d)]\n\
            if errs: sys.exit('\\n'.join(errs))\n\
            print(len(docs))";
        let out = output(
            Command::new(&python)
                .args(["-c", SCRIPT])
                .arg(ws.root.join("xtask/schemas/podmonitor.schema.json"))
                .arg(k8s.join("podmonitor.yaml")),
        )?;
        Ok(format!(
            "{} document(s) against xtask/schemas/podmonitor.schema.json",
            out.trim()
        ))
    });
    r.check(
        "kubernetes: selectors, port, capabilities, mounts agree",
        || {
            let mut docs = BTreeMap::new();
            for name in [
                "00-namespace.yaml",
                "daemonset.yaml",
                "service.yaml",
                "podmonitor.yaml",
            ] {
                docs.insert(name, yaml_docs(&python, &k8s.join(name))?);
            }
            check_kubernetes_consistency(&docs, unit_port(&unit_keys(&unit_text))?)
        },
    );

    let prom = deploy.join("prometheus");
    r.check("prometheus: promtool check rules", || {
        let out = output(
            Command::new("promtool")
                .args(["check", "rules"])
                .arg(prom.join("alerts.yml")),
        )?;
        Ok(out
            .lines()
            .find(|l| l.contains("SUCCESS"))
            .unwrap_or("")
            .trim()
            .to_owned())
    });
    r.check("prometheus: promtool test rules", || {
        output(
            Command::new("promtool")
                .args(["test", "rules"])
                .arg(prom.join("alerts_test.yml")),
        )?;
        let tests = yaml_docs(&python, &prom.join("alerts_test.yml"))?;
        let cases: usize = tests[0]["tests"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| t["alert_rule_test"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        Ok(format!("{cases} alert evaluations as expected"))
    });
    r.check("prometheus: rules use only portx's metrics", || {
        let rules = yaml_docs(&python, &prom.join("alerts.yml"))?;
        let mut exprs = Vec::new();
        let mut alerts = BTreeSet::new();
        for g in rules[0]["groups"].as_array().into_iter().flatten() {
            for rule in g["rules"].as_array().into_iter().flatten() {
                exprs.push(rule["expr"].as_str().unwrap_or_default().to_owned());
                alerts.insert(rule["alert"].as_str().unwrap_or_default().to_owned());
            }
        }
        let tests = fs::read_to_string(prom.join("alerts_test.yml"))?;
        let untested: Vec<&String> = alerts
            .iter()
            .filter(|a| !tests.contains(&format!("alertname: {a}\n")))
            .collect();
        ensure!(
            untested.is_empty(),
            "rules without a unit test: {untested:?}"
        );
        let n = only_known_metrics(exprs.iter().map(String::as_str))?;
        Ok(format!("{n} rules, each with a unit test"))
    });

    let dash_path = deploy.join("grafana/portx.json");
    let dash = read_dashboard(&dash_path);
    r.check("grafana: dashboard JSON, variables, datasource", || {
        let d = dash.as_ref().map_err(|e| anyhow!("{e:#}"))?;
        Ok(format!(
            "{} queries, variables {}",
            d.exprs.len(),
            d.variables
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    });
    r.check("grafana: queries use only portx's metrics", || {
        let d = dash.as_ref().map_err(|e| anyhow!("{e:#}"))?;
        let exprs = d.exprs.iter().chain(&d.variables).map(|(_, e)| e.as_str());
        let n = only_known_metrics(exprs)?;
        Ok(format!("{n} expressions"))
    });
    r.check("grafana: queries parse (promtool)", || {
        let d = dash.as_ref().map_err(|e| anyhow!("{e:#}"))?;
        let exprs: Vec<String> = d
            .exprs
            .iter()
            .chain(&d.variables)
            .map(|(_, e)| e.clone())
            .collect();
        promtool_parses(&exprs, &tmp.0)?;
        Ok(format!("{} expressions", exprs.len()))
    });

    r.check("man: portx(8) renders, covers the commands", || {
        check_man(&ws)
    });

    if dist {
        dist_checks(tools, &ws, &mut r);
    }
    Ok(r.finish())
}

/// What `cargo xtask dist` made.
struct Dist {
    binary: PathBuf,
    deb: PathBuf,
}

fn rustup_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == MUSL) {
        return Ok(());
    }
    eprintln!("xtask: adding the {MUSL} target");
    output(Command::new("rustup").args(["target", "add", MUSL])).map(drop)
}

/// Builds the static binary and the package into `target/dist/`.
fn build_dist(tools: &Tools, ws: &Workspace) -> Result<Dist> {
    rustup_target()?;
    // zstd-sys compiles C: for musl, cc uses musl-gcc.
    setup::ensure_commands(&[
        ("musl-gcc", "musl-tools"),
        ("dpkg-deb", "dpkg"),
        ("gzip", "gzip"),
    ])?;
    let start = Instant::now();
    // The BPF object is built by portx/build.rs for bpfel-unknown-none whatever the
    // host target (aya-build takes the endianness of the target being built).
    crate::run(
        &mut crate::cargo(
            tools,
            &["build", "--release", "--package", "portx", "--target", MUSL],
        )?,
        &format!("cargo build --release --target {MUSL}"),
    )?;
    eprintln!(
        "xtask: musl release build: {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let built = ws.target_dir.join(MUSL).join("release/portx");
    let out = ws.target_dir.join("dist");
    let stage = out.join(format!("portx_{}_amd64", ws.version));
    let _ = fs::remove_dir_all(&stage);
    for dir in [
        "DEBIAN",
        "usr/bin",
        "lib/systemd/system",
        "usr/share/man/man8",
        "usr/share/doc/portx",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    // The binary on its own too, for the container image (deploy/container).
    let binary = out.join("portx");
    fs::copy(&built, &binary)?;
    output(Command::new("strip").arg(&binary)).context("strip")?;
    let install = |from: &Path, to: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let dest = stage.join(to);
        fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    install(&binary, "usr/bin/portx", 0o755)?;
    install(
        &ws.root.join("deploy/systemd/portx.service"),
        "lib/systemd/system/portx.service",
        0o644,
    )?;
    install(
        &ws.root.join("deploy/man/portx.8"),
        "usr/share/man/man8/portx.8",
        0o644,
    )?;
    // -n: no name or time in the header, so the same page gives the same bytes.
    output(
        Command::new("gzip")
            .args(["-9nf"])
            .arg(stage.join("usr/share/man/man8/portx.8")),
    )?;
    fs::write(
        stage.join("usr/share/doc/portx/copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: portx\n\nFiles: *\nLicense: MIT or Apache-2.0\n",
    )?;
    let installed_kib = dir_size(&stage)?.div_ceil(1024);
    fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: portx\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: {maintainer}\n\
             Installed-Size: {installed_kib}\n\
             Section: net\n\
             Priority: optional\n\
             Description: live eBPF view of who is eating ephemeral ports\n \
             portx attaches eBPF programs to the kernel's TCP state changes and to\n \
             connect() and bind(), and shows which process holds the ephemeral source\n \
             ports toward each destination, how many are left, and why connect() failed\n \
             with EADDRNOTAVAIL or bind() with EADDRINUSE: trace, top, record, report,\n \
             check, and serve, a Prometheus exporter run by portx.service.\n \
             .\n \
             A static binary: no dependencies. Needs Linux 5.8+ with BTF.\n",
            version = ws.version,
            maintainer = std::env::var("PORTX_DEB_MAINTAINER")
                .unwrap_or_else(|_| DEFAULT_MAINTAINER.to_owned()),
        ),
    )?;
    // The unit is new or changed: let systemd see it; restart a running exporter on
    // upgrade. Enabling it is the administrator's choice (README).
    let postinst = "#!/bin/sh\nset -e\n\
        if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n\
        \tsystemctl daemon-reload || true\n\
        \tif [ -n \"$2\" ]; then systemctl try-restart portx.service || true; fi\n\
        fi\n";
    let prerm = "#!/bin/sh\nset -e\n\
        if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n\
        \tsystemctl stop portx.service || true\n\
        fi\n";
    for (name, body) in [("postinst", postinst), ("prerm", prerm)] {
        use std::os::unix::fs::PermissionsExt as _;
        let p = stage.join("DEBIAN").join(name);
        fs::write(&p, body)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(format!("portx_{}_amd64.deb", ws.version));
    output(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(Dist { binary, deb })
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn dist_checks(tools: &Tools, ws: &Workspace, r: &mut Report) {
    let mut dist = None;
    r.check("dist: static musl build and .deb", || {
        let start = Instant::now();
        let d = build_dist(tools, ws)?;
        let detail = format!(
            "{} in {:.0} s",
            d.deb.display(),
            start.elapsed().as_secs_f64()
        );
        dist = Some(d);
        Ok(detail)
    });
    let Some(d) = dist else { return };
    r.check("dist: the binary is static and runs", || {
        let file = output(Command::new("file").arg("-b").arg(&d.binary))?;
        ensure!(
            file.contains("statically linked") || file.contains("static-pie linked"),
            "file says: {}",
            file.trim()
        );
        // ldd's word on it too (exit 1 and "not a dynamic executable" / "statically linked").
        let ldd = Command::new("ldd").arg(&d.binary).output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&ldd.stdout),
            String::from_utf8_lossy(&ldd.stderr)
        );
        ensure!(
            said.contains("not a dynamic executable") || said.contains("statically linked"),
            "ldd says: {}",
            said.trim()
        );
        let version = output(Command::new(&d.binary).arg("--version"))?;
        ensure!(
            version.trim() == format!("portx {}", ws.version),
            "--version says {}",
            version.trim()
        );
        let size = fs::metadata(&d.binary)?.len();
        let linked = file
            .split(", ")
            .find(|p| p.contains("linked"))
            .unwrap_or_default();
        Ok(format!(
            "{linked}; {}; {:.1} MiB",
            version.trim(),
            size as f64 / (1 << 20) as f64
        ))
    });
    r.check("dist: the binary loads its BPF programs", || {
        let uid = output(Command::new("id").arg("-u"))?;
        if uid.trim() != "0" {
            return Ok("skipped: not root".to_owned());
        }
        // The BPF object is embedded at build time: a one-second trace proves the musl
        // build carries it and this kernel takes it.
        let out = Command::new(&d.binary)
            .args(["trace", "--errors", "--duration", "1"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = stderr.lines().find(|l| l.contains("events seen"));
        ensure!(
            out.status.success() && summary.is_some(),
            "portx trace exited with {}: {}",
            out.status,
            summarize(&stderr)
        );
        Ok(format!(
            "portx trace --errors --duration 1: {}",
            summary.unwrap_or_default().trim_start_matches("portx: ")
        ))
    });
    r.check("dist: dpkg-deb --info and --contents", || {
        let info = output(Command::new("dpkg-deb").arg("--info").arg(&d.deb))?;
        for want in [
            "Package: portx".to_owned(),
            format!("Version: {}", ws.version),
            "Architecture: amd64".to_owned(),
            "Maintainer: ".to_owned(),
            "Description: ".to_owned(),
        ] {
            ensure!(info.contains(&want), "--info lacks `{want}`:\n{info}");
        }
        ensure!(
            !info.contains("Depends:"),
            "a static binary depends on nothing"
        );
        let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&d.deb))?;
        for (path, mode) in [
            ("./usr/bin/portx", "-rwxr-xr-x"),
            ("./lib/systemd/system/portx.service", "-rw-r--r--"),
            ("./usr/share/man/man8/portx.8.gz", "-rw-r--r--"),
        ] {
            let line = contents
                .lines()
                .find(|l| l.ends_with(path))
                .ok_or_else(|| anyhow!("--contents lacks {path}:\n{contents}"))?;
            ensure!(
                line.starts_with(mode) && line.contains("root/root"),
                "{path}: `{line}` (want {mode} root/root)"
            );
        }
        // What was packed reads back: the page renders from its .gz.
        let tmp = TempDir::new("dist-check")?;
        output(Command::new("dpkg-deb").arg("-x").arg(&d.deb).arg(&tmp.0))?;
        clean_output(
            Command::new("man")
                .args(["--warnings", "-l"])
                .arg(tmp.0.join("usr/share/man/man8/portx.8.gz"))
                .env("MANWIDTH", "80"),
        )?;
        Ok(format!(
            "{} files, root/root, no Depends; the packed man page renders",
            contents.lines().filter(|l| !l.ends_with('/')).count()
        ))
    });
}

/// `cargo xtask dist`: the package, then its checks. Returns whether they passed.
pub fn dist(tools: &Tools) -> Result<bool> {
    let ws = workspace()?;
    let mut r = Report::new();
    dist_checks(tools, &ws, &mut r);
    Ok(r.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skip_functions_labels_and_variables() {
        let e = r#"max by (instance) (portx_ephemeral_ports_used{instance=~"$instance",netns=~"${netns}"} / on(job, instance, netns) group_left portx_ephemeral_port_capacity)"#;
        assert_eq!(
            metric_names(e),
            [
                "portx_ephemeral_ports_used",
                "portx_ephemeral_port_capacity"
            ]
        );
        assert_eq!(
            metric_names(
                "sum without (errno) (rate(portx_connect_errors_total[$__rate_interval])) > bool 0.5"
            ),
            ["portx_connect_errors_total"]
        );
        assert_eq!(
            metric_names(r#"topk(5, foo_bar{a="}b"}) and ignoring(x) up offset 5m"#),
            ["foo_bar", "up"]
        );
        assert_eq!(metric_names("predict_linear(m[30m], 1800) >= 1e3"), ["m"]);
    }

    /// The list the deployment files are checked against is what `portx serve`
    /// exports: its golden encoding (portx's unit test keeps that one current).
    #[test]
    fn metrics_list_is_what_serve_exports() {
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../portx/tests/data/metrics.golden");
        let text = std::fs::read_to_string(&golden).expect("the golden metrics file");
        let exported: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(exported, METRICS.iter().copied().collect::<BTreeSet<_>>());
    }

    #[test]
    fn unknown_metrics_are_named() {
        let err = only_known_metrics(["portx_ports_held + portx_typo_total"]).unwrap_err();
        assert!(err.to_string().contains("portx_typo_total"), "{err}");
        assert!(!err.to_string().contains("portx_ports_held"), "{err}");
        assert!(only_known_metrics(["up{job=\"portx\"} == 0"]).is_ok());
    }

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            without_grafana_variables(
                r#"rate(x{i=~"$instance",n=~"${netns:regex}"}[$__rate_interval])"#
            ),
            r#"rate(x{i=~".*",n=~".*"}[5m])"#
        );
        assert_eq!(
            variable_selector(r#"label_values(portx_build_info{job="portx"}, instance)"#),
            Some(r#"portx_build_info{job="portx"}"#)
        );
    }

    #[test]
    fn unit_check_wants_the_exact_capability_set() {
        let good = include_str!("../../deploy/systemd/portx.service");
        check_unit(good).unwrap();
        let extra = good.replace(
            "AmbientCapabilities=CAP_BPF",
            "AmbientCapabilities=CAP_NET_ADMIN CAP_BPF",
        );
        assert!(
            check_unit(&extra)
                .unwrap_err()
                .to_string()
                .contains("CAP_NET_ADMIN")
        );
        let simple = good.replace("Type=notify", "Type=simple");
        assert!(check_unit(&simple).is_err());
        assert_eq!(unit_port(&unit_keys(good)).unwrap(), 17117);
    }
}

//! Workload names: cgroups made by the test with systemd-style and kubepods-style
//! names (both drivers), a fake kubelet log tree under a temporary `--host-root`,
//! clients moved into the cgroups, and what `trace --json` and `top --once --json`
//! say of them.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{
    support::{Netns, Peer, TempDir, Tracer},
    top::TopOnce,
};

const UID_SYSTEMD: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
const UID_CGROUPFS: &str = "1544eb37-e4f7-49eb-8cc4-3d01c41be77b";

/// The cgroup2 mount point, from this process's mount table.
fn cgroup2_mount() -> Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            (fs.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .context("no cgroup2 mount")
}

/// The test's cgroups under `/portx-test-PID` (leaves given by their path below it),
/// removed when dropped: their processes go back to the top cgroup first.
struct TestCgroups {
    mount: PathBuf,
    top: PathBuf,
}

impl TestCgroups {
    fn new(leaves: &[&str]) -> Result<Self> {
        let mount = cgroup2_mount()?;
        let top = mount.join(format!("portx-test-{}", std::process::id()));
        let cg = Self { mount, top };
        for leaf in leaves {
            std::fs::create_dir_all(cg.top.join(leaf))
                .with_context(|| format!("creating cgroup {leaf}"))?;
        }
        Ok(cg)
    }

    /// The path of `leaf` as `/proc/PID/cgroup` shows it (the mount shows the root).
    fn path(&self, leaf: &str) -> String {
        let rel = self.top.strip_prefix(&self.mount).expect("below the mount");
        format!("/{}/{leaf}", rel.display())
    }

    fn enter(&self, leaf: &str, pid: u32) -> Result<()> {
        std::fs::write(self.top.join(leaf).join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {leaf}"))
    }

    /// Directories below the top, deepest first.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.top.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            out.push(d);
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for d in self.dirs() {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
                }
            }
            // A cgroup whose last process just left may still be busy for a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(&d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A host root whose `/proc` and `/sys` are this host's and whose `/var/log` holds a
/// kubelet's log layout: pod `shop/web-1` with container `api` (id `api_id`) linked,
/// and pod `batch/cron-1` with no container links (its container stays unnamed).
fn fake_host(api_id: &str) -> Result<TempDir> {
    let host = TempDir::new("host")?;
    for d in ["proc", "sys"] {
        std::os::unix::fs::symlink(format!("/{d}"), host.0.join(d))?;
    }
    let web = format!("shop_web-1_{UID_SYSTEMD}");
    let logs = host.0.join("var/log/pods").join(&web).join("api");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("0.log"), "")?;
    std::fs::create_dir_all(
        host.0
            .join(format!("var/log/pods/batch_cron-1_{UID_CGROUPFS}/job")),
    )?;
    let links = host.0.join("var/log/containers");
    std::fs::create_dir_all(&links)?;
    std::os::unix::fs::symlink(
        format!("/var/log/pods/{web}/api/0.log"),
        links.join(format!("web-1_shop_api-{api_id}.log")),
    )?;
    Ok(host)
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A workload object's fields as (kind, name, namespace, pod, container, unit).
fn summary(w: &Value) -> [Option<&str>; 6] {
    ["kind", "name", "namespace", "pod", "container", "unit"].map(|k| field(w, k))
}

/// Each pod, container and unit is named in `trace --json` and `top --once --json`,
/// a socket from before portx started included.
pub fn names_pods_containers_and_units() -> Result<()> {
    let api_id = "a1".repeat(32);
    let cron_id = "c2".repeat(32);
    let pod_leaf = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{api_id}.scope",
        UID_SYSTEMD.replace('-', "_")
    );
    let cron_leaf = format!("kubepods/besteffort/pod{UID_CGROUPFS}/{cron_id}");
    let unit_leaf = "system.slice/portx-test-web.service";
    let cg = TestCgroups::new(&[&pod_leaf, &cron_leaf, unit_leaf])?;
    let host = fake_host(&api_id)?;
    let host_root = host.0.display().to_string();
    let ns = Netns::new(None)?;
    let netns = ns.path();

    // Before portx starts: a pod's container holds two connections.
    let mut early = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9301", "2"])?;
    cg.enter(&pod_leaf, early.pid)?;
    early.go()?;
    early.expect("done")?;

    let common = ["--netns", netns.as_str(), "--host-root", host_root.as_str()];
    let tracer = Tracer::start(&common)?;
    let top = TopOnce::start(&[&common[..], &["--interval", "4"]].concat())?;
    let t0 = Instant::now();

    let mut unit = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9302", "2"])?;
    cg.enter(unit_leaf, unit.pid)?;
    unit.go()?;
    unit.expect("done")?;
    let mut cron = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9303", "2"])?;
    cg.enter(&cron_leaf, cron.pid)?;
    cron.go()?;
    cron.expect("done")?;
    ensure!(
        t0.elapsed() < Duration::from_secs(3),
        "the clients took {:?}: top would print before they are done",
        t0.elapsed()
    );

    let connects_of = |pid: u32| {
        move |evs: &[Value]| {
            evs.iter()
                .any(|e| e["pid"] == pid && e["event"] == "connect")
        }
    };
    tracer.wait_for("the unit's connects", connects_of(unit.pid))?;
    tracer.wait_for("the cron pod's connects", connects_of(cron.pid))?;
    let snap = top.snapshot()?;
    let (events, _) = tracer.stop()?;

    // trace: every connect of a client carries its cgroup and workload.
    let want_unit = [
        Some("service"),
        Some("portx-test-web.service"),
        None,
        None,
        None,
        Some("portx-test-web.service"),
    ];
    let want_cron = [
        Some("pod"),
        Some("batch/cron-1"),
        Some("batch"),
        Some("cron-1"),
        None,
        None,
    ];
    for (pid, leaf, want) in [
        (unit.pid, unit_leaf.to_owned(), want_unit),
        (cron.pid, cron_leaf.clone(), want_cron),
    ] {
        let connects: Vec<&Value> = events
            .iter()
            .filter(|e| e["pid"] == pid && e["event"] == "connect")
            .collect();
        ensure!(
            connects.len() == 2,
            "pid {pid}: {} connects",
            connects.len()
        );
        for e in connects {
            ensure!(
                field(e, "cgroup") == Some(cg.path(&leaf).as_str()),
                "pid {pid}: cgroup {:?}, want {}",
                e["cgroup"],
                cg.path(&leaf)
            );
            ensure!(
                summary(&e["workload"]) == want,
                "pid {pid}: {}",
                e["workload"]
            );
        }
    }
    let cron_event = events
        .iter()
        .find(|e| e["pid"] == cron.pid && e["event"] == "connect")
        .expect("checked");
    ensure!(
        field(&cron_event["workload"], "pod_uid") == Some(UID_CGROUPFS)
            && field(&cron_event["workload"], "container_id") == Some(cron_id.as_str())
            && field(&cron_event["workload"], "qos") == Some("besteffort"),
        "cron pod: {}",
        cron_event["workload"]
    );

    // top: the processes, the early one (from /proc at start-up) included.
    let processes: Vec<&Value> = snap["netns"]
        .as_array()
        .context("no netns")?
        .iter()
        .flat_map(|n| n["processes"].as_array().into_iter().flatten())
        .collect();
    let want_early = [
        Some("pod"),
        Some("shop/web-1"),
        Some("shop"),
        Some("web-1"),
        Some("api"),
        None,
    ];
    for (pid, want) in [
        (early.pid, want_early),
        (unit.pid, want_unit),
        (cron.pid, want_cron),
    ] {
        let Some(p) = processes.iter().find(|p| p["pid"] == pid) else {
            bail!("top shows no process {pid}: {snap}");
        };
        ensure!(
            summary(&p["workload"]) == want,
            "top, pid {pid}: {}",
            p["workload"]
        );
    }
    let early_proc = processes
        .iter()
        .find(|p| p["pid"] == early.pid)
        .expect("checked");
    ensure!(
        field(early_proc, "cgroup") == Some(cg.path(&pod_leaf).as_str())
            && field(&early_proc["workload"], "pod_uid") == Some(UID_SYSTEMD)
            && field(&early_proc["workload"], "container_id") == Some(api_id.as_str()),
        "the early client: {early_proc}"
    );

    // workloads[]: one row per pod (container apart) or unit, with its ports.
    let rows = snap["workloads"].as_array().context("no workloads[]")?;
    for (name, pid) in [
        ("shop/web-1", early.pid),
        ("portx-test-web.service", unit.pid),
        ("batch/cron-1", cron.pid),
    ] {
        let Some(row) = rows.iter().find(|r| r["workload"]["name"] == name) else {
            bail!("no workload {name} in {}", snap["workloads"]);
        };
        ensure!(row["ports"].as_u64().unwrap_or(0) >= 2, "{name}: {row}");
        ensure!(
            row["processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pid"] == pid)),
            "{name}: {row}"
        );
        ensure!(
            row["workload"].get("container").is_none(),
            "{name}: a pod's row is the pod: {row}"
        );
    }
    // Destinations name the owner's pod.
    let dest = snap["netns"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["destinations"].as_array().into_iter().flatten())
        .find(|d| d["dport"] == 9301)
        .context("no destination :9301")?;
    ensure!(
        dest["owners"][0]["workload"]["name"] == "shop/web-1",
        "owner of :9301: {dest}"
    );

    for p in [&mut early, &mut unit, &mut cron] {
        p.finish()?;
    }
    drop(cg);
    check_removed(&cgroup2_mount()?)
}

/// The accounting path reads a client's name and cgroup from its task: on tp_btf by
/// loads from `current` at BTF offsets (`comm`, and `cgroups->dfl_cgrp->kn->id`),
/// elsewhere through helpers. `top` names the owner as the kernel does: its pid, its
/// comm, and the id of the cgroup the test made and moved it into (the inode number of
/// the cgroup's directory, `kernfs_node.id`). Runs in the VMs: the walk is per kernel.
pub fn top_names_owner_as_the_kernel_does() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let cg = TestCgroups::new(&["owner"])?;
    let want_id = std::fs::metadata(cg.top.join("owner"))?.ino();
    let ns = Netns::new(None)?;
    let top = TopOnce::start(&["--netns", &ns.name, "--interval", "3"])?;
    let mut peer = Peer::spawn(&ns, "exhaust", &["127.0.0.1:9310", "2"])?;
    cg.enter("owner", peer.pid)?;
    peer.go()?;
    peer.expect("done")?;
    let snap = top.snapshot()?;
    peer.finish()?;
    let d = crate::top::dest(crate::top::netns_entry(&snap, &ns)?, 9310)?;
    let owner = &d["owners"][0];
    ensure!(
        owner["pid"] == peer.pid && owner["ports"] == 2,
        "owner of :9310: {d}"
    );
    ensure!(
        owner["comm"] == peer.comm.as_str(),
        "comm {}, want {:?}",
        owner["comm"],
        peer.comm
    );
    ensure!(
        owner["cgroup_id"] == want_id,
        "cgroup id {}, want {want_id} ({})",
        owner["cgroup_id"],
        cg.path("owner")
    );
    drop(cg);
    check_removed(&cgroup2_mount()?)
}

fn check_removed(mount: &Path) -> Result<()> {
    let top = mount.join(format!("portx-test-{}", std::process::id()));
    ensure!(!top.exists(), "{} was not removed", top.display());
    Ok(())
}

//! What naming a cgroup costs (`kernel::cgroups::CgroupNames`), on a host with 10k pod
//! containers: the first lookup of an id (by file handle, and by walking the tree as
//! without `CAP_DAC_READ_SEARCH`), a cached lookup (every later event of that
//! cgroup), and the memory per named cgroup. Baselines from the same run: one
//! `stat()` of a cgroup directory, and one hash-map lookup.

use std::{
    collections::HashMap, hint::black_box, os::unix::fs::MetadataExt as _, path::PathBuf,
    sync::atomic::Ordering, time::Instant,
};

use portx::{
    kernel::cgroups::{CgroupNames, HostRoot, Lookup},
    workload::{Kind, Names as _},
};

use crate::{Figure, LIVE, median, report};

/// `n` pods of one container each, kubepods-style (systemd driver), under a top
/// cgroup of the bench's own; removed on drop.
struct BenchCgroups {
    top: PathBuf,
    leaves: Vec<PathBuf>,
}

impl BenchCgroups {
    fn new(n: usize) -> Option<Self> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mi.lines().find_map(|l| {
            let (m, fs) = l.split_once(" - ")?;
            let point = m.split(' ').nth(4)?;
            (fs.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })?;
        let top = mount.join(format!("portx-bench-{}", std::process::id()));
        let qos = top.join("kubepods.slice/kubepods-burstable.slice");
        let mut leaves = Vec::with_capacity(n);
        for i in 0..n {
            let uid = format!("{:08x}_0000_4000_8000_{:012x}", i, i);
            let leaf = qos
                .join(format!("kubepods-burstable-pod{uid}.slice"))
                .join(format!("cri-containerd-{:064x}.scope", i));
            if std::fs::create_dir_all(&leaf).is_err() {
                eprintln!("bench: cannot create cgroups under {}", mount.display());
                let cg = Self { top, leaves };
                drop(cg);
                return None;
            }
            leaves.push(leaf);
        }
        Some(Self { top, leaves })
    }

    fn ids(&self) -> Vec<u64> {
        self.leaves
            .iter()
            .filter_map(|l| std::fs::metadata(l).ok().map(|m| m.ino()))
            .collect()
    }
}

impl Drop for BenchCgroups {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.top.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn per_id_us(n: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

pub fn bench_names(quick: bool) {
    let n = if quick { 2_000 } else { 10_000 };
    let repeats = if quick { 3 } else { 5 };
    let Some(cg) = BenchCgroups::new(n) else {
        return;
    };
    let ids = cg.ids();

    // Baseline: one stat() of a cgroup directory, the least a first lookup can cost.
    let mut stat_us = Vec::new();
    for _ in 0..repeats {
        stat_us.push(per_id_us(n, || {
            for l in &cg.leaves {
                black_box(std::fs::metadata(l).ok());
            }
        }));
    }
    let (stat, _) = median(stat_us);

    for walk in [false, true] {
        let mut first = Vec::new();
        let mut stall_ms = Vec::new();
        let mut dirs = 0;
        let mut named = 0;
        for _ in 0..repeats {
            let mut names = CgroupNames::new(HostRoot::default());
            if names.lookup() == Lookup::None {
                eprintln!("bench: no cgroup2 mount; cgroup names not measured");
                return;
            }
            if walk {
                names.force_walk();
                // The first unknown id pays for the whole walk: one stall.
                let t = Instant::now();
                black_box(names.name(ids[0]));
                stall_ms.push(t.elapsed().as_secs_f64() * 1e3);
                dirs = names.stats.dirs_walked;
            } else if names.lookup() != Lookup::Handle {
                eprintln!("bench: file handles do not work here; only the walk is measured");
                break;
            }
            first.push(per_id_us(n, || {
                for &id in &ids {
                    black_box(names.name(id));
                }
            }));
            named = ids
                .iter()
                .filter(|&&id| names.name(id).is_some_and(|w| w.workload.kind == Kind::Pod))
                .count();
        }
        if first.is_empty() {
            continue;
        }
        let (v, spread) = median(first);
        let how = if walk {
            "by walking the tree (after its one walk)"
        } else {
            "by file handle"
        };
        report(Figure {
            figure: &format!(
                "cgroup name: first event of a new cgroup, {how}, {n} cgroups ({named} named as pods)"
            ),
            value: v,
            unit: "µs per cgroup",
            baseline: Some((stat, "one stat() of a cgroup directory")),
            target: "<= 50 µs",
            pass: Some(v <= 50.0 && named == n),
            spread,
            paired_ratio: None,
        });
        if walk {
            let (v, spread) = median(stall_ms);
            report(Figure {
                figure: &format!(
                    "cgroup name: one walk of the cgroup tree ({dirs} directories), the first unknown id's stall"
                ),
                value: v,
                unit: "ms",
                baseline: Some((stat * dirs as f64 / 1e3, "a stat() per directory")),
                target: "<= 1000 ms (at most one a second)",
                pass: Some(v <= 1000.0),
                spread,
                paired_ratio: None,
            });
        }
    }

    // Cached: what every later event of a known cgroup costs; and memory per name.
    let before = LIVE.load(Ordering::Relaxed);
    let mut names = CgroupNames::new(HostRoot::default());
    for &id in &ids {
        black_box(names.name(id));
    }
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
    let lookups = 1_000_000usize;
    let plain: HashMap<u64, u64> = ids.iter().map(|&i| (i, i)).collect();
    let (mut cached, mut map) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let t = Instant::now();
        for i in 0..lookups {
            black_box(names.name(ids[i % ids.len()]));
        }
        cached.push(t.elapsed().as_secs_f64() * 1e9 / lookups as f64);
        let t = Instant::now();
        for i in 0..lookups {
            black_box(plain.get(&ids[i % ids.len()]));
        }
        map.push(t.elapsed().as_secs_f64() * 1e9 / lookups as f64);
    }
    let (c, spread) = median(cached);
    let (m, _) = median(map);
    report(Figure {
        figure: &format!("cgroup name: cached lookup (later events), {n} cgroups known"),
        value: c,
        unit: "ns per event",
        baseline: Some((m, "one std HashMap<u64, u64> lookup")),
        target: "<= 100 ns",
        pass: Some(c <= 100.0),
        spread,
        paired_ratio: None,
    });
    report(Figure {
        figure: &format!("cgroup name: memory per named cgroup, {n} pods"),
        value: bytes,
        unit: "bytes",
        baseline: None,
        target: "<= 2048 bytes",
        pass: Some(bytes <= 2048.0),
        spread: 0.0,
        paired_ratio: None,
    });
    drop(names);
    drop(cg);
}

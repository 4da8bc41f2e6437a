//! Putting workload names into a model snapshot, and summing ports per workload.
//!
//! The model keeps cgroup ids only (what the kernel reports); a view names them when
//! it shows them, through whoever can ([`Names`]): the live host, or a recording's
//! table. An id that cannot be named keeps `workload: null`.

use std::{collections::BTreeMap, sync::Arc};

use super::{Kind, Named, Names, Workload};
use crate::model::snapshot::{Failure, Snapshot, WorkloadProcess, WorkloadUsage};

/// Names every cgroup id in `snap` and fills `snap.workloads`.
pub fn annotate(snap: &mut Snapshot, names: &mut dyn Names) {
    // Every `Names` keeps what it looked up: no cache of its own here.
    let mut name = |id: u64| names.name(id);
    for ns in &mut snap.netns {
        for p in &mut ns.processes {
            if let Some(n) = name(p.cgroup_id) {
                p.cgroup = Some(n.cgroup.clone());
                p.workload = Some(n.workload.clone());
            }
        }
        for d in &mut ns.destinations {
            for o in &mut d.owners {
                o.workload = name(o.cgroup_id).map(|n| Box::new(n.workload.clone()));
            }
        }
    }
    for f in &mut snap.failures {
        name_failure(f, &mut name);
    }
    snap.workloads = workloads(snap);
}

/// Names a failure's caller and the port's holder.
pub fn name_failure(f: &mut Failure, name: &mut dyn FnMut(u64) -> Option<Arc<Named>>) {
    if let Some(n) = name(f.event.cgroup_id) {
        f.event.cgroup = Some(n.cgroup.clone());
        f.event.workload = Some(n.workload.clone());
    }
    if let Some(h) = &mut f.holder {
        h.workload = name(h.cgroup_id).map(|n| n.workload.clone());
    }
}

/// Ports per workload across namespaces, most first. A process whose cgroup has no
/// name is counted under its cgroup id, so the totals still add up.
pub fn workloads(snap: &Snapshot) -> Vec<WorkloadUsage> {
    let mut by: BTreeMap<Workload, WorkloadUsage> = BTreeMap::new();
    for ns in &snap.netns {
        for p in &ns.processes {
            let w = p.workload.clone().unwrap_or_else(|| {
                Workload::named(Kind::Cgroup, format!("cgroup id {}", p.cgroup_id))
            });
            // A pod is one workload whatever container holds the ports; its
            // processes say which.
            let container = w.container.clone();
            let w = if w.kind == Kind::Pod {
                w.pod_level()
            } else {
                w
            };
            let u = by.entry(w.clone()).or_insert_with(|| WorkloadUsage {
                workload: w,
                cgroups: Vec::new(),
                ports: 0,
                processes: Vec::new(),
            });
            if let Some(c) = &p.cgroup
                && !u.cgroups.contains(c)
            {
                u.cgroups.push(c.clone());
            }
            u.ports += u64::from(p.ports);
            u.processes.push(WorkloadProcess {
                pid: p.pid,
                comm: p.comm.clone(),
                netns: ns.inode,
                ports: p.ports,
                container,
            });
        }
    }
    let mut out: Vec<WorkloadUsage> = by.into_values().collect();
    for u in &mut out {
        u.cgroups.sort();
        u.processes
            .sort_by(|a, b| b.ports.cmp(&a.ports).then(a.pid.cmp(&b.pid)));
    }
    out.sort_by(|a, b| {
        b.ports
            .cmp(&a.ports)
            .then_with(|| a.workload.name.cmp(&b.workload.name))
    });
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::snapshot::{DestUsage, NetnsUsage, OwnerPorts, ProcessUsage};

    fn process(pid: u32, cgroup_id: u64, ports: u32) -> ProcessUsage {
        ProcessUsage {
            pid,
            comm: format!("p{pid}"),
            cgroup_id,
            ports,
            cgroup: None,
            workload: None,
        }
    }

    #[test]
    fn names_processes_and_owners_and_sums_per_workload() {
        let uid = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
        let pod = |c: char| format!("/kubepods/burstable/pod{uid}/{}", c.to_string().repeat(64));
        let mut table: HashMap<u64, Arc<Named>> = HashMap::new();
        let index = crate::workload::kubelet::Index::from_entries(
            [format!("shop_web-1_{uid}").as_str()],
            [],
        );
        table.insert(10, Arc::new(Named::new(&pod('a'), &index)));
        table.insert(11, Arc::new(Named::new(&pod('b'), &index)));
        table.insert(
            20,
            Arc::new(Named::new("/system.slice/nginx.service", &index)),
        );
        let mut snap = Snapshot {
            netns: vec![
                NetnsUsage {
                    inode: 1,
                    processes: vec![process(1, 10, 5), process(2, 20, 7), process(3, 99, 1)],
                    destinations: vec![DestUsage {
                        owners: vec![OwnerPorts {
                            pid: 1,
                            comm: "p1".into(),
                            ports: 5,
                            cgroup_id: 10,
                            workload: None,
                            client: None,
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                NetnsUsage {
                    inode: 2,
                    processes: vec![process(4, 11, 4)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        annotate(&mut snap, &mut table);

        let p = &snap.netns[0].processes[0];
        assert_eq!(p.cgroup.as_deref(), Some(pod('a').as_str()));
        assert_eq!(p.workload.as_ref().unwrap().name, "shop/web-1");
        let owner = &snap.netns[0].destinations[0].owners[0];
        assert_eq!(owner.workload.as_ref().unwrap().label(), "pod shop/web-1");
        assert_eq!(snap.netns[0].processes[2].workload, None);

        // The pod's two containers (two cgroups, two namespaces) are one workload.
        let rows: Vec<(String, u64, usize, usize)> = snap
            .workloads
            .iter()
            .map(|w| {
                (
                    w.workload.name.clone(),
                    w.ports,
                    w.cgroups.len(),
                    w.processes.len(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("shop/web-1".to_owned(), 9, 2, 2),
                ("nginx.service".to_owned(), 7, 1, 1),
                ("cgroup id 99".to_owned(), 1, 0, 1),
            ]
        );
        assert_eq!(snap.workloads[0].processes[0].netns, 1);
    }
}

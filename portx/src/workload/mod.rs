//! Naming the workload behind a cgroup: a systemd unit, a container, a Kubernetes pod.
//!
//! Pure: [`classify`] reads a cgroup v2 path, [`kubelet`] reads the names of the
//! kubelet's log files, [`annotate`] puts the result into a snapshot. What reads the
//! running host (the cgroup tree, `/var/log`) is [`crate::kernel::cgroups`].

pub mod annotate;
pub mod classify;
pub mod kubelet;

use serde::{Deserialize, Serialize};

pub use classify::classify;

/// What kind of workload a cgroup belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A Kubernetes pod (and, where known, which of its containers).
    Pod,
    /// A container outside Kubernetes (Docker, Podman, containerd, CRI-O).
    Container,
    /// A systemd service.
    Service,
    /// A systemd scope (a login session, `init.scope`, a transient `systemd-run`).
    Scope,
    /// None of the known layouts: `name` is the cgroup path itself.
    Cgroup,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Container => "container",
            Self::Service => "service",
            Self::Scope => "scope",
            Self::Cgroup => "cgroup",
        }
    }
}

/// A workload as portx names it. Fields are `None` where the layout does not say
/// (they are left out of JSON); nothing is guessed. Field names are part of portx's
/// interface (README).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub kind: Kind,
    /// One short name for people and for grouping: `NAMESPACE/POD` (or the pod UID
    /// when the kubelet's logs do not name it), `RUNTIME:ID12` for a container,
    /// the unit (`user-UID/UNIT` for a user's), or the cgroup path.
    pub name: String,
    /// Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Dashed form, as the API shows it (the systemd driver writes `_` for `-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The pod's QoS class: `guaranteed`, `burstable` or `besteffort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// Container name within its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Full 64-hex-digit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `docker`, `containerd`, `cri-o` or `podman`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The systemd unit (`nginx.service`, `session-3.scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The user whose systemd manager or session holds the unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

impl Workload {
    /// A workload of kind `kind` named `name`, nothing else known.
    pub fn named(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            namespace: None,
            pod: None,
            pod_uid: None,
            qos: None,
            container: None,
            container_id: None,
            runtime: None,
            unit: None,
            uid: None,
        }
    }

    /// Whether this is a container (in a pod or not): where TOP OWNER shows the
    /// workload rather than the process.
    pub fn is_container(&self) -> bool {
        matches!(self.kind, Kind::Pod | Kind::Container)
    }

    /// A pod's names, as the kubelet's logs give them.
    pub fn set_pod_names(&mut self, namespace: &str, pod: &str, container: Option<&str>) {
        self.namespace = Some(namespace.to_owned());
        self.pod = Some(pod.to_owned());
        self.name = format!("{namespace}/{pod}");
        if let Some(c) = container {
            self.container = Some(c.to_owned());
        }
    }

    /// The pod without which container: what a pod's rows group by.
    pub fn pod_level(&self) -> Self {
        Self {
            container: None,
            container_id: None,
            runtime: None,
            ..self.clone()
        }
    }

    /// One line for people: `pod payments/checkout-7d9f (container api)`,
    /// `nginx.service`, `docker:3f2a9c1b4e5d`.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Pod => match &self.container {
                Some(c) => format!("pod {} ({c})", self.name),
                None => format!("pod {}", self.name),
            },
            Kind::Container | Kind::Service | Kind::Scope | Kind::Cgroup => self.name.clone(),
        }
    }
}

/// A cgroup as resolved: its path (as in `/proc/PID/cgroup`) and its workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub cgroup: String,
    pub workload: Workload,
    /// `"cgroup":…,"workload":{…}`, rendered once: `trace --json` writes it on every
    /// event of the cgroup.
    json_fields: String,
}

impl Named {
    /// Classifies `path` and adds what `index` knows of its pod.
    pub fn new(path: &str, index: &kubelet::Index) -> Self {
        let mut workload = classify(path);
        index.enrich(&mut workload);
        Self::from_parts(path.to_owned(), workload)
    }

    /// A cgroup named as recorded.
    pub fn from_parts(cgroup: String, workload: Workload) -> Self {
        // Serializing a String and a plain struct cannot fail.
        let json_fields = format!(
            "\"cgroup\":{},\"workload\":{}",
            serde_json::to_string(&cgroup).unwrap_or_default(),
            serde_json::to_string(&workload).unwrap_or_default()
        );
        Self {
            cgroup,
            workload,
            json_fields,
        }
    }

    /// The JSON object fields `cgroup` and `workload`, without braces.
    pub fn json_fields(&self) -> &str {
        &self.json_fields
    }
}

/// Who can name a cgroup id: the live host ([`crate::kernel::cgroups::CgroupNames`])
/// or a recording's table of names.
pub trait Names {
    fn name(&mut self, cgroup_id: u64) -> Option<std::sync::Arc<Named>>;
}

/// A fixed table (a recording's names, tests).
impl Names for std::collections::HashMap<u64, std::sync::Arc<Named>> {
    fn name(&mut self, cgroup_id: u64) -> Option<std::sync::Arc<Named>> {
        self.get(&cgroup_id).cloned()
    }
}

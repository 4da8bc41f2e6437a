//! Pod and container names from the kubelet's log layout, without the API server:
//! the kubelet writes each container's log under
//! `/var/log/pods/NAMESPACE_POD_UID/CONTAINER/N.log` and links it from
//! `/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log` (the names log shippers such
//! as Fluent Bit parse;
//! <https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/kuberuntime/helpers.go>,
//! `BuildPodLogsDirectory`, `BuildContainerLogsDirectory`). Namespaces, pod and
//! container names are DNS labels or subdomains, so none holds `_`; a UID or an id
//! holds no `_` either, which makes the split exact.

use std::collections::HashMap;

use super::{Kind, Workload};

/// A pod as the log layout names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub pod: String,
}

/// A container as the log layout names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerName {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// From the link's target, when it could be read.
    pub pod_uid: Option<String>,
}

/// What the kubelet's logs say of the pods on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pods: HashMap<String, PodName>,
    containers: HashMap<String, ContainerName>,
}

/// `NAMESPACE_POD_UID`, a directory of `/var/log/pods`.
pub fn parse_pod_dir(name: &str) -> Option<(PodName, String)> {
    let mut f = name.split('_');
    let (ns, pod, uid) = (f.next()?, f.next()?, f.next()?);
    if f.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    let name = PodName {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
    };
    Some((name, uid.to_owned()))
}

/// `POD_NAMESPACE_CONTAINER-ID.log`, a link in `/var/log/containers`, and where it
/// points (`/var/log/pods/NAMESPACE_POD_UID/CONTAINER/N.log`) when known.
pub fn parse_container_log(name: &str, target: Option<&str>) -> Option<(ContainerName, String)> {
    let (rest, id) = name.strip_suffix(".log")?.rsplit_once('-')?;
    let mut f = rest.split('_');
    let (pod, ns, container) = (f.next()?, f.next()?, f.next()?);
    if f.next().is_some() || [pod, ns, container, id].iter().any(|s| s.is_empty()) {
        return None;
    }
    let pod_uid = target.and_then(|t| {
        let mut up = t.rsplit('/').skip(2);
        parse_pod_dir(up.next()?).map(|(_, uid)| uid)
    });
    let name = ContainerName {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        pod_uid,
    };
    Some((name, id.to_owned()))
}

impl Index {
    /// From the names in `/var/log/pods` and the links (with their targets) in
    /// `/var/log/containers`. Names that fit neither layout are skipped.
    pub fn from_entries<'a>(
        pod_dirs: impl IntoIterator<Item = &'a str>,
        container_logs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Self {
        let mut index = Self::default();
        for (name, uid) in pod_dirs.into_iter().filter_map(parse_pod_dir) {
            index.pods.insert(uid, name);
        }
        for (name, target) in container_logs {
            if let Some((c, id)) = parse_container_log(name, target) {
                index.containers.insert(id, c);
            }
        }
        index
    }

    /// Whether the index knows what `w` would need to be named in full: a pod UID
    /// it has not seen, or a container id it has not, means a newer pod.
    pub fn knows(&self, w: &Workload) -> bool {
        w.kind != Kind::Pod
            || (w.pod_uid.as_ref().is_none_or(|u| self.pods.contains_key(u))
                && w.container_id
                    .as_ref()
                    .is_none_or(|c| self.containers.contains_key(c)))
    }

    /// Fills in a pod's namespace, name and container name where the logs say.
    pub fn enrich(&self, w: &mut Workload) {
        if w.kind != Kind::Pod {
            return;
        }
        let pod = w.pod_uid.as_ref().and_then(|u| self.pods.get(u));
        let container = w.container_id.as_ref().and_then(|c| self.containers.get(c));
        // The container's link names its pod too; trust it only for the same UID.
        let container = container.filter(|c| match (&c.pod_uid, &w.pod_uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        });
        let (ns, name) = match (pod, container) {
            (Some(p), _) => (&p.namespace, &p.pod),
            (None, Some(c)) => (&c.namespace, &c.pod),
            (None, None) => return,
        };
        w.set_pod_names(ns, name, container.map(|c| c.container.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::classify;

    const UID: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
    const ID: &str = "8618d3540ce713dd59ed0549719643a71dd482c40c21685773e7ac1291b004f5";

    #[test]
    fn parses_pod_directories() {
        let (n, uid) = parse_pod_dir(&format!("payments_checkout-7d9f_{UID}")).unwrap();
        assert_eq!(
            (n.namespace.as_str(), n.pod.as_str(), uid.as_str()),
            ("payments", "checkout-7d9f", UID)
        );
        for bad in ["payments_checkout", "a_b_c_d", "_b_c", "a__c", "a_b_", ""] {
            assert_eq!(parse_pod_dir(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_container_links() {
        let target = format!("/var/log/pods/payments_checkout-7d9f_{UID}/api/0.log");
        let (c, id) = parse_container_log(
            &format!("checkout-7d9f_payments_api-{ID}.log"),
            Some(&target),
        )
        .unwrap();
        assert_eq!(
            c,
            ContainerName {
                namespace: "payments".into(),
                pod: "checkout-7d9f".into(),
                container: "api".into(),
                pod_uid: Some(UID.into()),
            }
        );
        assert_eq!(id, ID);
        // Without the target the UID is unknown; a relative target works too.
        let (c, _) = parse_container_log(&format!("p_ns_c-{ID}.log"), None).unwrap();
        assert_eq!(c.pod_uid, None);
        let (c, _) = parse_container_log(
            &format!("p_ns_c-{ID}.log"),
            Some(&format!("../pods/ns_p_{UID}/c/3.log")),
        )
        .unwrap();
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        for bad in [
            format!("p_ns_c-{ID}"),
            format!("p_ns-{ID}.log"),
            format!("p_ns_c_x-{ID}.log"),
            "p_ns_c-.log".to_owned(),
            "p_ns_c.log".to_owned(),
        ] {
            assert_eq!(parse_container_log(&bad, None), None, "{bad}");
        }
    }

    fn pod_path(id: &str) -> String {
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            UID.replace('-', "_")
        )
    }

    #[test]
    fn names_a_pod_and_its_container() {
        let pod_dir = format!("payments_checkout-7d9f_{UID}");
        let link = format!("checkout-7d9f_payments_api-{ID}.log");
        let target = format!("/var/log/pods/{pod_dir}/api/0.log");
        let index = Index::from_entries(
            [pod_dir.as_str(), "junk"],
            [(link.as_str(), Some(target.as_str()))],
        );
        let mut w = classify(&pod_path(ID));
        assert!(index.knows(&w));
        index.enrich(&mut w);
        assert_eq!(w.name, "payments/checkout-7d9f");
        assert_eq!(
            (
                w.namespace.as_deref(),
                w.pod.as_deref(),
                w.container.as_deref()
            ),
            (Some("payments"), Some("checkout-7d9f"), Some("api"))
        );
        assert_eq!(w.label(), "pod payments/checkout-7d9f (api)");

        // A container the logs do not know (the pause container has no log): the pod
        // is named, the container is not, and the index says it may be out of date.
        let other = "1".repeat(64);
        let mut w = classify(&pod_path(&other));
        assert!(!index.knows(&w));
        index.enrich(&mut w);
        assert_eq!(
            (w.name.as_str(), w.container.as_deref()),
            ("payments/checkout-7d9f", None)
        );
        assert_eq!(w.container_id.as_deref(), Some(other.as_str()));

        // No logs at all: the UID and the id alone.
        let mut w = classify(&pod_path(ID));
        Index::default().enrich(&mut w);
        assert_eq!((w.name.as_str(), w.pod.as_deref()), (UID, None));
        assert_eq!(w.label(), format!("pod {UID}"));
    }

    #[test]
    fn a_container_link_alone_names_the_pod_unless_its_uid_differs() {
        let link = format!("checkout_payments_api-{ID}.log");
        let index = Index::from_entries([], [(link.as_str(), None)]);
        let mut w = classify(&pod_path(ID));
        index.enrich(&mut w);
        assert_eq!(
            (w.name.as_str(), w.container.as_deref()),
            ("payments/checkout", Some("api"))
        );

        let elsewhere = format!(
            "/var/log/pods/payments_checkout_{}/api/0.log",
            "0".repeat(32)
        );
        let index = Index::from_entries([], [(link.as_str(), Some(elsewhere.as_str()))]);
        let mut w = classify(&pod_path(ID));
        index.enrich(&mut w);
        assert_eq!((w.name.as_str(), w.container.as_deref()), (UID, None));
    }

    #[test]
    fn leaves_other_workloads_alone() {
        let index = Index::from_entries([format!("a_b_{UID}").as_str()], []);
        let mut w = classify("/system.slice/nginx.service");
        let before = w.clone();
        assert!(index.knows(&w));
        index.enrich(&mut w);
        assert_eq!(w, before);
    }
}

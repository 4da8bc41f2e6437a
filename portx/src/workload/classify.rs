//! Which workload a cgroup v2 path belongs to, by the layouts systemd, the container
//! runtimes and the kubelet really use. Pixie's resolver lists the same ones
//! (<https://github.com/pixie-io/pixie/blob/main/src/shared/metadata/cgroup_path_resolver.cc>);
//! the kubelet's own names are in
//! <https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/cm/cgroup_manager_linux.go>.
//!
//! The order matters: a pod first (its containers are runtime scopes too), then a
//! container, then a systemd unit. The outermost match wins, so a cgroup nested
//! inside a container (Podman's `libpod-ID.scope/container`, systemd running in a
//! container) still names that container. A path none of them fits is its own name.

use super::{Kind, Workload};

/// The workload of cgroup `path` (as in `/proc/PID/cgroup`, `/` at the top).
pub fn classify(path: &str) -> Workload {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    pod(&parts)
        .or_else(|| container(&parts))
        .or_else(|| unit(&parts))
        .unwrap_or_else(|| Workload::named(Kind::Cgroup, if parts.is_empty() { "/" } else { path }))
}

/// A pod: a component naming `kubepods` (`kubepods`, `kubepods.slice`,
/// `kubelet-kubepods.slice` under a kubelet cgroup root), then the pod's own cgroup:
/// `pod<UID>` (cgroupfs driver) or `kubepods[-QOS]-pod<UID_>.slice` (systemd driver),
/// then optionally the container's.
fn pod(parts: &[&str]) -> Option<Workload> {
    let kube = parts.iter().position(|p| p.contains("kubepods"))?;
    for (i, part) in parts.iter().enumerate().skip(kube) {
        // containerd's cgroup v1 systemd form keeps pod and container in one
        // component: `kubepods-besteffort-pod<UID>.slice:cri-containerd:<ID>`.
        let mut colon = part.split(':');
        let pod_part = colon.next()?;
        let Some((uid, qos)) = pod_uid(pod_part) else {
            continue;
        };
        let qos = qos.or_else(|| {
            // cgroupfs: `kubepods/burstable/pod<UID>`; the systemd name carries it.
            let parent = *parts.get(i.checked_sub(1)?)?;
            ["burstable", "besteffort"]
                .into_iter()
                .find(|q| parent == *q || parent.ends_with(&format!("-{q}.slice")))
        });
        let container = match (colon.next(), colon.next()) {
            (Some(runtime), Some(id)) if is_container_id(id) => Some((runtime_name(runtime), id)),
            _ => parts.get(i + 1).and_then(|c| container_of(c)),
        };
        let mut w = Workload::named(Kind::Pod, uid.clone());
        w.pod_uid = Some(uid);
        w.qos = Some(qos.unwrap_or("guaranteed").to_owned());
        if let Some((runtime, id)) = container {
            w.runtime = runtime.map(str::to_owned);
            w.container_id = Some(id.to_owned());
        }
        return Some(w);
    }
    None
}

/// The pod UID and QoS class in a pod cgroup's name, or `None` when `part` is not one.
fn pod_uid(part: &str) -> Option<(String, Option<&'static str>)> {
    let (raw, qos) = if let Some(stem) = part.strip_suffix(".slice") {
        let (prefix, uid) = stem.rsplit_once("-pod")?;
        let qos = ["burstable", "besteffort"]
            .into_iter()
            .find(|q| prefix.ends_with(&format!("-{q}")));
        (uid, qos)
    } else {
        (part.strip_prefix("pod")?, None)
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some((uid, qos))
}

/// A UID as the API server makes them (8-4-4-4-12 hex digits), or a static pod's:
/// the kubelet uses the 32-hex-digit hash of its manifest.
fn is_pod_uid(uid: &str) -> bool {
    let b = uid.as_bytes();
    let hex = |c: &u8| c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
    match b.len() {
        32 => b.iter().all(hex),
        36 => b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                hex(c)
            }
        }),
        _ => false,
    }
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The runtime's name for people, from the prefix it gives its scopes.
fn runtime_name(prefix: &str) -> Option<&'static str> {
    Some(match prefix {
        "docker" => "docker",
        "cri-containerd" => "containerd",
        "crio" => "cri-o",
        "libpod" => "podman",
        _ => return None,
    })
}

/// A container's own cgroup: `RUNTIME-ID.scope` (systemd driver), or the bare ID
/// (cgroupfs driver, runtime unknown). The runtimes' monitor scopes
/// (`crio-conmon-ID.scope`, `libpod-conmon-ID.scope`) are not the container.
fn container_of(part: &str) -> Option<(Option<&'static str>, &str)> {
    if is_container_id(part) {
        return Some((None, part));
    }
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    let (prefix, id) = stem.rsplit_once('-')?;
    let runtime = runtime_name(prefix)?;
    // A bare `libpod-ID` is Podman's cgroupfs manager; the others are scopes.
    (is_container_id(id) && (part.ends_with(".scope") || prefix == "libpod"))
        .then_some((Some(runtime), id))
}

/// A container outside Kubernetes: a runtime scope anywhere (`system.slice/docker-ID.scope`,
/// `machine.slice/libpod-ID.scope`, a user's rootless Podman), or Docker's cgroupfs
/// layout `/docker/ID`.
fn container(parts: &[&str]) -> Option<Workload> {
    let (runtime, id) = parts.iter().enumerate().find_map(|(i, p)| {
        container_of(p).filter(|(rt, _)| rt.is_some()).or_else(|| {
            let id = *parts.get(i + 1)?;
            (*p == "docker" && is_container_id(id)).then_some((Some("docker"), id))
        })
    })?;
    let runtime = runtime.unwrap_or("docker");
    let mut w = Workload::named(Kind::Container, format!("{runtime}:{}", &id[..12]));
    w.runtime = Some(runtime.to_owned());
    w.container_id = Some(id.to_owned());
    Some(w)
}

/// The innermost systemd unit: a cgroup below a unit (a service's delegated
/// sub-tree) is still that unit's. The user is the one whose `user@UID.service` or
/// `user-UID.slice` holds it.
fn unit(parts: &[&str]) -> Option<Workload> {
    let unit = parts
        .iter()
        .rev()
        .find(|p| p.len() > ".scope".len() && (p.ends_with(".service") || p.ends_with(".scope")))?;
    let uid = parts.iter().find_map(|p| {
        let n = p
            .strip_prefix("user@")
            .and_then(|s| s.strip_suffix(".service"))
            .or_else(|| {
                p.strip_prefix("user-")
                    .and_then(|s| s.strip_suffix(".slice"))
            })?;
        n.parse::<u32>().ok()
    });
    let kind = if unit.ends_with(".service") {
        Kind::Service
    } else {
        Kind::Scope
    };
    let name = match uid {
        Some(uid) => format!("user-{uid}/{unit}"),
        None => (*unit).to_owned(),
    };
    let mut w = Workload::named(kind, name);
    w.unit = Some((*unit).to_owned());
    w.uid = uid;
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
    const ID: &str = "8618d3540ce713dd59ed0549719643a71dd482c40c21685773e7ac1291b004f5";

    /// (kind, name, pod_uid, qos, runtime, container_id, unit, uid) of a path.
    type Row = (
        Kind,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<u32>,
    );

    fn row(path: &str) -> Row {
        let w = classify(path);
        (
            w.kind,
            w.name,
            w.pod_uid,
            w.qos,
            w.runtime,
            w.container_id,
            w.unit,
            w.uid,
        )
    }

    fn pod_row(qos: &str, runtime: Option<&str>, container: bool) -> Row {
        (
            Kind::Pod,
            UID.into(),
            Some(UID.into()),
            Some(qos.into()),
            runtime.map(Into::into),
            container.then(|| ID.into()),
            None,
            None,
        )
    }

    #[test]
    fn kubernetes_pods_with_the_systemd_driver_every_qos_class() {
        let u = UID.replace('-', "_");
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                pod_row("burstable", Some("containerd"), true),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
                ),
                pod_row("besteffort", Some("cri-o"), true),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{ID}.scope"),
                pod_row("guaranteed", Some("docker"), true),
            ),
            // The pod's own cgroup, and CRI-O's monitor beside the container.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                pod_row("burstable", None, false),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope"),
                pod_row("guaranteed", None, false),
            ),
            // kind and other kubelets with a cgroup root of their own.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                pod_row("besteffort", Some("containerd"), true),
            ),
            // containerd's cgroup v1 systemd form, in one component.
            (
                format!(
                    "/system.slice/containerd.service/kubepods-besteffort-pod{u}.slice:cri-containerd:{ID}"
                ),
                pod_row("besteffort", Some("containerd"), true),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(row(&path), want, "{path}");
        }
    }

    #[test]
    fn kubernetes_pods_with_the_cgroupfs_driver_every_qos_class() {
        let cases = [
            (format!("/kubepods/burstable/pod{UID}/{ID}"), "burstable"),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), "besteffort"),
            (format!("/kubepods/pod{UID}/{ID}"), "guaranteed"),
        ];
        for (path, qos) in cases {
            assert_eq!(row(&path), pod_row(qos, None, true), "{path}");
        }
        // A static pod's UID is its manifest's hash.
        let w = classify("/kubepods/besteffort/pod0d0ad1f6c8e0b7c8e1f2a3b4c5d6e7f8");
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("0d0ad1f6c8e0b7c8e1f2a3b4c5d6e7f8")
        );
        assert_eq!(w.container_id, None);
    }

    #[test]
    fn containers_outside_kubernetes() {
        let short = &ID[..12];
        let c = |rt: &str| {
            (
                Kind::Container,
                format!("{rt}:{short}"),
                None,
                None,
                Some(rt.to_owned()),
                Some(ID.to_owned()),
                None,
                None,
            )
        };
        for (path, want) in [
            (format!("/system.slice/docker-{ID}.scope"), c("docker")),
            (format!("/docker/{ID}"), c("docker")),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                c("containerd"),
            ),
            (format!("/machine.slice/crio-{ID}.scope"), c("cri-o")),
            (format!("/machine.slice/libpod-{ID}.scope"), c("podman")),
            // Podman puts the payload one level down; rootless under the user.
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                c("podman"),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                c("podman"),
            ),
            (format!("/libpod_parent/libpod-{ID}"), c("podman")),
            // systemd inside a container: still the container.
            (
                format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service"),
                c("docker"),
            ),
        ] {
            assert_eq!(row(&path), want, "{path}");
        }
    }

    #[test]
    fn systemd_units_and_sessions() {
        let u = |kind, name: &str, unit: &str, uid| {
            (
                kind,
                name.to_owned(),
                None,
                None,
                None,
                None,
                Some(unit.to_owned()),
                uid,
            )
        };
        for (path, want) in [
            (
                "/system.slice/nginx.service",
                u(Kind::Service, "nginx.service", "nginx.service", None),
            ),
            // A service's delegated sub-tree is still the service.
            (
                "/system.slice/containerd.service/worker",
                u(
                    Kind::Service,
                    "containerd.service",
                    "containerd.service",
                    None,
                ),
            ),
            (
                "/init.scope",
                u(Kind::Scope, "init.scope", "init.scope", None),
            ),
            (
                "/system.slice/run-r1234.scope",
                u(Kind::Scope, "run-r1234.scope", "run-r1234.scope", None),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                u(
                    Kind::Scope,
                    "user-1000/session-3.scope",
                    "session-3.scope",
                    Some(1000),
                ),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox.service",
                u(
                    Kind::Service,
                    "user-1000/app-firefox.service",
                    "app-firefox.service",
                    Some(1000),
                ),
            ),
            (
                "/user.slice/user-0.slice/user@0.service/init.scope",
                u(Kind::Scope, "user-0/init.scope", "init.scope", Some(0)),
            ),
        ] {
            assert_eq!(row(path), want, "{path}");
        }
    }

    #[test]
    fn malformed_and_unknown_paths_are_their_own_name() {
        let short = &UID[..30];
        for path in [
            "/",
            "",
            "/portx-test/client",
            "/system.slice",
            "/user.slice/user-1000.slice",
            // Not a UID, not a container id: nothing is guessed.
            "/kubepods.slice/kubepods-burstable.slice",
            &format!("/kubepods/burstable/pod{short}"),
            "/kubepods/burstable/podNOT-A-UID",
            "/docker/abc123",
            &format!("/docker/{}", ID.to_uppercase()),
            "/system.slice/.scope",
        ] {
            let w = classify(path);
            assert_eq!(w.kind, Kind::Cgroup, "{path}: {w:?}");
            assert_eq!(w.name, if path.is_empty() { "/" } else { path });
            assert_eq!((w.pod_uid, w.container_id, w.unit), (None, None, None));
        }
        // A runtime-looking scope with a bad id is still a scope: systemd made it.
        let w = classify("/system.slice/docker-abc.scope");
        assert_eq!(
            (w.kind, w.unit.as_deref()),
            (Kind::Scope, Some("docker-abc.scope"))
        );
        // A kubepods path without a pod cgroup falls back to the unit in it.
        let w = classify(&format!(
            "/kubepods.slice/kubepods-burstable.slice/docker-{ID}.scope"
        ));
        assert_eq!(w.kind, Kind::Container);
    }
}

//! The who-and-where parts of an alert, from the kernel's identity and what
//! the metadata stage learnt: pod (Kubernetes API), container (CRI, cgroup
//! names) and process (kernel ancestry, /proc).

use std::sync::Arc;

use tokenwatch_proto::v1::{ContainerContext, KubernetesContext, ProcessContext, ProcessRef, Workload};

use super::origin::origin;
use crate::{
    kernel::{clock::BootClock, Identity},
    metadata::{
        cgroup::CgroupIdentity, container_fs::kernel_dev_display, cri::ContainerMeta, kube::PodInfo,
        process::ProcessInfo,
    },
};

/// Pod-level identity: the API's view first, the runtime's labels where
/// the API has not answered (yet).
pub fn kubernetes(
    cgroup: &CgroupIdentity,
    container: Option<&Arc<ContainerMeta>>,
    pod: Option<&Arc<PodInfo>>,
) -> KubernetesContext {
    let container_name = container.map(|c| c.name.clone()).unwrap_or_default();
    let mut context = KubernetesContext {
        namespace: container.map(|c| c.pod_namespace.clone()).unwrap_or_default(),
        pod: container.map(|c| c.pod_name.clone()).unwrap_or_default(),
        pod_uid: container
            .map(|c| c.pod_uid.clone())
            .filter(|uid| !uid.is_empty())
            .or_else(|| cgroup.pod_uid.clone())
            .unwrap_or_default(),
        container: container_name.clone(),
        image: container.map(|c| c.image.clone()).unwrap_or_default(),
        ..KubernetesContext::default()
    };
    if let Some(pod) = pod {
        context.namespace.clone_from(&pod.namespace);
        context.pod.clone_from(&pod.name);
        context.pod_uid.clone_from(&pod.uid);
        context.service_account.clone_from(&pod.service_account);
        context.workload = pod.workload.as_ref().map(|w| Workload { kind: w.kind.clone(), name: w.name.clone() });
        context.labels = pod.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        context.automount_service_account_token = pod.automount_service_account_token;
        // Without the runtime's answer, the pod status names the container
        // by its id.
        let spec = match cgroup.container_id.as_deref() {
            Some(id) if container_name.is_empty() => {
                pod.containers.iter().find(|c| c.container_id.as_deref() == Some(id))
            }
            _ => pod.containers.iter().find(|c| c.name == container_name),
        };
        if let Some(spec) = spec {
            if context.container.is_empty() {
                context.container.clone_from(&spec.name);
            }
            if context.image.is_empty() {
                context.image.clone_from(&spec.image);
            }
        }
    }
    context
}

/// The container as the node sees it.
pub fn container(identity: &Identity, cgroup: &CgroupIdentity) -> ContainerContext {
    ContainerContext {
        id: cgroup.container_id.clone().unwrap_or_default(),
        cgroup_id: identity.cgroup_id,
        cgroup_names: identity.cgroup_names.to_vec(),
        runtime: cgroup.runtime.map(|r| r.name().to_owned()).unwrap_or_default(),
    }
}

/// The process and its ancestry: pids and names as the kernel recorded
/// them, executables from /proc where the process still existed.
pub fn process(
    identity: &Identity,
    info: &ProcessInfo,
    container: Option<&Arc<ContainerMeta>>,
    clock: BootClock,
) -> ProcessContext {
    let exe_of = |pid: u32| info.ancestors.iter().find(|a| a.pid == pid).map(|a| a.exe.clone()).unwrap_or_default();
    ProcessContext {
        pid: identity.pid,
        tid: identity.tid,
        uid: identity.uid,
        gid: identity.gid,
        comm: identity.comm.clone(),
        exe: info.exe.clone(),
        args: info.args.clone(),
        parents: identity
            .ancestors
            .iter()
            .map(|a| ProcessRef { pid: a.pid, comm: a.comm.clone(), exe: exe_of(a.pid), ns_pid: a.ns_pid })
            .collect(),
        ns_pid: identity.ns_pid,
        origin: origin(identity, container.and_then(|c| c.init_pid)).into(),
        executable_name: identity.executable.name.clone(),
        executable_device: match identity.executable.dev {
            0 => String::new(),
            dev => kernel_dev_display(dev),
        },
        executable_inode: identity.executable.ino,
        start_time: (identity.process_start_ns != 0).then(|| {
            let (seconds, nanos) = clock.wall(identity.process_start_ns);
            pbjson_types::Timestamp { seconds, nanos }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::kube::{ContainerInfo, ContainerKind, Workload as PodWorkload};

    fn pod() -> Arc<PodInfo> {
        Arc::new(PodInfo {
            namespace: "shop".into(),
            name: "checkout-7f9c".into(),
            uid: "uid-1".into(),
            service_account: "checkout".into(),
            labels: [("app".to_owned(), "checkout".to_owned())].into(),
            workload: Some(PodWorkload { kind: "Deployment".into(), name: "checkout".into() }),
            automount_service_account_token: Some(true),
            containers: vec![ContainerInfo {
                name: "api".into(),
                image: "shop/api:1.4".into(),
                kind: ContainerKind::Regular,
                token_mounts: Vec::new(),
                container_id: Some("abc".into()),
            }],
            deleted_at: None,
        })
    }

    #[test]
    fn the_api_names_the_container_by_id_when_the_runtime_cannot() {
        let cgroup = CgroupIdentity { container_id: Some("abc".into()), pod_uid: Some("uid-1".into()), runtime: None };
        let context = kubernetes(&cgroup, None, Some(&pod()));
        assert_eq!((context.namespace.as_str(), context.pod.as_str()), ("shop", "checkout-7f9c"));
        assert_eq!((context.container.as_str(), context.image.as_str()), ("api", "shop/api:1.4"));
        assert_eq!(context.service_account, "checkout");
        assert_eq!(context.workload, Some(Workload { kind: "Deployment".into(), name: "checkout".into() }));
        assert_eq!(context.automount_service_account_token, Some(true));
        assert_eq!(context.labels.get("app").map(String::as_str), Some("checkout"));
    }

    #[test]
    fn the_runtime_alone_gives_pod_names_and_the_cgroup_the_uid() {
        let runtime = Arc::new(ContainerMeta {
            id: "abc".into(),
            name: "api".into(),
            image: "shop/api@sha256:1".into(),
            pod_name: "checkout-7f9c".into(),
            pod_namespace: "shop".into(),
            ..ContainerMeta::default()
        });
        let cgroup = CgroupIdentity { container_id: Some("abc".into()), pod_uid: Some("uid-9".into()), runtime: None };
        let context = kubernetes(&cgroup, Some(&runtime), None);
        assert_eq!((context.pod.as_str(), context.container.as_str()), ("checkout-7f9c", "api"));
        assert_eq!(context.pod_uid, "uid-9", "from the cgroup when the runtime's labels lack it");
        assert!(context.service_account.is_empty());
    }
}

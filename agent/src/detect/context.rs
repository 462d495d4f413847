//! The who-and-where parts of an alert, from the kernel's identity and what
//! the metadata stage learnt: pod (Kubernetes API), container (CRI, cgroup
//! names) and process (kernel ancestry, /proc).

use std::sync::Arc;

use tokenwatch_proto::v1::{ContainerContext, KubernetesContext, ProcessContext, ProcessRef, Workload};

use super::origin::origin;
use crate::{
    kernel::Identity,
    metadata::{cgroup::CgroupIdentity, cri::ContainerMeta, kube::PodInfo, process::ProcessInfo},
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
        if context.image.is_empty() {
            if let Some(spec) = pod.containers.iter().find(|c| c.name == container_name) {
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
pub fn process(identity: &Identity, info: &ProcessInfo, container: Option<&Arc<ContainerMeta>>) -> ProcessContext {
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
    }
}

//! Pods and the owners the pod watcher GETs (ReplicaSets, Jobs).

use hyper::Response;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::http::{json_response, status, Body};
use super::{to_json, FakeApiServer, Resource, Shared};

impl FakeApiServer {
    /// Creates a pod (keyed by namespace and name); returns its resourceVersion.
    pub fn add_pod(&self, pod: Pod) -> u64 {
        self.add(Resource::Pods, to_json(&pod), "add_pod")
    }

    /// Replaces an existing pod; returns its new resourceVersion.
    pub fn modify_pod(&self, pod: Pod) -> u64 {
        self.modify(Resource::Pods, to_json(&pod), "modify_pod")
    }

    /// Deletes a pod; returns the resourceVersion of the deletion.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> u64 {
        self.delete(Resource::Pods, namespace, name, "delete_pod")
    }

    /// Makes a ReplicaSet readable by GET.
    pub fn add_replicaset(&self, replicaset: ReplicaSet) {
        let (namespace, name) = namespace_name(&replicaset.metadata);
        self.shared.lock().owners.insert(("replicasets.apps".into(), namespace, name), to_json(&replicaset));
    }

    /// Makes a Job readable by GET.
    pub fn add_job(&self, job: Job) {
        let (namespace, name) = namespace_name(&job.metadata);
        self.shared.lock().owners.insert(("jobs.batch".into(), namespace, name), to_json(&job));
    }

    /// GETs of ReplicaSets and Jobs answer 403, as with a missing RBAC rule.
    pub fn forbid_gets(&self, forbid: bool) {
        self.shared.lock().forbid_gets = forbid;
    }
}

fn namespace_name(meta: &ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// GET of one owner object (`resource` is `replicasets.apps` or `jobs.batch`).
pub(super) fn get_owner(shared: &Shared, resource: &str, namespace: &str, name: &str) -> Response<Body> {
    let mut state = shared.lock();
    state.gets += 1;
    if state.forbid_gets {
        let message = format!("{resource} \"{name}\" is forbidden: cannot get in the namespace \"{namespace}\"");
        return status(403, "Forbidden", &message);
    }
    match state.owners.get(&(resource.to_string(), namespace.to_string(), name.to_string())) {
        Some(object) => json_response(200, object.to_string()),
        None => status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
    }
}

//! Says so when the node name matches nothing. With the wrong name (the
//! host name where it differs from the Node's, as on many clouds) the pod
//! watch lists no pod, and every alert only says "pod ... is not known":
//! nothing else would tell the operator. Once the first list is complete,
//! and then every minute, the agent compares: no pod listed for this node
//! while the container runtime runs pod sandboxes is warned about once,
//! naming the name used, where it came from and, if the API lets the
//! agent list them, the Nodes it knows.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{api::ListParams, Api, Client};
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::metadata::{cri::CriCache, kube::PodStore};

/// How often the comparison is made after the first.
const CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often the first list's completion is looked for.
const LISTED_POLL: Duration = Duration::from_millis(200);
/// The most Node names the warning lists.
const MAX_NODES_NAMED: u32 = 20;

/// The name in use, where it came from, and what to compare.
pub struct NodeNameCheck {
    /// The node name the pod watch selects on.
    pub node: String,
    /// `--node-name or the config file`, `TOKENWATCH_NODE_NAME`, `NODE_NAME`
    /// or the host name.
    pub source: &'static str,
    /// This node's pods, as the API lists them.
    pub pods: PodStore,
    /// The container runtime.
    pub cri: CriCache,
    /// The API, to name the Nodes it knows.
    pub client: Client,
}

impl NodeNameCheck {
    /// Compares until it has warned once or `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), DaemonError> {
        let mut pause = LISTED_POLL;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
            if !self.pods.listed() {
                continue;
            }
            pause = CHECK_INTERVAL;
            if !self.pods.is_empty() {
                continue;
            }
            let Ok(sandboxes) = self.cri.ready_pod_sandboxes().await else { continue };
            if sandboxes == 0 {
                continue;
            }
            let nodes = self.known_nodes().await;
            tracing::warn!(
                node = %self.node,
                from = self.source,
                pod_sandboxes = sandboxes,
                known_nodes = %nodes,
                "the Kubernetes API lists no pod on this node name while the container runtime runs pods: \
                 is the node name right? (--node-name, TOKENWATCH_NODE_NAME or NODE_NAME set it; alerts cannot \
                 name pods until it is)"
            );
            return Ok(());
        }
    }

    /// The Nodes the API knows, or why the agent cannot list them.
    async fn known_nodes(&self) -> String {
        let nodes: Api<Node> = Api::all(self.client.clone());
        describe_nodes(nodes.list(&ListParams::default().limit(MAX_NODES_NAMED)).await.map(|list| list.items))
    }
}

/// The warning's `known_nodes`: their names, or why there are none. The
/// shipped ClusterRole does not grant listing Nodes (the agent needs them
/// for nothing else), so a refusal is expected and is said plainly rather
/// than as the API's 403.
fn describe_nodes(listed: Result<Vec<Node>, kube::Error>) -> String {
    match listed {
        Ok(nodes) => {
            let names: Vec<String> = nodes.into_iter().filter_map(|n| n.metadata.name).collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        }
        Err(kube::Error::Api(status)) if status.is_forbidden() => {
            "not listed: the agent may not list Nodes (the shipped ClusterRole does not grant it); `kubectl get \
             nodes` names them"
                .to_owned()
        }
        Err(error) => format!("cannot list Nodes: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::core::Status;

    use super::*;

    fn node(name: &str) -> Node {
        Node { metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() }, ..Node::default() }
    }

    #[test]
    fn names_the_nodes_or_says_why_there_are_none() {
        assert_eq!(describe_nodes(Ok(vec![node("a"), node("b")])), "a, b");
        assert_eq!(describe_nodes(Ok(Vec::new())), "none");
        let forbidden = Status::failure("nodes is forbidden: User cannot list resource", "Forbidden").with_code(403);
        let said = describe_nodes(Err(kube::Error::Api(forbidden.boxed())));
        assert!(said.starts_with("not listed: the agent may not list Nodes"), "{said}");
        assert!(!said.contains("403"), "the expected refusal is said plainly: {said}");
        let failed = Status::failure("etcdserver: request timed out", "Timeout").with_code(504);
        let said = describe_nodes(Err(kube::Error::Api(failed.boxed())));
        assert!(said.starts_with("cannot list Nodes: ") && said.contains("etcdserver: request timed out"), "{said}");
    }
}

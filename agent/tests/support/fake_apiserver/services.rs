//! Services and EndpointSlices: what the API server's own address watch
//! reads; and Nodes, which the agent lists to say which names exist.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{to_json, FakeApiServer, Resource};

impl FakeApiServer {
    /// Creates a Node named `name`; returns its resourceVersion.
    pub fn add_node(&self, name: &str) -> u64 {
        let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
        self.add(Resource::Nodes, node, "add_node")
    }

    /// Creates a Service (keyed by namespace and name); returns its resourceVersion.
    pub fn add_service(&self, service: Service) -> u64 {
        self.add(Resource::Services, to_json(&service), "add_service")
    }

    /// Replaces an existing Service; returns its new resourceVersion.
    pub fn modify_service(&self, service: Service) -> u64 {
        self.modify(Resource::Services, to_json(&service), "modify_service")
    }

    /// Deletes a Service; returns the resourceVersion of the deletion.
    pub fn delete_service(&self, namespace: &str, name: &str) -> u64 {
        self.delete(Resource::Services, namespace, name, "delete_service")
    }

    /// Creates an EndpointSlice (keyed by namespace and name); returns its resourceVersion.
    pub fn add_endpointslice(&self, slice: EndpointSlice) -> u64 {
        self.add(Resource::EndpointSlices, to_json(&slice), "add_endpointslice")
    }

    /// Replaces an existing EndpointSlice; returns its new resourceVersion.
    pub fn modify_endpointslice(&self, slice: EndpointSlice) -> u64 {
        self.modify(Resource::EndpointSlices, to_json(&slice), "modify_endpointslice")
    }

    /// Deletes an EndpointSlice; returns the resourceVersion of the deletion.
    pub fn delete_endpointslice(&self, namespace: &str, name: &str) -> u64 {
        self.delete(Resource::EndpointSlices, namespace, name, "delete_endpointslice")
    }
}

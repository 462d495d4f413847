//! `tokenwatch.v1.InventoryService`: this agent's token usage inventory, on
//! the same server (and TLS) as the alert stream.

use std::time::SystemTime;

use tokenwatch_proto::v1::{inventory_service_server::InventoryService, GetInventoryRequest, Inventory as Message};
use tonic::{Request, Response, Status};

use crate::inventory::Inventory;

/// The service over the agent's inventory.
pub struct InventoryServer {
    inventory: Inventory,
}

impl InventoryServer {
    /// Serves `inventory`.
    pub fn new(inventory: Inventory) -> Self {
        InventoryServer { inventory }
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryServer {
    async fn get_inventory(&self, request: Request<GetInventoryRequest>) -> Result<Response<Message>, Status> {
        let request = request.into_inner();
        let snapshot = self.inventory.snapshot(&request.namespaces, SystemTime::now());
        tracing::debug!(workloads = snapshot.workloads.len(), "inventory requested");
        Ok(Response::new(snapshot))
    }
}

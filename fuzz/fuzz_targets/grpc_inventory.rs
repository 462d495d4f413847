//! gRPC request handling of `InventoryService/GetInventory`: any bytes a
//! client sends are decoded with prost (as tonic does) and answered from an
//! inventory that holds workloads, as the service does. Never a panic, and a
//! namespace filter only ever narrows the answer.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokenwatch_agent::inventory::Inventory;
use tokenwatch_fuzz::{fixed_time, sample_alerts};
use tokenwatch_proto::v1::GetInventoryRequest;

/// One inventory for the whole run, holding the sample alerts' workloads.
fn inventory() -> &'static Inventory {
    static INVENTORY: OnceLock<Inventory> = OnceLock::new();
    INVENTORY.get_or_init(|| {
        let inventory = Inventory::in_memory("node-1", fixed_time());
        for alert in sample_alerts() {
            inventory.record(&alert);
        }
        inventory
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = GetInventoryRequest::decode(bytes) else { return };
    let snapshot = inventory().snapshot(&request.namespaces, fixed_time());
    if !request.namespaces.is_empty() {
        for workload in &snapshot.workloads {
            assert!(
                request.namespaces.contains(&workload.namespace),
                "namespace {:?} not asked for",
                workload.namespace
            );
        }
    }
});

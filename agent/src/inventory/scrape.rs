//! The inventory on `/metrics` (with `--metrics-inventory`): its series
//! ([`super::series`]) written family by family, at most once a second
//! however many scrapes come (a Prometheus pair, a stray client), and one
//! render at a time, so a large inventory is never held twice.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use super::{series, Inventory};
use crate::metrics::Exposition;

/// How long a rendered inventory serves later scrapes.
const FRESH: Duration = Duration::from_secs(1);

/// The inventory as scraped, with the last render.
pub struct InventoryScrape {
    inventory: Inventory,
    last: Mutex<Option<(Instant, Arc<str>)>>,
}

impl InventoryScrape {
    /// Scrapes of `inventory`.
    pub fn new(inventory: Inventory) -> Self {
        InventoryScrape { inventory, last: Mutex::new(None) }
    }

    /// Writes the inventory's families into `out`.
    pub fn expose(&self, out: &mut Exposition) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, text)) = last.as_ref().filter(|(at, _)| at.elapsed() < FRESH) {
            out.push_str(text);
            return;
        }
        let mut fresh = Exposition::new();
        write(&self.inventory.snapshot(&[], SystemTime::now()), &mut fresh);
        let text: Arc<str> = fresh.into_string().into();
        out.push_str(&text);
        *last = Some((Instant::now(), text));
    }
}

/// Every family of `inventory`, each declared even when empty, written
/// straight from it with borrowed labels.
pub fn write(inventory: &tokenwatch_proto::v1::Inventory, out: &mut Exposition) {
    let mut bodies: Vec<Exposition> = series::FAMILIES.iter().map(|_| Exposition::default()).collect();
    series::visit(inventory, |family, _, labels, value| {
        if let Some(at) = series::FAMILIES.iter().position(|f| f.name == family.name) {
            bodies[at].sample(family.name, labels, value);
        }
    });
    for (family, body) in series::FAMILIES.into_iter().zip(bodies) {
        out.family(family.name, family.kind.name(), family.help);
        out.push_str(body.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inventory_renders_one_series_set_per_workload() {
        let book = Inventory::in_memory("node-a", SystemTime::UNIX_EPOCH);
        book.record(&tokenwatch_proto::v1::Alert {
            rule: "token-read".to_owned(),
            count: 2,
            time: Some(pbjson_types::Timestamp { seconds: 100, nanos: 5 }),
            kubernetes: Some(tokenwatch_proto::v1::KubernetesContext {
                namespace: "shop".to_owned(),
                pod: "web-1".to_owned(),
                workload: Some(tokenwatch_proto::v1::Workload { kind: "Deployment".into(), name: "web".into() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut out = Exposition::new();
        write(&book.snapshot(&[], SystemTime::UNIX_EPOCH + Duration::from_secs(160)), &mut out);
        let text = out.into_string();
        let labels = "node=\"node-a\",namespace=\"shop\",workload_kind=\"Deployment\",workload=\"web\",\
                      service_account=\"default\",token_kind=\"unknown\"";
        assert!(text.contains(&format!("tokenwatch_workload_token_reads_total{{{labels}}} 2\n")), "{text}");
        assert!(text.contains(&format!("tokenwatch_workload_token_read_last_timestamp_seconds{{{labels}}} 100\n")));
        assert!(text.contains("tokenwatch_inventory_observed_seconds{node=\"node-a\"} 160\n"), "{text}");
        assert!(text.contains("# TYPE tokenwatch_workload_token_reads_total counter\n"), "{text}");
    }

    #[test]
    fn scrapes_within_a_second_share_one_render() {
        let book = Inventory::in_memory("node-a", SystemTime::UNIX_EPOCH);
        let scrape = InventoryScrape::new(book);
        let (mut first, mut second) = (Exposition::new(), Exposition::new());
        scrape.expose(&mut first);
        scrape.expose(&mut second);
        assert_eq!(first.as_str(), second.as_str());
        assert!(first.as_str().contains("tokenwatch_inventory_observed_seconds{node=\"node-a\"}"));
    }
}

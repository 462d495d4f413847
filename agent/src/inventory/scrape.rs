//! The inventory on `/metrics` (with `--metrics-inventory`): its series
//! ([`super::series`]) written family by family. A snapshot serves every
//! scrape within a second however many come (a Prometheus pair, a stray
//! client), and one scrape at a time takes it, so a large inventory is
//! never copied twice.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use super::{series, Inventory};
use crate::metrics::{FamilyWriter, Scrape};

/// How long a snapshot serves later scrapes.
const FRESH: Duration = Duration::from_secs(1);

/// The inventory as scraped, with the last snapshot.
pub struct InventoryScrape {
    inventory: Inventory,
    last: Mutex<Option<(Instant, Arc<tokenwatch_proto::v1::Inventory>)>>,
}

impl InventoryScrape {
    /// Scrapes of `inventory`.
    pub fn new(inventory: Inventory) -> Self {
        InventoryScrape { inventory, last: Mutex::new(None) }
    }

    /// Writes the inventory's families into `out`.
    pub fn expose(&self, out: &mut Scrape<'_>) -> std::fmt::Result {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = match last.as_ref().filter(|(at, _)| at.elapsed() < FRESH) {
            Some((_, snapshot)) => Arc::clone(snapshot),
            None => {
                let snapshot = Arc::new(self.inventory.snapshot(&[], SystemTime::now()));
                *last = Some((Instant::now(), Arc::clone(&snapshot)));
                snapshot
            }
        };
        write(&snapshot, out)
    }
}

/// Every family of `inventory`, each declared even when empty, written
/// straight from it with borrowed labels: one pass per family.
pub fn write(inventory: &tokenwatch_proto::v1::Inventory, out: &mut Scrape<'_>) -> std::fmt::Result {
    for family in series::FAMILIES {
        let mut writer = FamilyWriter::new(out, family.name, family.kind, family.help)?;
        let mut written = Ok(());
        series::visit_family(inventory, family, |_, _, labels, value| {
            if written.is_ok() {
                written = writer.sample(&labels, value);
            }
        });
        written?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{render, Metrics};

    /// Two token reads by a Deployment's pod in `shop`.
    fn web_read() -> tokenwatch_proto::v1::Alert {
        tokenwatch_proto::v1::Alert {
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
        }
    }

    #[test]
    fn the_inventory_renders_one_series_set_per_workload() {
        let book = Inventory::in_memory("node-a", SystemTime::UNIX_EPOCH);
        book.record(&web_read());
        let snapshot = book.snapshot(&[], SystemTime::UNIX_EPOCH + Duration::from_secs(160));
        let metrics = Metrics::default();
        metrics.register_source(move |out| write(&snapshot, out));
        let text = render(&metrics).expect("renders");
        let labels = "node=\"node-a\",namespace=\"shop\",workload_kind=\"Deployment\",workload=\"web\",\
                      service_account=\"default\",token_kind=\"unknown\"";
        assert!(text.contains(&format!("tokenwatch_workload_token_reads_total{{{labels}}} 2\n")), "{text}");
        assert!(text.contains(&format!("tokenwatch_workload_token_read_last_timestamp_seconds{{{labels}}} 100\n")));
        assert!(text.contains("tokenwatch_inventory_observed_seconds{node=\"node-a\"} 160\n"), "{text}");
        assert!(text.contains("# TYPE tokenwatch_workload_token_reads_total counter\n"), "{text}");
        for family in series::FAMILIES {
            assert_eq!(text.matches(&format!("# TYPE {} ", family.name)).count(), 1, "{}: {text}", family.name);
        }
    }

    #[test]
    fn scrapes_within_a_second_share_one_snapshot() {
        let book = Inventory::in_memory("node-a", SystemTime::UNIX_EPOCH);
        let scrape = Arc::new(InventoryScrape::new(book.clone()));
        let inventory_part =
            |text: String| text[text.find("tokenwatch_inventory").expect("inventory families")..].to_owned();
        let first = inventory_part(scraped(&scrape));
        book.record(&web_read());
        let second = inventory_part(scraped(&scrape));
        assert_eq!(first, second, "the second scrape within a second reads the first one's snapshot");
        assert!(!second.contains("namespace=\"shop\""), "{second}");
        assert!(first.contains("tokenwatch_inventory_observed_seconds{node=\"node-a\"}"), "{first}");
    }

    fn scraped(scrape: &Arc<InventoryScrape>) -> String {
        let scrape = Arc::clone(scrape);
        let metrics = Metrics::default();
        metrics.register_source(move |out| scrape.expose(out));
        render(&metrics).expect("renders")
    }
}

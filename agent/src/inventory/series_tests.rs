//! The inventory as metric series: bounded, and read back into the same
//! inventory the gRPC API gives (to the second).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokenwatch_proto::v1::Inventory as Message;

use super::from_series::{inventories, FromSeriesError, Reading};
use super::merge::merge_inventories;
use super::series::{self, Sample, MAX_SERIES_PER_WORKLOAD, WORKLOAD_LABELS};
use super::tests::{alert, at, legacy_volume, pod, vault_volume, T0};
use super::*;

/// What a Prometheus instant query answers for `samples`, with the labels
/// the scrape adds.
fn scraped(samples: &[Sample], instance: &str) -> Vec<Reading> {
    samples
        .iter()
        .map(|sample| {
            let mut labels: BTreeMap<String, String> =
                sample.labels.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
            labels.insert("instance".to_owned(), instance.to_owned());
            labels.insert("job".to_owned(), "tokenwatch".to_owned());
            Reading { name: sample.family.name.to_owned(), labels, value: sample.value as f64 }
        })
        .collect()
}

/// `message` as a scrape carries it: times to the second.
fn to_the_second(mut message: Message) -> Message {
    let cut = |t: &mut Option<pbjson_types::Timestamp>| {
        if let Some(t) = t {
            t.nanos = 0;
        }
    };
    cut(&mut message.observed_since);
    cut(&mut message.generated_at);
    for w in &mut message.workloads {
        cut(&mut w.observed_since);
        cut(&mut w.last_pod_seen);
        for usage in [&mut w.token_reads, &mut w.api_server_connects].into_iter().flatten() {
            cut(&mut usage.first_seen);
            cut(&mut usage.last_seen);
        }
    }
    message
}

/// A node's inventory with every kind of evidence: reads and connects by
/// several binaries, a workload that never uses its token, three kinds of
/// mount, labels, an automount setting.
fn busy_node(node: &str, offset: i64) -> Inventory {
    let inventory = Inventory::in_memory(node, at(T0 + offset));
    let (legacy, vault) = (legacy_volume(), vault_volume());
    let mut idle = pod(&format!("idle-{node}-1"), "idle", "default", &[]);
    idle.automount_service_account_token = Some(true);
    let pods = [Arc::new(pod(&format!("ctl-{node}-1"), "ctl", "ctl", &[legacy, vault])), Arc::new(idle)];
    inventory.observe_pods(&pods, at(T0 + offset + 5));
    for (i, exe) in ["/usr/bin/kubectl", "/bin/busybox"].into_iter().enumerate() {
        let mut read = alert("token-read", "ctl", &format!("ctl-{node}-1"), exe, "cat", T0 + offset + 10);
        if let Some(k8s) = read.kubernetes.as_mut() {
            k8s.service_account = "ctl".to_owned();
        }
        read.count = 2 + u64::try_from(i).unwrap_or(0);
        inventory.record(&read);
        read.rule = "apiserver-connect".to_owned();
        inventory.record(&read);
    }
    inventory
}

#[test]
fn series_read_back_into_the_inventory_the_api_gives() {
    let inventory = busy_node("node-a", 0);
    let snapshot = inventory.snapshot(&[], at(T0 + 100));
    let samples = series::samples(&snapshot);
    let read = inventories(&scraped(&samples, "10.0.0.1:9100")).expect("an inventory");
    assert_eq!(read, vec![to_the_second(snapshot.clone())]);
    // The same, scraped twice (two Prometheus jobs on one agent): nothing counted twice.
    let mut twice = scraped(&samples, "10.0.0.1:9100");
    twice.extend(scraped(&samples, "tokenwatch.tokenwatch.svc:9100"));
    assert_eq!(inventories(&twice).expect("an inventory"), vec![to_the_second(snapshot)]);
}

#[test]
fn labels_a_scrape_renamed_are_read_as_the_agent_wrote_them() {
    let snapshot = busy_node("node-a", 0).snapshot(&[], at(T0 + 100));
    // A PodMonitor without honorLabels: the target's namespace and node
    // take the names, the agent's become exported_*.
    let renamed: Vec<Reading> = scraped(&series::samples(&snapshot), "10.0.0.1:9090")
        .into_iter()
        .map(|mut reading| {
            for name in ["namespace", "node"] {
                if let Some(value) = reading.labels.remove(name) {
                    reading.labels.insert(format!("exported_{name}"), value);
                    reading.labels.insert(name.to_owned(), format!("scrape-{name}"));
                }
            }
            reading
        })
        .collect();
    assert_eq!(inventories(&renamed).expect("an inventory"), vec![to_the_second(snapshot)]);
}

#[test]
fn two_nodes_merge_as_their_api_answers_do() {
    let (a, b) =
        (busy_node("node-a", 0).snapshot(&[], at(T0 + 100)), busy_node("node-b", 7).snapshot(&[], at(T0 + 90)));
    let mut readings = scraped(&series::samples(&a), "a:9100");
    readings.extend(scraped(&series::samples(&b), "b:9100"));
    let from_series = merge_inventories(inventories(&readings).expect("inventories"));
    assert_eq!(from_series, to_the_second(merge_inventories([a, b])));
    let ctl = from_series.workloads.iter().find(|w| w.service_account == "ctl").expect("ctl");
    assert_eq!(ctl.token_reads.as_ref().map(|u| u.count), Some(10), "2 + 3 on each node");
    assert_eq!(ctl.nodes, ["node-a", "node-b"]);
}

#[test]
fn a_thousand_workloads_stay_within_the_documented_label_set_and_bound() {
    let inventory = Inventory::in_memory("node-a", at(T0));
    let pods: Vec<Arc<_>> =
        (0..1_000).map(|w| Arc::new(pod(&format!("w{w}-p"), &format!("w{w}"), "default", &[]))).collect();
    inventory.observe_pods(&pods, at(T0));
    for w in 0..1_000 {
        // Far more binaries than any workload keeps, on both kinds of use.
        for b in 0..(MAX_BINARIES + 8) {
            let mut event = alert("token-read", &format!("w{w}"), &format!("w{w}-p"), &format!("/b/{b}"), "x", T0 + 1);
            inventory.record(&event);
            event.rule = "apiserver-connect".to_owned();
            inventory.record(&event);
        }
    }
    let samples = series::samples(&inventory.snapshot(&[], at(T0 + 60)));
    let mut per_workload: BTreeMap<String, usize> = BTreeMap::new();
    let mut label_sets: BTreeMap<&str, BTreeSet<Vec<&str>>> = BTreeMap::new();
    for sample in &samples {
        let names: Vec<&str> = sample.labels.iter().map(|(k, _)| *k).collect();
        label_sets.entry(sample.family.name).or_default().insert(names.clone());
        if names.len() >= WORKLOAD_LABELS.len() {
            assert_eq!(names[..WORKLOAD_LABELS.len()], WORKLOAD_LABELS, "{sample:?}");
            *per_workload.entry(sample.labels[3].1.clone()).or_default() += 1;
        } else {
            assert_eq!(names, ["node"], "{sample:?}");
        }
    }
    assert_eq!(per_workload.len(), 1_000);
    let most = per_workload.values().max().copied().unwrap_or(0);
    assert!(most <= MAX_SERIES_PER_WORKLOAD, "{most} series for one workload");
    assert_eq!(most, 11 + 1 + 2 * MAX_BINARIES, "every fixed series, one mount, the binaries capped");
    assert!(samples.len() <= 2 + 1_000 * MAX_SERIES_PER_WORKLOAD, "{}", samples.len());
    // Every family has exactly one set of label names: the documented one.
    let extra = |family: &str| -> Vec<&str> {
        match family {
            f if f == series::INFO.name => vec!["token_mounted", "automount", "selector"],
            f if f == series::MOUNT_INFO.name => {
                vec!["mount_kind", "mount_path", "audience", "expiration_seconds", "secret_name", "containers"]
            }
            f if f == series::BINARY_INFO.name => vec!["use", "binary"],
            _ => vec![],
        }
    };
    for (family, sets) in &label_sets {
        let want: Vec<&str> = if family.starts_with("tokenwatch_inventory_") {
            vec!["node"]
        } else {
            WORKLOAD_LABELS.into_iter().chain(extra(family)).collect()
        };
        assert_eq!(sets.iter().collect::<Vec<_>>(), vec![&want], "{family}");
    }
}

#[test]
fn a_workload_gone_past_the_retention_is_forgotten_and_its_series_go() {
    let inventory = Inventory::in_memory("node-a", at(T0));
    inventory.record(&alert("token-read", "old", "old-1", "/bin/cat", "cat", T0));
    inventory.record(&alert("token-read", "recent", "recent-1", "/bin/cat", "cat", T0 + 10 * 86_400));
    let running = [Arc::new(pod("web-1", "web", "default", &[]))];
    inventory.observe_pods(&running, at(T0));
    let names = |now: i64| -> Vec<String> {
        inventory.forget_gone(at(now));
        series::samples(&inventory.snapshot(&[], at(now)))
            .into_iter()
            .filter(|s| s.family == &series::INFO)
            .map(|s| s.labels[3].1.clone())
            .collect()
    };
    assert_eq!(names(T0 + RETENTION_SECONDS), ["old", "recent", "web"], "kept up to the retention");
    assert_eq!(names(T0 + RETENTION_SECONDS + 1), ["recent", "web"], "a pod still running keeps its workload");
}

#[test]
fn no_series_and_no_observation_are_clear_errors() {
    assert_eq!(inventories(&[]), Err(FromSeriesError::Empty));
    let snapshot = busy_node("node-a", 0).snapshot(&[], at(T0 + 100));
    let workloads_only: Vec<Reading> = scraped(&series::samples(&snapshot), "a:9100")
        .into_iter()
        .filter(|r| !r.name.starts_with("tokenwatch_inventory_"))
        .collect();
    let error = inventories(&workloads_only).expect_err("no observation");
    assert_eq!(error, FromSeriesError::NoObservation { node: "node-a".to_owned() });
    assert!(error.to_string().contains("tokenwatch_inventory_observed_since_timestamp_seconds"), "{error}");
}

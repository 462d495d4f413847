//! The token inventory as OTLP metrics, next to the alerts' logs: the same
//! series `/metrics` exposes ([`crate::inventory::series`]), for clusters
//! whose metrics go through an OpenTelemetry Collector rather than a
//! Prometheus scrape. Counters are cumulative sums since the inventory's
//! start (its `observed_since`), so an export that fails loses nothing: the
//! next one carries the totals. Sent at start, every
//! [`METRICS_INTERVAL`] (the OpenTelemetry SDKs' default), and once more at
//! shutdown.

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
    common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum,
    },
};
use tokio_util::sync::CancellationToken;

use super::{channel, convert, OtlpConfig, OtlpError, SHUTDOWN_GRACE};
use crate::inventory::{series, Inventory};
use crate::metrics::Kind;

/// How often the inventory is exported.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// Data points per export request: far below a collector's default 4 MiB
/// receive limit (a point with its attributes is well under 1 KiB).
pub const POINTS_PER_REQUEST: usize = 2_000;

/// Exports `inventory` until `cancel`, then once more. A failed export is
/// logged and left to the next (the sums are cumulative).
pub async fn export_inventory(
    inventory: Inventory,
    config: OtlpConfig,
    cancel: CancellationToken,
) -> Result<(), OtlpError> {
    let mut client = MetricsServiceClient::new(channel(&config)?);
    tracing::info!(endpoint = %config.endpoint, interval = ?METRICS_INTERVAL, "exporting the token inventory as OTLP metrics");
    let mut ticker = tokio::time::interval(METRICS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            () = cancel.cancelled() => true,
            _ = ticker.tick() => false,
        };
        // An export under way when shutdown comes gets the grace too.
        let grace = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let send = async {
            for request in requests(&inventory.snapshot(&[], SystemTime::now()), POINTS_PER_REQUEST) {
                client.export(request).await?;
            }
            Ok::<(), tonic::Status>(())
        };
        let result = if last {
            tokio::time::timeout(SHUTDOWN_GRACE, send).await.ok()
        } else {
            tokio::select! {
                result = send => Some(result),
                () = grace => None,
            }
        };
        match result {
            Some(Ok(())) => {}
            Some(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "OTLP metrics export failed; the next one carries the totals");
            }
            None => tracing::warn!("OTLP metrics: no answer within the shutdown grace; this export is lost"),
        }
        // Shutdown during an export still gets its last one, next round.
        if last {
            return Ok(());
        }
    }
}

/// The export requests for `inventory`: the node's resource, one metric per
/// family, at most `max_points` data points per request.
pub fn requests(inventory: &tokenwatch_proto::v1::Inventory, max_points: usize) -> Vec<ExportMetricsServiceRequest> {
    let node = inventory.nodes.first().map_or("", String::as_str);
    let now = inventory.generated_at.map_or(0, |t| nanos(t.seconds));
    let since = inventory.observed_since.map_or(0, |t| nanos(t.seconds));
    let mut points: Vec<(&'static series::Family, NumberDataPoint)> = Vec::new();
    series::visit(inventory, |family, workload, labels, value| {
        // A counter starts with its workload (a workload forgotten and seen
        // again starts from zero with a new start).
        let start = match family.kind {
            Kind::Counter => workload.and_then(|w| w.observed_since).map_or(since, |t| nanos(t.seconds)),
            Kind::Gauge => 0,
        };
        points.push((family, point(labels, value, start, now)));
    });
    let mut requests = Vec::new();
    while !points.is_empty() {
        let rest = points.split_off(points.len().min(max_points.max(1)));
        requests.push(request(node, std::mem::replace(&mut points, rest)));
    }
    requests
}

/// One request of `points`, grouped into one metric per family.
fn request(node: &str, points: Vec<(&'static series::Family, NumberDataPoint)>) -> ExportMetricsServiceRequest {
    let mut metrics: Vec<(&'static series::Family, Vec<NumberDataPoint>)> = Vec::new();
    for (family, point) in points {
        match metrics.iter_mut().find(|(f, _)| f.name == family.name) {
            Some((_, points)) => points.push(point),
            None => metrics.push((family, vec![point])),
        }
    }
    let metrics = metrics
        .into_iter()
        .map(|(family, data_points)| {
            let data = match family.kind {
                Kind::Counter => Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative.into(),
                    is_monotonic: true,
                }),
                Kind::Gauge => Data::Gauge(Gauge { data_points }),
            };
            Metric {
                name: family.name.to_owned(),
                description: family.help.to_owned(),
                unit: family.unit.to_owned(),
                data: Some(data),
                ..Metric::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(convert::resource(node)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: convert::SERVICE_NAME.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn point(labels: &[(&'static str, &str)], value: u64, start: u64, now: u64) -> NumberDataPoint {
    let attributes = labels
        .iter()
        .map(|(key, value)| KeyValue {
            key: (*key).to_owned(),
            value: Some(AnyValue { value: Some(Value::StringValue((*value).to_owned())) }),
            ..KeyValue::default()
        })
        .collect();
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX))),
        ..NumberDataPoint::default()
    }
}

fn nanos(seconds: i64) -> u64 {
    u64::try_from(seconds).unwrap_or(0).saturating_mul(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_cumulative_sums_from_the_start_and_the_rest_gauges() {
        let inventory = Inventory::in_memory("node-a", SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        inventory.record(&tokenwatch_proto::v1::Alert {
            rule: "token-read".to_owned(),
            count: 3,
            time: Some(pbjson_types::Timestamp { seconds: 150, nanos: 0 }),
            kubernetes: Some(tokenwatch_proto::v1::KubernetesContext {
                namespace: "shop".to_owned(),
                pod: "web-1".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let requests = requests(&inventory.snapshot(&[], SystemTime::UNIX_EPOCH + Duration::from_secs(200)), 1_000);
        assert_eq!(requests.len(), 1);
        let resource = &requests[0].resource_metrics[0];
        let node = resource.resource.as_ref().and_then(|r| r.attributes.iter().find(|kv| kv.key == "k8s.node.name"));
        assert!(node.is_some(), "{resource:?}");
        let metrics = &resource.scope_metrics[0].metrics;
        let reads = metrics.iter().find(|m| m.name == series::TOKEN_READS.name).expect("reads");
        let Some(Data::Sum(sum)) = &reads.data else { panic!("a sum: {reads:?}") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, i32::from(AggregationTemporality::Cumulative));
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsInt(3)));
        assert_eq!(
            (point.start_time_unix_nano, point.time_unix_nano),
            (150_000_000_000, 200_000_000_000),
            "a counter starts with its workload, first seen with its first read"
        );
        let pod = point.attributes.iter().find(|kv| kv.key == "workload").and_then(|kv| kv.value.clone());
        assert_eq!(
            pod.and_then(|v| v.value),
            Some(Value::StringValue("web-1".to_owned())),
            "a bare pod is its own workload"
        );
        let observed = metrics.iter().find(|m| m.name == series::OBSERVED_FOR.name).expect("observed");
        assert!(
            matches!(&observed.data, Some(Data::Gauge(g)) if g.data_points[0].value == Some(number_data_point::Value::AsInt(100)))
        );
        assert!(metrics.iter().all(|m| m.name != series::CONNECT_LAST.name), "no connect: no connect times");
    }
}

#[cfg(test)]
mod batching {
    use super::*;

    #[test]
    fn a_large_inventory_goes_in_requests_of_bounded_size_that_add_up_to_every_point() {
        let inventory = Inventory::in_memory("node-a", SystemTime::UNIX_EPOCH);
        for w in 0..300 {
            inventory.record(&tokenwatch_proto::v1::Alert {
                rule: "token-read".to_owned(),
                time: Some(pbjson_types::Timestamp { seconds: 10, nanos: 0 }),
                kubernetes: Some(tokenwatch_proto::v1::KubernetesContext {
                    namespace: "shop".to_owned(),
                    pod: format!("p{w}"),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let snapshot = inventory.snapshot(&[], SystemTime::UNIX_EPOCH + Duration::from_secs(20));
        let total = series::samples(&snapshot).len();
        let requests = requests(&snapshot, 500);
        let sizes: Vec<usize> = requests
            .iter()
            .map(|r| {
                r.resource_metrics[0].scope_metrics[0]
                    .metrics
                    .iter()
                    .map(|m| match &m.data {
                        Some(Data::Sum(s)) => s.data_points.len(),
                        Some(Data::Gauge(g)) => g.data_points.len(),
                        _ => 0,
                    })
                    .sum()
            })
            .collect();
        assert!(sizes.iter().all(|&n| n <= 500), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), total);
        assert!(requests.len() >= total / 500, "{} requests for {total} points", requests.len());
    }
}

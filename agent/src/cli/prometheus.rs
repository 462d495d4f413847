//! `--prometheus URL` of `tokenwatch inventory` and `advise`: the cluster's
//! inventory from the Prometheus that scrapes every node's agent (its HTTP
//! API's instant query, `/api/v1/query`), instead of dialling each agent.
//! One query per metric family keeps each answer small on a large cluster;
//! the series become one inventory per node and are merged by the same rules
//! as `--server` answers.

use std::{path::PathBuf, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{body::Bytes, Uri};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokenwatch_proto::v1::Inventory;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::inventory::{
    from_series::{self, FromSeriesError, Reading},
    merge::merge_inventories,
    series,
};

/// How long one query may take, connection included.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read for one family (a cluster of thousands of nodes
/// stays well inside it).
const MAX_ANSWER_BYTES: usize = 512 << 20;

/// Where the Prometheus API is and how to trust it.
#[derive(Debug, Clone, clap::Args)]
pub struct PrometheusArgs {
    /// Read the cluster's inventory from this Prometheus (its HTTP API,
    /// e.g. http://prometheus.monitoring:9090), which scrapes every agent's
    /// metrics, instead of asking agents one by one.
    #[arg(long, value_name = "URL", conflicts_with = "servers")]
    pub prometheus: Option<String>,
    /// CA bundle (PEM) to verify an https Prometheus [default: the
    /// system's roots].
    #[arg(long, value_name = "FILE", requires = "prometheus")]
    pub prometheus_ca: Option<PathBuf>,
    /// Answer even when Prometheus scraped an agent within the last
    /// [`NODE_LOOKBACK`] but not now (its node's evidence would be missing,
    /// as `--server` with an agent down would refuse).
    #[arg(long, requires = "prometheus")]
    pub allow_missing_nodes: bool,
}

/// How far back an agent that Prometheus no longer scrapes still counts as
/// one whose evidence is missing.
pub const NODE_LOOKBACK: &str = "24h";

/// Why Prometheus gave no inventory.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The URL is not one.
    #[error("--prometheus {url}: {why}")]
    Url {
        /// What was given.
        url: String,
        /// Why it is refused.
        why: String,
    },
    /// The CA file could not be used.
    #[error("--prometheus-ca {path}: {why}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// No answer.
    #[error("asking Prometheus at {url}: {why}")]
    Request {
        /// The query's address.
        url: String,
        /// Why.
        why: String,
    },
    /// An answer that is not a query result.
    #[error("Prometheus at {url} answered HTTP {status}: {body}")]
    Status {
        /// The query's address.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of what it said.
        body: String,
    },
    /// A result that is not an instant vector.
    #[error("Prometheus at {url}: unexpected answer: {why}")]
    Answer {
        /// The query's address.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// Agents scraped lately are missing now.
    #[error(
        "Prometheus at {url} had the inventory of {} within the last {NODE_LOOKBACK} but not now (agent down or \
         not scraped): their workloads' evidence would be missing. Fix the scrape, or pass --allow-missing-nodes \
         if those nodes are gone",
        nodes.join(", ")
    )]
    MissingNodes {
        /// The Prometheus asked.
        url: String,
        /// The nodes missing.
        nodes: Vec<String>,
    },
    /// The series make no inventory.
    #[error("Prometheus at {url}: {reason}")]
    Series {
        /// The Prometheus asked.
        url: String,
        /// Why.
        reason: FromSeriesError,
    },
}

/// The cluster's inventory from the Prometheus at `args.prometheus` (which
/// must be set), only `namespaces` if any are given.
pub async fn fetch(args: &PrometheusArgs, namespaces: &[String]) -> Result<Inventory, PrometheusError> {
    let base = args.prometheus.clone().unwrap_or_default();
    let client = client(args, &base)?;
    let query_url = |query: &str, at: &str| {
        let at = if at.is_empty() { String::new() } else { format!("&time={at}") };
        format!("{}/api/v1/query?query={}{at}", base.trim_end_matches('/'), encode(query))
    };
    // Every family at one instant: the server's now, asked first, so the
    // families come from the same scrapes whatever the clocks say.
    let at = match &query(&client, &query_url("time()", "")).await?["data"]["result"][0] {
        serde_json::Value::Number(n) => n.to_string(),
        other => {
            let why = format!("time() answered {other}, not a number");
            return Err(PrometheusError::Answer { url: base, why });
        }
    };
    let mut readings = Vec::new();
    for family in series::FAMILIES {
        readings.extend(query_vector(&client, &query_url(family.name, &at)).await?);
    }
    if !args.allow_missing_nodes {
        let lately =
            format!("max by (node, exported_node) (last_over_time({}[{NODE_LOOKBACK}]))", series::OBSERVED_SINCE.name);
        let now: std::collections::BTreeSet<String> = readings
            .iter()
            .filter(|r| r.name == series::OBSERVED_SINCE.name)
            .map(|r| r.label("node").to_owned())
            .collect();
        let missing: Vec<String> = query_vector(&client, &query_url(&lately, &at))
            .await?
            .iter()
            .map(|r| r.label("node").to_owned())
            .filter(|node| !now.contains(node))
            .collect();
        if !missing.is_empty() {
            return Err(PrometheusError::MissingNodes { url: base, nodes: missing });
        }
    }
    let parts = from_series::inventories(&readings).map_err(|reason| PrometheusError::Series { url: base, reason })?;
    let mut merged = merge_inventories(parts);
    if !namespaces.is_empty() {
        merged.workloads.retain(|w| namespaces.contains(&w.namespace));
    }
    Ok(merged)
}

type HttpClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

/// An http and https client trusting `--prometheus-ca` or the system.
fn client(args: &PrometheusArgs, base: &str) -> Result<HttpClient, PrometheusError> {
    let url_error = |why: &str| PrometheusError::Url { url: base.to_owned(), why: why.to_owned() };
    let uri: Uri = base.parse().map_err(|e: hyper::http::uri::InvalidUri| url_error(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => {}
        _ => return Err(url_error("not an http:// or https:// URL with a host")),
    }
    if uri.query().is_some() {
        return Err(url_error("give the server's address (and path prefix), without a query"));
    }
    let mut roots = RootCertStore::empty();
    match &args.prometheus_ca {
        Some(path) => {
            let ca_error = |why: String| PrometheusError::Ca { path: path.clone(), why };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.map_err(|e| ca_error(e.to_string()))?).map_err(|e| ca_error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_error("no certificate in it".to_owned()));
            }
        }
        None if uri.scheme_str() == Some("https") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(url_error("no system CA certificates to verify it with: give --prometheus-ca"));
            }
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| url_error(&e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Runs one instant query; its answer's JSON, checked to be a success.
async fn query(client: &HttpClient, url: &str) -> Result<serde_json::Value, PrometheusError> {
    let (status, location, body) = get(client, url).await?;
    checked(url, status, location.as_deref(), &body)
}

/// Runs one instant query; its result's series.
async fn query_vector(client: &HttpClient, url: &str) -> Result<Vec<Reading>, PrometheusError> {
    let (status, location, body) = get(client, url).await?;
    readings(url, &checked(url, status, location.as_deref(), &body)?)
}

/// One GET: the status, a redirect's `Location`, the body.
async fn get(client: &HttpClient, url: &str) -> Result<(u16, Option<String>, Bytes), PrometheusError> {
    let request_error = |why: String| PrometheusError::Request { url: url.to_owned(), why };
    let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| request_error(e.to_string()))?;
    let answer = async {
        let response = client.get(uri).await.map_err(|e| request_error(error_chain(&e)))?;
        let status = response.status().as_u16();
        let location =
            response.headers().get(hyper::header::LOCATION).map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| request_error(format!("reading the answer (at most {} MiB): {e}", MAX_ANSWER_BYTES >> 20)))?
            .to_bytes();
        Ok::<_, PrometheusError>((status, location, body))
    };
    tokio::time::timeout(QUERY_TIMEOUT, answer)
        .await
        .map_err(|_| request_error(format!("no answer within {} s", QUERY_TIMEOUT.as_secs())))?
}

/// An answer's JSON when it is a success, or what Prometheus (or whatever
/// answered) said instead.
fn checked(url: &str, status: u16, location: Option<&str>, body: &[u8]) -> Result<serde_json::Value, PrometheusError> {
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(_) if status != 200 => {
            let mut text = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_owned();
            if let Some(location) = location {
                text = format!("redirected to {location} (give that address) {text}").trim().to_owned();
            }
            return Err(PrometheusError::Status { url: url.to_owned(), status, body: text });
        }
        Err(e) => return Err(PrometheusError::Answer { url: url.to_owned(), why: format!("not JSON: {e}") }),
    };
    if json["status"] != "success" {
        let (kind, error) = (json["errorType"].as_str().unwrap_or("?"), json["error"].as_str().unwrap_or("?"));
        return Err(PrometheusError::Status { url: url.to_owned(), status, body: format!("{kind}: {error}") });
    }
    Ok(json)
}

/// The series of an instant-vector answer, or why it is not one.
fn readings(url: &str, json: &serde_json::Value) -> Result<Vec<Reading>, PrometheusError> {
    let answer = |why: String| PrometheusError::Answer { url: url.to_owned(), why };
    if json["data"]["resultType"] != "vector" {
        return Err(answer(format!("result type {}, not vector", json["data"]["resultType"])));
    }
    let results = json["data"]["result"].as_array().ok_or_else(|| answer("no result list".to_owned()))?;
    results
        .iter()
        .map(|series| {
            let labels: std::collections::BTreeMap<String, String> = series["metric"]
                .as_object()
                .ok_or_else(|| answer("a series without labels".to_owned()))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let name = labels.get("__name__").cloned().unwrap_or_default();
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| answer(format!("{name}: a value that is not a number")))?;
            Ok(Reading { name, labels, value })
        })
        .collect()
}

/// A query string's value, percent-encoded.
fn encode(text: &str) -> String {
    const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'_');
    percent_encoding::utf8_percent_encode(text, QUERY_VALUE).to_string()
}

/// An error with its causes, which hyper's client keeps in its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_vector_becomes_readings() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"tokenwatch_workload_pods_seen","node":"n","instance":"a:1"},"value":[1.5,"3"]}]}}"#;
        let readings = checked("u", 200, None, body).and_then(|json| readings("u", &json)).expect("readings");
        assert_eq!(readings.len(), 1);
        assert_eq!((readings[0].name.as_str(), readings[0].value), ("tokenwatch_workload_pods_seen", 3.0));
        assert_eq!(readings[0].labels.get("node").map(String::as_str), Some("n"));
    }

    #[test]
    fn errors_say_what_prometheus_said() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\""}"#;
        let error = checked("http://p/api/v1/query", 400, None, body).expect_err("an error").to_string();
        assert!(error.contains("HTTP 400: bad_data: invalid parameter"), "{error}");
        let error = checked("http://p/x", 404, None, b"404 page not found").expect_err("an error").to_string();
        assert!(error.contains("answered HTTP 404: 404 page not found"), "{error}");
        let error = checked("http://p/x", 302, Some("https://p/x"), b"").expect_err("a redirect").to_string();
        assert!(error.contains("answered HTTP 302: redirected to https://p/x (give that address)"), "{error}");
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let json = checked("u", 200, None, matrix).expect("a success");
        assert!(readings("u", &json).expect_err("not a vector").to_string().contains("not vector"));
    }

    #[test]
    fn only_http_urls_without_a_query_are_taken() {
        let args = |url: &str| PrometheusArgs {
            prometheus: Some(url.to_owned()),
            prometheus_ca: None,
            allow_missing_nodes: false,
        };
        for bad in ["prometheus:9090", "ftp://p:9090", "http://p:9090/?x=1", "http://"] {
            let error = client(&args(bad), bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.starts_with(&format!("--prometheus {bad}: ")), "{bad}: {error}");
        }
        assert!(client(&args("http://127.0.0.1:9090/prom"), "http://127.0.0.1:9090/prom").is_ok());
    }
}

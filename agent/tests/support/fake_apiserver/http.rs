//! HTTP plumbing of the fake API server: query strings, JSON and `Status` responses.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::Response;
use serde_json::json;

/// A response body: a whole JSON document or a stream of watch events.
pub(super) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The query's parameters, percent-decoded (a repeated key keeps its last value).
pub(super) fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let (bytes, mut out, mut i) = (text.as_bytes(), Vec::new(), 0);
    while let Some(&byte) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        let (decoded, used) = match (byte, hex) {
            (b'%', Some(hex)) => (hex, 3),
            (b'+', _) => (b' ', 1),
            _ => (byte, 1),
        };
        out.push(decoded);
        i += used;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `metav1.Status` failure as kube-apiserver writes it.
pub(super) fn status_json(code: u16, reason: &str, message: &str) -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// An error response carrying a `Status`.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(code, status_json(code, reason, message).to_string())
}

/// A whole JSON document.
pub(super) fn json_response(code: u16, body: String) -> Response<Body> {
    let body = Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed_unsync();
    Response::builder().status(code).header("content-type", "application/json").body(body).expect("response")
}

//! Where the OTLP exporter sends: `http://HOST:PORT` or `https://HOST:PORT`
//! (the collector's OTLP/gRPC receiver). The scheme decides TLS, so a
//! plaintext endpoint on the network is visible in the flag itself and the
//! configuration can refuse it.

use std::{fmt, net::IpAddr, str::FromStr};

use tonic::codegen::http::Uri;

/// The OTLP/gRPC port, used when the endpoint names none.
pub const DEFAULT_OTLP_PORT: u16 = 4317;

/// A collector endpoint, checked when parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpEndpoint {
    tls: bool,
    host: String,
    port: u16,
}

/// An endpoint that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not http://HOST:PORT or https://HOST:PORT")]
pub struct OtlpEndpointError(pub String);

impl FromStr for OtlpEndpoint {
    type Err = OtlpEndpointError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || OtlpEndpointError(text.to_owned());
        let uri: Uri = text.trim().parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?.to_owned();
        let no_path = matches!(uri.path(), "" | "/") && uri.query().is_none();
        let no_user = uri.authority().is_some_and(|a| !a.as_str().contains('@'));
        if !no_path || !no_user || uri.port_u16() == Some(0) {
            return Err(bad());
        }
        Ok(OtlpEndpoint { tls, host, port: uri.port_u16().unwrap_or(DEFAULT_OTLP_PORT) })
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", if self.tls { "https" } else { "http" }, self.host, self.port)
    }
}

impl OtlpEndpoint {
    /// Whether the connection is TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether only this machine can be reached: `localhost` or a loopback
    /// address. Anything else carries alerts over the network.
    pub fn is_local(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl<'de> serde::Deserialize<'de> for OtlpEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_https_and_says_what_is_local() {
        let local: OtlpEndpoint = "http://127.0.0.1:4317".parse().expect("local");
        assert!(!local.is_tls() && local.is_local());
        let named: OtlpEndpoint = "https://otel-collector.observability:4317".parse().expect("name");
        assert!(named.is_tls() && !named.is_local());
        let v6: OtlpEndpoint = "http://[::1]:9000/".parse().expect("v6");
        assert_eq!((v6.to_string(), v6.is_local()), ("http://[::1]:9000".to_owned(), true));
        let default_port: OtlpEndpoint = "http://localhost".parse().expect("no port");
        assert_eq!(default_port.to_string(), "http://localhost:4317");
        for bad in ["127.0.0.1:4317", "grpc://collector:4317", "http://collector:4317/v1/logs", "http://:4317", ""] {
            assert_eq!(bad.parse::<OtlpEndpoint>(), Err(OtlpEndpointError(bad.to_owned())), "{bad}");
        }
    }
}

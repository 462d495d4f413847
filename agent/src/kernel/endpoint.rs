//! API-server endpoints as the user writes them: `ADDR`, `ADDR:PORT`,
//! `[V6]:PORT`, a bare IPv6 address. The kernel's watch list holds them;
//! the configuration parses them.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

/// Port used when an endpoint names none: the API server's HTTPS port.
pub const DEFAULT_API_SERVER_PORT: u16 = 443;

/// One API-server address to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint(pub SocketAddr);

/// Why an endpoint string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    /// Nothing was given.
    #[error("empty API-server address")]
    Empty,
    /// The address part is not an IP address (names are not resolved: the
    /// agent watches addresses, and a DNS answer can change under it).
    #[error("`{0}` is not an IP address (write ADDR, ADDR:PORT, or [IPv6]:PORT)")]
    NotAnAddress(String),
    /// The port part is not a number from 1 to 65535.
    #[error("`{0}` is not a port from 1 to 65535")]
    BadPort(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EndpointError::Empty);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Endpoint(SocketAddr::new(ip, DEFAULT_API_SERVER_PORT)));
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| EndpointError::NotAnAddress(text.to_owned()))?;
            let ip: IpAddr = host.parse().map_err(|_| EndpointError::NotAnAddress(host.to_owned()))?;
            let port = match after {
                "" => DEFAULT_API_SERVER_PORT,
                _ => parse_port(after.strip_prefix(':').ok_or_else(|| EndpointError::BadPort(after.to_owned()))?)?,
            };
            return Ok(Endpoint(SocketAddr::new(ip, port)));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| EndpointError::NotAnAddress(text.to_owned()))?;
        let ip: IpAddr = host.parse().map_err(|_| EndpointError::NotAnAddress(host.to_owned()))?;
        Ok(Endpoint(SocketAddr::new(ip, parse_port(port)?)))
    }
}

fn parse_port(text: &str) -> Result<u16, EndpointError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(EndpointError::BadPort(text.to_owned())),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(text: &str) -> Result<String, EndpointError> {
        text.parse::<Endpoint>().map(|e| e.to_string())
    }

    #[test]
    fn accepts_every_documented_form() {
        assert_eq!(ep("10.96.0.1"), Ok("10.96.0.1:443".into()));
        assert_eq!(ep("10.96.0.1:6443"), Ok("10.96.0.1:6443".into()));
        assert_eq!(ep("fd00::1"), Ok("[fd00::1]:443".into()));
        assert_eq!(ep("[fd00::1]"), Ok("[fd00::1]:443".into()));
        assert_eq!(ep("[::1]:8443"), Ok("[::1]:8443".into()));
        assert_eq!(ep(" 127.0.0.1:1 "), Ok("127.0.0.1:1".into()));
    }

    #[test]
    fn refuses_bad_input_with_the_reason() {
        assert_eq!(ep(""), Err(EndpointError::Empty));
        assert_eq!(ep("kubernetes.default"), Err(EndpointError::NotAnAddress("kubernetes.default".into())));
        assert_eq!(ep("api.example:443"), Err(EndpointError::NotAnAddress("api.example".into())));
        assert_eq!(ep("10.0.0.1:0"), Err(EndpointError::BadPort("0".into())));
        assert_eq!(ep("10.0.0.1:99999"), Err(EndpointError::BadPort("99999".into())));
        assert_eq!(ep("[::1]8443"), Err(EndpointError::BadPort("8443".into())));
        assert_eq!(ep("[::1:443"), Err(EndpointError::NotAnAddress("[::1:443".into())));
    }
}

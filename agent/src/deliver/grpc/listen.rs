//! Where the gRPC server listens: `HOST:PORT` or `unix:PATH`.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

/// The default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// A listen address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP socket.
    Tcp(SocketAddr),
    /// A unix socket (no TLS needed: the file's permissions guard it).
    Unix(PathBuf),
}

/// A listen address that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not HOST:PORT (an IP address and a port) or unix:PATH")]
pub struct ListenError(pub String);

impl FromStr for Listen {
    type Err = ListenError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(Listen::Unix(PathBuf::from(path))),
            Some(_) => Err(ListenError(text.to_owned())),
            None => text.parse().map(Listen::Tcp).map_err(|_| ListenError(text.to_owned())),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Listen {
    /// Whether only this machine can reach it.
    pub fn is_local(&self) -> bool {
        match self {
            Listen::Tcp(addr) => addr.ip().is_loopback(),
            Listen::Unix(_) => true,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_and_says_what_is_local() {
        let tcp: Listen = DEFAULT_LISTEN.parse().expect("default");
        assert!(tcp.is_local());
        let remote: Listen = "0.0.0.0:50051".parse().expect("any");
        assert!(!remote.is_local());
        let v6: Listen = "[::1]:50051".parse().expect("v6");
        assert!(v6.is_local());
        let unix: Listen = "unix:/run/tokenwatch.sock".parse().expect("unix");
        assert_eq!(unix.to_string(), "unix:/run/tokenwatch.sock");
        assert!(unix.is_local());
        for bad in ["localhost:50051", "unix:relative.sock", "50051", ""] {
            assert_eq!(bad.parse::<Listen>(), Err(ListenError(bad.to_owned())), "{bad}");
        }
    }
}

//! Setting values that check themselves when parsed, so a bad value is
//! refused where it was written: clap names the flag, the YAML reader names
//! file:line:column.

use std::{fmt, num::NonZeroU64, path::PathBuf, str::FromStr};

use serde::Deserialize;

/// A token path; must be absolute (it is resolved inside each mount
/// namespace from that namespace's root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPath(pub PathBuf);

/// The container runtime's CRI socket, as a path or as kubelet's
/// `--container-runtime-endpoint` and crictl write it (`unix:///run/...`).
/// Only unix sockets: the runtime is on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriSocket(pub PathBuf);

/// Seconds between token-file scans; at least one.
pub type RescanSeconds = NonZeroU64;

/// Ring buffer size in KiB: a power of two from 4 (one page) to 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBufferKib(u32);

/// A value that is not valid for its setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    /// A relative token path.
    #[error("token path `{0}` is not absolute")]
    RelativeTokenPath(String),
    /// A ring buffer size that is not a power of two in range.
    #[error("ring buffer size `{0}` KiB must be a power of two from 4 to 1048576")]
    RingBufferSize(String),
    /// A CRI endpoint that is not a unix socket's absolute path.
    #[error("CRI socket `{0}`: give the runtime's unix socket as `unix:///path` or `/path` (no other scheme)")]
    CriSocket(String),
}

impl FromStr for CriSocket {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let path = match text.strip_prefix("unix://") {
            Some(rest) => rest,
            None => text.strip_prefix("unix:").unwrap_or(text),
        };
        if path.starts_with('/') && !path.contains("://") {
            Ok(CriSocket(PathBuf::from(path)))
        } else {
            Err(ValueError::CriSocket(text.to_owned()))
        }
    }
}

impl FromStr for TokenPath {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let path = PathBuf::from(text);
        if path.is_absolute() {
            Ok(TokenPath(path))
        } else {
            Err(ValueError::RelativeTokenPath(text.to_owned()))
        }
    }
}

impl RingBufferKib {
    /// The default: 8 MiB, about 3,600 open events of headroom: a 1 MiB ring
    /// dropped a quarter of a 1,000-read burst in a loaded test run.
    pub const DEFAULT: RingBufferKib = RingBufferKib(8192);

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0 * 1024
    }
}

impl FromStr for RingBufferKib {
    type Err = ValueError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().parse::<u32>() {
            Ok(kib) if (4..=1 << 20).contains(&kib) && kib.is_power_of_two() => Ok(RingBufferKib(kib)),
            _ => Err(ValueError::RingBufferSize(text.to_owned())),
        }
    }
}

impl fmt::Display for RingBufferKib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Deserialises a value from its YAML scalar through `FromStr`, so the file
/// and the flags share one check and one message.
macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Scalar::deserialize(deserializer)?.0;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

deserialize_from_str!(TokenPath, RingBufferKib, CriSocket, super::Endpoint);

/// A YAML scalar as text, whether written as a string or a number.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        Ok(Scalar(match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text,
            Raw::Number(number) => number.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_check_themselves() {
        assert_eq!("/a/token".parse(), Ok(TokenPath("/a/token".into())));
        assert_eq!("a/token".parse::<TokenPath>(), Err(ValueError::RelativeTokenPath("a/token".into())));
        assert_eq!("4".parse::<RingBufferKib>().map(RingBufferKib::bytes), Ok(4096));
        // The runtime endpoint as kubelet and crictl write it, or a path.
        for (given, path) in [
            ("unix:///run/containerd/containerd.sock", "/run/containerd/containerd.sock"),
            ("unix:/run/crio/crio.sock", "/run/crio/crio.sock"),
            ("/var/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock"),
        ] {
            assert_eq!(given.parse::<CriSocket>(), Ok(CriSocket(PathBuf::from(path))), "{given}");
        }
        for bad in ["tcp://10.0.0.1:1234", "npipe:////./pipe/containerd", "unix://run/x.sock", "containerd.sock"] {
            assert_eq!(bad.parse::<CriSocket>(), Err(ValueError::CriSocket(bad.into())), "{bad}");
        }
        for bad in ["0", "2", "12", "2097152", "big"] {
            assert_eq!(bad.parse::<RingBufferKib>(), Err(ValueError::RingBufferSize(bad.into())), "{bad}");
        }
    }
}

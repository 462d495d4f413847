//! Keeps the kernel's watch maps equal to what the agent wants watched. A
//! miss in these maps is all an unrelated open or connect costs.

use std::{collections::HashSet, net::IpAddr};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use tokenwatch_common::{EndpointKey, FileKey, AF_INET, AF_INET6};

use crate::config::Endpoint;

/// A map update the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("updating kernel map {map}: {source}")]
pub struct WatchlistError {
    /// Which map.
    pub map: &'static str,
    /// Why.
    pub source: MapError,
}

/// The kernel key of an endpoint. An IPv4-mapped IPv6 address is keyed as the
/// IPv4 address, as the kernel side looks it up.
pub fn endpoint_key(endpoint: &Endpoint) -> EndpointKey {
    let mut key = EndpointKey { family: AF_INET, port: endpoint.0.port(), _pad: 0, addr: [0; 16] };
    match endpoint.0.ip() {
        IpAddr::V4(v4) => key.addr[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => key.addr[..4].copy_from_slice(&v4.octets()),
            None => {
                key.family = AF_INET6;
                key.addr = v6.octets();
            }
        },
    }
    key
}

/// Puts every endpoint in the map.
pub fn set_endpoints(
    map: &mut BpfHashMap<MapData, EndpointKey, u32>,
    endpoints: &[Endpoint],
) -> Result<(), WatchlistError> {
    for endpoint in endpoints {
        map.insert(endpoint_key(endpoint), 1, 0)
            .map_err(|source| WatchlistError { map: "WATCHED_ENDPOINTS", source })?;
    }
    Ok(())
}

/// Makes the file map hold exactly `wanted`; returns (added, removed).
pub fn sync_files(
    map: &mut BpfHashMap<MapData, FileKey, u32>,
    wanted: &HashSet<FileKey>,
) -> Result<(usize, usize), WatchlistError> {
    let present: HashSet<FileKey> = map.keys().filter_map(Result::ok).collect();
    let mut added = 0;
    for key in wanted.difference(&present) {
        map.insert(*key, 1, 0).map_err(|source| WatchlistError { map: "WATCHED_FILES", source })?;
        added += 1;
    }
    let mut removed = 0;
    for key in present.difference(wanted) {
        map.remove(key).map_err(|source| WatchlistError { map: "WATCHED_FILES", source })?;
        removed += 1;
    }
    Ok((added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> EndpointKey {
        endpoint_key(&text.parse().expect("valid endpoint"))
    }

    #[test]
    fn v4_mapped_v6_is_keyed_as_v4() {
        assert_eq!(key("[::ffff:10.96.0.1]:443"), key("10.96.0.1:443"));
        let v4 = key("10.96.0.1:6443");
        assert_eq!((v4.family, v4.port, &v4.addr[..5]), (AF_INET, 6443, &[10, 96, 0, 1, 0][..]));
        let v6 = key("[fd00::1]:443");
        assert_eq!(v6.family, AF_INET6);
        assert_eq!(v6.addr[0], 0xfd);
        assert_eq!(v6.addr[15], 1);
    }
}

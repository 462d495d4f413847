//! Keeps the kernel's watch maps equal to what the agent wants watched. A
//! miss in these maps is all an unrelated open or connect costs.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    net::IpAddr,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    Pod,
};
use tokenwatch_common::{
    is_disk, DevWatch, EndpointKey, FileKey, AF_INET, AF_INET6, DEV_EXACT_FILES, DEV_TOKEN_VOLUME, TOKEN_NAME_LEN,
};

use super::endpoint::Endpoint;

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

/// Makes the endpoint map hold exactly `endpoints`.
pub fn sync_endpoints(
    map: &mut BpfHashMap<MapData, EndpointKey, u32>,
    endpoints: &[Endpoint],
) -> Result<(), WatchlistError> {
    sync_set(map, "WATCHED_ENDPOINTS", &endpoints.iter().map(endpoint_key).collect())
}

/// Makes `map`, a set (every value 1), hold exactly `wanted`, changing
/// only what differs.
fn sync_set<K: Pod + Eq + Hash>(
    map: &mut BpfHashMap<MapData, K, u32>,
    name: &'static str,
    wanted: &HashSet<K>,
) -> Result<(), WatchlistError> {
    let error = |source| WatchlistError { map: name, source };
    let present: HashSet<K> = map.keys().filter_map(Result::ok).collect();
    for key in wanted.difference(&present) {
        map.insert(*key, 1, 0).map_err(error)?;
    }
    for key in present.difference(wanted) {
        map.remove(key).map_err(error)?;
    }
    Ok(())
}

/// The maps an open is looked up in.
pub struct FileMaps {
    /// Devices and how their files are watched.
    pub devs: BpfHashMap<MapData, u32, DevWatch>,
    /// 1 while some watched device is a disk (`DISK_WATCHES_MAP`).
    pub disk_switch: Array<MapData, u32>,
    /// Files watched by inode.
    pub files: BpfHashMap<MapData, FileKey, u32>,
    /// The names a token file has, for volumes not watched yet.
    pub names: BpfHashMap<MapData, [u8; TOKEN_NAME_LEN], u32>,
}

/// What should be watched: files by inode, and token volumes by device with
/// the token's file name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Files by (device, inode).
    pub files: HashSet<FileKey>,
    /// Token volumes: device and file name.
    pub volumes: HashMap<u32, String>,
}

/// `name` NUL-padded as the kernel compares it, if it fits.
pub fn kernel_name(name: &str) -> Option<[u8; TOKEN_NAME_LEN]> {
    let bytes = name.as_bytes();
    (!bytes.is_empty() && bytes.len() < TOKEN_NAME_LEN).then(|| {
        let mut padded = [0; TOKEN_NAME_LEN];
        padded[..bytes.len()].copy_from_slice(bytes);
        padded
    })
}

/// The `WATCHED_DEVS` values `wanted` needs.
pub fn dev_watches(wanted: &Wanted) -> HashMap<u32, DevWatch> {
    let mut devs: HashMap<u32, DevWatch> = HashMap::new();
    let empty = || DevWatch { mode: 0, _pad: 0, name: [0; TOKEN_NAME_LEN] };
    for key in &wanted.files {
        devs.entry(key.dev).or_insert_with(empty).mode |= DEV_EXACT_FILES;
    }
    for (dev, name) in &wanted.volumes {
        let watch = devs.entry(*dev).or_insert_with(empty);
        if let Some(name) = kernel_name(name) {
            watch.mode |= DEV_TOKEN_VOLUME;
            watch.name = name;
        }
    }
    devs.retain(|_, watch| watch.mode != 0);
    devs
}

/// Makes the kernel maps hold exactly `wanted`; returns (added, removed)
/// counted over both maps. Devices are added after their files and removed
/// before them, so the kernel never sees a device without its files.
pub fn sync_files(maps: &mut FileMaps, wanted: &Wanted) -> Result<(usize, usize), WatchlistError> {
    let devs_error = |source| WatchlistError { map: "WATCHED_DEVS", source };
    let files_error = |source| WatchlistError { map: "WATCHED_FILES", source };
    let want_devs = dev_watches(wanted);
    let have_devs: HashMap<u32, DevWatch> = maps.devs.iter().filter_map(Result::ok).collect();
    let have_files: HashSet<FileKey> = maps.files.keys().filter_map(Result::ok).collect();
    let switch_error = |source| WatchlistError { map: "DISK_WATCHES", source };
    let disks_wanted = want_devs.keys().any(|dev| is_disk(*dev));
    if disks_wanted {
        // Before the first disk device is added: the kernel looks it up.
        maps.disk_switch.set(0, 1, 0).map_err(switch_error)?;
    }
    let (mut added, mut removed) = (0, 0);
    for dev in have_devs.keys().filter(|dev| !want_devs.contains_key(dev)) {
        maps.devs.remove(dev).map_err(devs_error)?;
        removed += 1;
    }
    if !disks_wanted {
        // After the last disk device is gone.
        maps.disk_switch.set(0, 0, 0).map_err(switch_error)?;
    }
    for key in wanted.files.difference(&have_files) {
        maps.files.insert(*key, 1, 0).map_err(files_error)?;
        added += 1;
    }
    for key in have_files.difference(&wanted.files) {
        maps.files.remove(key).map_err(files_error)?;
        removed += 1;
    }
    for (dev, watch) in &want_devs {
        if have_devs.get(dev) != Some(watch) {
            maps.devs.insert(*dev, *watch, 0).map_err(devs_error)?;
            added += 1;
        }
    }
    Ok((added, removed))
}

/// Makes the token-name map hold exactly the names of `names` that fit:
/// the names a token file may have (the configured paths'), by which the
/// kernel matches a file on a token volume it has not been told of yet.
pub fn sync_names(
    map: &mut BpfHashMap<MapData, [u8; TOKEN_NAME_LEN], u32>,
    names: &HashSet<String>,
) -> Result<(), WatchlistError> {
    sync_set(map, "TOKEN_NAMES", &names.iter().filter_map(|name| kernel_name(name)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> EndpointKey {
        endpoint_key(&text.parse().expect("valid endpoint"))
    }

    #[test]
    fn devices_carry_exact_files_volumes_or_both() {
        let file = |dev, ino| FileKey { dev, _pad: 0, ino };
        let wanted = Wanted {
            files: [file(1, 10), file(1, 11), file(2, 20)].into(),
            volumes: [(2, "token".to_owned()), (3, "vault-token".to_owned()), (4, "x".repeat(32))].into(),
        };
        let devs = dev_watches(&wanted);
        assert_eq!(devs[&1].mode, DEV_EXACT_FILES);
        assert_eq!(devs[&2].mode, DEV_EXACT_FILES | DEV_TOKEN_VOLUME);
        assert_eq!(&devs[&2].name[..6], b"token\0");
        assert_eq!(devs[&3].mode, DEV_TOKEN_VOLUME);
        assert!(!devs.contains_key(&4), "a name too long for the kernel's compare is no volume watch");
    }

    #[test]
    fn only_a_device_with_a_major_number_turns_the_kernels_disk_lookups_on() {
        use std::os::unix::fs::MetadataExt;
        use tokenwatch_common::MINOR_BITS;
        // A tmpfs (token volumes, /dev/shm) has an anonymous device: major 0.
        let shm = std::fs::metadata("/dev/shm").expect("stat /dev/shm").dev();
        assert!(!is_disk((libc::major(shm) << MINOR_BITS) | libc::minor(shm)));
        assert!(is_disk((8 << MINOR_BITS) | 1), "sda1");
        assert!(is_disk((259 << MINOR_BITS) | 3), "nvme0n1p3");
        assert!(!is_disk(0xf_ffff), "every minor, no major");
    }

    #[test]
    fn names_are_nul_padded_and_must_fit() {
        assert_eq!(kernel_name("token").map(|n| n[..6].to_vec()), Some(b"token\0".to_vec()));
        assert_eq!(kernel_name(&"x".repeat(31)).map(|n| n[31]), Some(0), "room for the NUL");
        assert_eq!(kernel_name(&"x".repeat(32)), None);
        assert_eq!(kernel_name(""), None);
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

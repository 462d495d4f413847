//! The ServiceAccount token volume as kubelet makes it on the host: a tmpfs
//! mounted at `<pods>/<uid>/volumes/kubernetes.io~projected/kube-api-access-<x>`
//! holding the atomic writer's layout
//!
//! ```text
//! ..2026_11_29_07_19_34.123456789/{ca.crt,namespace,token}   the real files
//! ..data      -> ..2026_11_29_07_19_34.123456789
//! ca.crt      -> ..data/ca.crt
//! namespace   -> ..data/namespace
//! token       -> ..data/token
//! ```
//!
//! The token is fake (an unsigned JWT-shaped string whose claims name the
//! pod and its ServiceAccount); it is not a credential.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The projected volume's files, in the order kubelet writes them.
const FILES: [&str; 3] = ["ca.crt", "namespace", "token"];
/// A fake CA bundle (not a certificate).
const FAKE_CA: &str =
    "-----BEGIN CERTIFICATE-----\nTk9UIEEgUkVBTCBDQSAtIHRva2Vud2F0Y2ggdGVzdA==\n-----END CERTIFICATE-----\n";

/// A pod's token volume on the host; unmounted and removed by [`TokenVolume::remove`].
#[derive(Debug)]
pub struct TokenVolume {
    /// The volume's directory (the tmpfs mount point), which the container
    /// gets at `/var/run/secrets/kubernetes.io/serviceaccount`.
    pub dir: PathBuf,
    /// `<pods>/<uid>`, removed with the volume.
    pub pod_dir: PathBuf,
    /// The timestamped directory's name (`..2026_…`).
    pub timestamp_dir: String,
    /// What the `token` file holds.
    pub token: String,
    /// Whether a tmpfs is mounted at `dir`.
    mounted: bool,
    /// The files (name, contents) the layout holds.
    files: Vec<(String, String)>,
}

impl TokenVolume {
    /// Makes the volume of pod `uid` under `pods`: mounts a tmpfs (as kubelet
    /// does for projected volumes) and writes the atomic-writer layout.
    pub fn create(pods: &Path, uid: &str, namespace: &str, pod: &str, service_account: &str) -> TokenVolume {
        let suffix: String = uid.chars().filter(char::is_ascii_alphanumeric).take(5).collect();
        let token = fake_token(namespace, pod, uid, service_account);
        let files = FILES.iter().zip([FAKE_CA, namespace, token.as_str()]);
        let files = files.map(|(name, contents)| ((*name).to_owned(), contents.to_owned())).collect();
        Self::create_with(pods, uid, &format!("kube-api-access-{suffix}"), files, token)
    }

    /// A projected `serviceAccountToken` volume of its own (a pod's
    /// `volumes[].projected` with one source at `path: <file>`), named
    /// `volume`, holding only that file.
    pub fn create_projected(pods: &Path, uid: &str, volume: &str, file: &str, token: &str) -> TokenVolume {
        Self::create_with(pods, uid, volume, vec![(file.to_owned(), token.to_owned())], token.to_owned())
    }

    fn create_with(pods: &Path, uid: &str, volume: &str, files: Vec<(String, String)>, token: String) -> TokenVolume {
        let pod_dir = pods.join(uid);
        let dir = pod_dir.join("volumes/kubernetes.io~projected").join(volume);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating token volume {}: {e}", dir.display()));
        mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755,size=1m"))
            .unwrap_or_else(|e| panic!("mounting a tmpfs at {}: {e}", dir.display()));
        let volume = TokenVolume {
            dir,
            pod_dir,
            timestamp_dir: atomic_writer_dir_name(SystemTime::now()),
            token,
            mounted: true,
            files,
        };
        volume.write_layout();
        for (name, _) in &volume.files {
            symlink(format!("..data/{name}"), volume.dir.join(name))
                .unwrap_or_else(|e| panic!("symlinking {name} -> ..data/{name}: {e}"));
        }
        volume
    }

    /// What kubelet does to refresh the token: a new timestamped directory
    /// (new inodes), `..data` swapped to it by rename, the old one removed.
    /// Returns the new directory's name.
    pub fn rotate(&mut self) -> String {
        let old = std::mem::replace(&mut self.timestamp_dir, atomic_writer_dir_name(SystemTime::now()));
        let fresh = format!("{}.rotated", self.token);
        for (_, contents) in self.files.iter_mut().filter(|(_, contents)| *contents == self.token) {
            contents.clone_from(&fresh);
        }
        self.token = fresh;
        self.write_layout();
        fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).expect("swapping ..data");
        fs::remove_dir_all(self.dir.join(&old)).expect("removing the old timestamped directory");
        self.timestamp_dir.clone()
    }

    /// The `token` symlink's path on the host (`<dir>/token`).
    pub fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// The real token file's path on the host (`<dir>/..<timestamp>/token`).
    pub fn real_token_path(&self) -> PathBuf {
        self.dir.join(&self.timestamp_dir).join("token")
    }

    /// Writes the timestamped directory and points `..data` at it (through
    /// `..data_tmp` and a rename when `..data` already exists, as kubelet's
    /// atomic writer does).
    fn write_layout(&self) {
        let real = self.dir.join(&self.timestamp_dir);
        fs::create_dir(&real).unwrap_or_else(|e| panic!("creating {}: {e}", real.display()));
        fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).expect("chmod the timestamped directory");
        for (name, contents) in &self.files {
            let path = real.join(name);
            fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod a token volume file");
        }
        let link = if self.dir.join("..data").exists() { "..data_tmp" } else { "..data" };
        symlink(&self.timestamp_dir, self.dir.join(link)).expect("symlinking ..data");
    }

    /// Unmounts the tmpfs and removes `<pods>/<uid>`. Errors are ignored:
    /// this also runs from `Drop` impls after a failed test.
    pub fn remove(&mut self) {
        if self.mounted {
            let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
            self.mounted = false;
        }
        let _ = fs::remove_dir_all(&self.pod_dir);
    }
}

/// kubelet's atomic-writer directory name for `now`:
/// `..YYYY_MM_DD_HH_MM_SS.<nanoseconds>` (UTC).
pub fn atomic_writer_dir_name(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "..{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.{:09}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_nanos()
    )
}

/// Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A JWT-shaped, unsigned token whose claims look like a bound ServiceAccount
/// token's. Not a credential: no API server would accept it.
pub fn fake_token(namespace: &str, pod: &str, uid: &str, service_account: &str) -> String {
    let header = r#"{"alg":"RS256","kid":"tokenwatch-test"}"#;
    let claims = serde_json::json!({
        "aud": ["https://kubernetes.default.svc"],
        "iss": "https://kubernetes.default.svc",
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": pod, "uid": uid},
            "serviceaccount": {"name": service_account},
        },
    });
    format!("{}.{}.bm90LWEtcmVhbC1zaWduYXR1cmU", base64url(header.as_bytes()), base64url(claims.to_string().as_bytes()))
}

/// Unpadded base64url, as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

//! Real pods without a cluster (ARCHITECTURE.md, "Build machines"): a
//! containerd of the test's own ([`Containerd`]) whose CRI plugin runs pod
//! sandboxes and containers just as kubelet asks for them
//! ([`Containerd::run_pod`], [`Pod`]), from an image built here from
//! busybox-static (no registry is reachable), each pod with a ServiceAccount
//! token volume laid out as kubelet lays it out ([`token`]).
//!
//! Needs root and the Debian packages `containerd runc umoci busybox-static`
//! (`cargo xtask setup` installs them). The calls are synchronous: the
//! harness owns a tokio runtime and blocks on it, so it suits plain `#[test]`
//! functions. Failures panic with a message (and containerd's log where it
//! helps). Dropping a [`Pod`] removes it; dropping the [`Containerd`] removes
//! every pod, containerd, its mounts and directory, and the pods' cgroups.
//!
//! ```ignore
//! let containerd = Containerd::start();
//! let pod = containerd.run_pod(&PodSpec::new("victim"));
//! let (code, token, _) = pod.exec(&["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"]);
//! pod.trigger(); // the entrypoint reads the token
//! ```

pub mod api_view;
pub mod cleanup;
mod config;
pub mod custom;
pub mod daemon;
pub mod image;
pub mod pod;
pub mod token;

pub use custom::CustomContainer;
pub use daemon::Containerd;
pub use pod::{Pod, PodSpec, Qos, Sibling};

/// Where kubelet mounts the ServiceAccount token volume in every container.
/// In the harness's image `/var/run` is a symlink to `/run`, so the mount
/// itself is at `/run/secrets/kubernetes.io/serviceaccount`.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The containers' image (busybox), imported by the harness.
pub const IMAGE: &str = "tokenwatch.test/busybox:1";
/// The pod sandbox ("pause") image: the same image under a second name; its
/// default command is `sleep infinity`.
pub const SANDBOX_IMAGE: &str = "tokenwatch.test/pause:1";

//! containerd's configuration file for the harness (see [`daemon`](super::daemon)).

use std::path::Path;

/// containerd's configuration: everything under `dir`, CRI as described in
/// [`daemon`](super::daemon)'s documentation.
pub(super) fn config_toml(dir: &Path, socket: &Path) -> String {
    let dir = dir.display();
    let socket = socket.display();
    format!(
        r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
# Snapshotters this machine cannot use and tracing: less to start. (The v1
# runtime must stay: 1.6's tasks service, which CRI needs, requires it.)
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Imported by the harness (image.rs): nothing is ever pulled.
  sandbox_image = "{sandbox_image}"
  # Needed here: containerd must not set an oom_score_adj below its own.
  restrict_oom_score_adj = true
  # ExecSync does not use the streaming server; keep it on loopback anyway.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    # Empty: pods use the node's network, so CNI is never called.
    bin_dir = "{dir}/cni/bin"
    conf_dir = "{dir}/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    # cgroupfs: PID 1 is not systemd. Paths read /kubepods/<qos>/pod<uid>/<id>.
    SystemdCgroup = false
    # runc's state under ours, not /run/containerd/runc.
    Root = "{dir}/state/runc"
"#,
        sandbox_image = super::SANDBOX_IMAGE,
    )
}

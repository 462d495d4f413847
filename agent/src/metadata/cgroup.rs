//! Container ids from cgroup directory names, for the names runtimes use:
//! cgroupfs (`/kubepods/<qos>/pod<uid>/<id>`) and systemd
//! (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`).

/// Prefixes of systemd scope units that wrap a container id.
const SCOPE_PREFIXES: &[&str] = &["cri-containerd-", "crio-", "docker-", "containerd-"];

/// The container id a cgroup leaf name carries, if any.
pub fn container_id(leaf: &str) -> Option<&str> {
    let id = match leaf.strip_suffix(".scope") {
        Some(unit) => SCOPE_PREFIXES.iter().find_map(|prefix| unit.strip_prefix(prefix))?,
        None => leaf,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The first container id among cgroup names (unified leaf first).
pub fn container_id_of<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().find_map(container_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d2a8b9c0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn recognises_every_runtime_naming() {
        assert_eq!(container_id(ID), Some(ID));
        for leaf in [format!("cri-containerd-{ID}.scope"), format!("crio-{ID}.scope"), format!("docker-{ID}.scope")] {
            assert_eq!(container_id(&leaf), Some(ID), "{leaf}");
        }
    }

    #[test]
    fn other_names_are_not_containers() {
        for leaf in ["", "/", "kubepods", "pod1234", "session-3.scope", "crio-conmon-abc.scope", &ID[..63]] {
            assert_eq!(container_id(leaf), None, "{leaf}");
        }
        assert_eq!(container_id_of(["user.slice", ID]), Some(ID));
    }
}

//! Did the process descend from its container's entrypoint, or was it put
//! into the container from outside (`kubectl exec`, `crictl exec`,
//! `nsenter`)? Judged on the ancestry the kernel recorded at the event, so
//! it holds for processes that have already exited.

use tokenwatch_proto::v1::ProcessOrigin;

use crate::kernel::Identity;

/// Walks up from the process. Reaching the container's first process
/// (`init_pid` from the runtime, else pid 1 of the process's own pid
/// namespace) means entrypoint; reaching a parent in a shallower pid
/// namespace first means the process was entered from outside.
pub fn origin(identity: &Identity, init_pid: Option<u32>) -> ProcessOrigin {
    if identity.ns_level == 0 {
        return ProcessOrigin::Host;
    }
    let is_init = |pid: u32, ns_pid: u32, ns_level: u32| match init_pid {
        Some(init) => pid == init,
        None => ns_pid == 1 && ns_level == identity.ns_level,
    };
    if is_init(identity.pid, identity.ns_pid, identity.ns_level) {
        return ProcessOrigin::Entrypoint;
    }
    for ancestor in &identity.ancestors {
        if is_init(ancestor.pid, ancestor.ns_pid, ancestor.ns_level) {
            return ProcessOrigin::Entrypoint;
        }
        if ancestor.ns_level < identity.ns_level {
            return ProcessOrigin::Exec;
        }
    }
    ProcessOrigin::Unspecified
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelAncestor;

    fn identity(pid: u32, ns_pid: u32, ns_level: u32, ancestors: &[(u32, u32, u32)]) -> Identity {
        Identity {
            boot_time_ns: 0,
            pid,
            tid: pid,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            process_start_ns: 0,
            exec_id: 0,
            comm: String::new(),
            cgroup_names: Default::default(),
            ns_pid,
            ns_level,
            ancestors: ancestors
                .iter()
                .map(|&(pid, ns_pid, ns_level)| KernelAncestor { pid, ns_pid, ns_level, comm: String::new() })
                .collect(),
            executable: Default::default(),
        }
    }

    #[test]
    fn entrypoint_descendants_exec_and_host() {
        // sh (ns pid 7) <- app (ns pid 1, the container init) <- shim
        let child = identity(107, 7, 1, &[(101, 1, 1), (50, 50, 0)]);
        assert_eq!(origin(&child, None), ProcessOrigin::Entrypoint);
        assert_eq!(origin(&child, Some(101)), ProcessOrigin::Entrypoint);
        // the init itself
        assert_eq!(origin(&identity(101, 1, 1, &[(50, 50, 0)]), None), ProcessOrigin::Entrypoint);
        // kubectl exec: cat <- sh (ns pid 9) <- shim, outside the namespace
        let exec = identity(120, 10, 1, &[(119, 9, 1), (50, 50, 0)]);
        assert_eq!(origin(&exec, None), ProcessOrigin::Exec);
        assert_eq!(origin(&exec, Some(101)), ProcessOrigin::Exec);
        // a host process
        assert_eq!(origin(&identity(5, 5, 0, &[(1, 1, 0)]), None), ProcessOrigin::Host);
        // a chain cut short before either answer
        assert_eq!(origin(&identity(130, 30, 1, &[(129, 29, 1)]), None), ProcessOrigin::Unspecified);
    }

    #[test]
    fn shared_pid_namespace_needs_the_runtime_init_pid() {
        // In a pod sharing its pid namespace, an app container's init is not
        // ns pid 1 (pause is) and its parent is the shim.
        let app = identity(201, 5, 1, &[(50, 50, 0)]);
        assert_eq!(origin(&app, Some(201)), ProcessOrigin::Entrypoint);
        let child = identity(202, 6, 1, &[(201, 5, 1), (50, 50, 0)]);
        assert_eq!(origin(&child, Some(201)), ProcessOrigin::Entrypoint);
    }
}

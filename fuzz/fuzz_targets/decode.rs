//! Kernel event decoding: whatever bytes a ring-buffer record holds,
//! `kernel::decode` returns an event or an error and never panics (the reader
//! counts an undecodable record; a panic would stop the watch). What it
//! decodes then goes through the cgroup parsing the enricher does next.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwatch_agent::kernel::{decode, KernelEvent};
use tokenwatch_agent::metadata::cgroup;

fuzz_target!(|bytes: &[u8]| {
    let Ok(event) = decode(bytes) else { return };
    let [v2_leaf, v2_parent, v1_leaf, v1_parent] = &event.identity().cgroup_names;
    let _ = cgroup::identify([(v2_leaf.as_str(), v2_parent.as_str()), (v1_leaf.as_str(), v1_parent.as_str())]);
    assert!(event.identity().ancestors.len() <= 8, "more ancestors than the header holds");
    if let KernelEvent::Open(open) = &event {
        assert!(open.resolved_path.starts_with('/'), "resolved path {:?} is not absolute", open.resolved_path);
    }
});

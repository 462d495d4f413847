//! The kernel stage: resolve struct offsets from BTF, load and attach the
//! eBPF programs, keep their watch maps in step, and read and decode the
//! events they send.

pub mod btf;
pub mod cgroup_hooks;
pub mod clock;
pub mod counters;
pub mod decode;
pub mod endpoint;
pub mod fence;
pub mod hook_status;
pub mod load_error;
pub mod loader;
pub mod offsets;
pub mod reader;
pub mod stack_depth;
pub mod tracepoints;
pub mod watchlist;

pub use counters::{CounterReading, KernelCounters};
pub use decode::{decode, ConnectRecord, DecodeError, Enforced, Identity, KernelAncestor, KernelEvent, OpenRecord};
pub use load_error::LoadError;
pub use loader::Hooks;

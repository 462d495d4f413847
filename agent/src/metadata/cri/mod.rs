//! The container runtime over CRI: which pod and container a container id
//! belongs to, its image, its first process and its mounts.

pub mod cache;
pub mod connect;
pub mod container;

pub use cache::CriCache;
pub use connect::{channel, connect, detect_socket, CriError, DEFAULT_SOCKETS};
pub use container::{ContainerMeta, ContainerMount};

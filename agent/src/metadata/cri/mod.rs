//! The container runtime over CRI: which pod and container a container id
//! belongs to, its image and its mounts.

pub mod connect;

pub use connect::{connect, detect_socket, CriError, DEFAULT_SOCKETS};

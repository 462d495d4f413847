//! Keys of the maps that userspace fills with what to watch. The kernel looks
//! each open and connect up in them; a miss costs one lookup and sends nothing.

/// A file, as the kernel identifies it: device of its superblock and inode.
///
/// `dev` is the kernel's `s_dev` encoding (`major << 20 | minor`), not the
/// userspace `st_dev`; the agent converts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Kernel-encoded device of the file's superblock.
    pub dev: u32,
    /// Explicit padding, always zero so keys compare bytewise.
    pub _pad: u32,
    /// Inode number.
    pub ino: u64,
}

/// An API-server endpoint: address family, port and address.
///
/// IPv4 addresses fill `addr[..4]` and leave the rest zero; an IPv4-mapped
/// IPv6 destination (`::ffff:a.b.c.d`) is looked up as its IPv4 key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Address in network byte order.
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: repr(C), integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::EndpointKey {}
}

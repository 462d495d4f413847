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

/// Bytes of a token volume's file name the kernel compares (NUL-padded).
pub const TOKEN_NAME_LEN: usize = 32;

/// How the files of one device (filesystem) are watched: the value of the
/// `WATCHED_DEVS` map, keyed by the kernel-encoded device. An open on a
/// device absent from that map costs one lookup and nothing else.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevWatch {
    /// `DEV_EXACT_FILES` and/or `DEV_TOKEN_VOLUME`.
    pub mode: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// For a token volume: the token's file name, NUL-padded. Any file of
    /// that name on the volume matches, so a rotation (kubelet writes a new
    /// `..<timestamp>/token` and swaps `..data`) leaves no blind spot, and
    /// `ca.crt` or `namespace` beside it never match.
    pub name: [u8; TOKEN_NAME_LEN],
}

/// `s_magic` of a tmpfs, which every token volume kubelet mounts is.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;

/// `DevWatch::mode` bit: some files of this device are watched by inode in
/// `WATCHED_FILES`.
pub const DEV_EXACT_FILES: u32 = 1;
/// `DevWatch::mode` bit: the device is a token volume (a kubelet tmpfs);
/// files named `DevWatch::name` match.
pub const DEV_TOKEN_VOLUME: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::DevWatch {}
    // SAFETY: repr(C), integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: repr(C), integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::EndpointKey {}
}

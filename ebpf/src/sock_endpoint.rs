//! A `cgroup/connect*` context's destination: family, address and the key
//! the watch and fence maps are looked up by.

use aya_ebpf::programs::SockAddrContext;
use tokenwatch_common::{EndpointKey, AF_INET, AF_INET6};

/// An IPv4 connect's family, address (first four bytes) and map key. Shared by
/// the reporting hooks (`sock_addr.rs`) and the fences (`enforce.rs`).
#[inline(always)]
pub fn endpoint4(ctx: &SockAddrContext) -> (u16, [u8; 16], EndpointKey) {
    // SAFETY: the context the kernel passed; 4-byte loads of its fields.
    let (ip4, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    (AF_INET, addr, EndpointKey { family: AF_INET, port: u16::from_be(port as u16), _pad: 0, addr })
}

/// An IPv6 connect's family, address and map key (an IPv4-mapped address
/// is looked up as IPv4).
#[inline(always)]
pub fn endpoint6(ctx: &SockAddrContext) -> (u16, [u8; 16], EndpointKey) {
    // SAFETY: as above; user_ip6 is read one u32 at a time, as the verifier
    // requires.
    let (words, port) = unsafe {
        let s = &*ctx.sock_addr;
        ([s.user_ip6[0], s.user_ip6[1], s.user_ip6[2], s.user_ip6[3]], s.user_port)
    };
    let mut addr = [0u8; 16];
    for (chunk, word) in addr.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let port = u16::from_be(port as u16);
    let mut key = EndpointKey { family: AF_INET6, port, _pad: 0, addr };
    if addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff {
        key.family = AF_INET;
        key.addr = [0; 16];
        key.addr[..4].copy_from_slice(&addr[12..16]);
    }
    (AF_INET6, addr, key)
}

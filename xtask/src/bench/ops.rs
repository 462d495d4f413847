//! The operations whose cost the hooks add to: each a tight loop of real
//! syscalls on this machine, timed as a whole and divided.

use std::{
    ffi::CString,
    net::{SocketAddr, TcpListener},
    time::Instant,
};

/// One operation a workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(2)+close(2) of a file no hook watches.
    OpenPlain,
    /// open+close of `ca.crt` on a token volume no scan registered: the
    /// longest way an unwatched open takes through the kernel's layout
    /// match (tmpfs, `..<timestamp>` directory under the root, then the
    /// name is no token's).
    OpenBesideToken,
    /// open+close of the watched token file (every one is a match).
    OpenToken,
    /// connect(2)+close to a loopback port nobody watches.
    ConnectPlain,
    /// connect(2) of one UDP socket, again and again, to a loopback port
    /// nobody watches: the hooks a TCP connect passes (the syscall
    /// tracepoints and the cgroup `connect4`), without the handshake, the
    /// socket and the close. A TCP connect here takes some 55 µs and its
    /// repeats differ by hundreds of ns, more than the hooks add; this one
    /// takes a few µs, so what they add is measured, not lost in noise.
    ConnectUdp,
    /// connect+close to the watched API-server address.
    ConnectApi,
    /// getpid(2): a syscall none of the hooks is on.
    Getpid,
}

impl Op {
    /// Every operation, in table (and measuring) order: the unwatched first,
    /// so the work the watched ones cause cannot land on them.
    pub const ALL: [Op; 7] = [
        Op::Getpid,
        Op::OpenPlain,
        Op::OpenBesideToken,
        Op::ConnectPlain,
        Op::ConnectUdp,
        Op::OpenToken,
        Op::ConnectApi,
    ];

    /// The table's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Op::OpenPlain => "open+close, not watched",
            Op::OpenBesideToken => "open+close, ca.crt on a new token volume",
            Op::OpenToken => "open+close, token file",
            Op::ConnectPlain => "connect, not watched",
            Op::ConnectUdp => "connect (UDP), not watched",
            Op::ConnectApi => "connect, API server",
            Op::Getpid => "getpid",
        }
    }

    /// How many times one measurement repeats it.
    pub fn iterations(self) -> u32 {
        match self {
            Op::ConnectPlain | Op::ConnectApi => 20_000,
            Op::OpenPlain | Op::OpenBesideToken | Op::OpenToken | Op::ConnectUdp => 100_000,
            Op::Getpid => 1_000_000,
        }
    }
}

/// What the operations act on.
pub struct Targets {
    /// A file nobody watches.
    pub plain: CString,
    /// `ca.crt` in a kubelet-shaped token volume of its own.
    pub beside: CString,
    /// The watched token file.
    pub token: CString,
    /// A loopback listener nobody watches.
    pub plain_listener: TcpListener,
    /// The watched "API server" (a loopback listener).
    pub api_listener: TcpListener,
}

/// Nanoseconds per operation of `op`, one measurement.
pub fn measure(op: Op, targets: &Targets) -> f64 {
    let n = op.iterations();
    let started = Instant::now();
    match op {
        Op::OpenPlain => open_close(&targets.plain, n),
        Op::OpenBesideToken => open_close(&targets.beside, n),
        Op::OpenToken => open_close(&targets.token, n),
        Op::ConnectPlain => connect_close(&targets.plain_listener, n),
        Op::ConnectUdp => connect_udp(&targets.plain_listener, n),
        Op::ConnectApi => connect_close(&targets.api_listener, n),
        Op::Getpid => {
            for _ in 0..n {
                // SAFETY: getpid has no arguments and cannot fail.
                unsafe { libc::syscall(libc::SYS_getpid) };
            }
        }
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

fn open_close(path: &CString, n: u32) {
    for _ in 0..n {
        // SAFETY: a NUL-terminated path; the fd is closed at once.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: fd was just opened by us.
            unsafe { libc::close(fd) };
        }
    }
}

/// Connects one UDP socket `n` times to the address of `listener` (a TCP
/// one: nothing answers a UDP connect, which sends nothing).
fn connect_udp(listener: &TcpListener, n: u32) {
    let addr: SocketAddr = listener.local_addr().expect("a listener address");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    for _ in 0..n {
        let _ = socket.connect(addr);
    }
}

/// Connects and closes `n` times; accepts and drops what queued, so the
/// backlog never fills.
fn connect_close(listener: &TcpListener, n: u32) {
    let addr: SocketAddr = listener.local_addr().expect("a listener address");
    listener.set_nonblocking(true).expect("non-blocking listener");
    for i in 0..n {
        if let Ok(stream) = std::net::TcpStream::connect(addr) {
            drop(stream);
        }
        if i % 64 == 0 {
            while listener.accept().is_ok() {}
        }
    }
    while listener.accept().is_ok() {}
}

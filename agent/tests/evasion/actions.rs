//! What an attacker who knows tokenwatch does, run inside a real pod: this
//! test binary, bind-mounted into the container at [`HELPER`] with the
//! host's libraries, and exec'd there as `HELPER __evade <action> <args>`.
//! A constructor runs the action before libtest starts and exits; it prints
//! `ok <pid in the container>` on success, `fail <why>` otherwise.

use std::{
    ffi::CString,
    io::Write,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Where the helper is mounted in the container.
pub const HELPER: &str = "/tokenwatch-evade";
/// First argument that turns the test binary into the helper.
const MARKER: &str = "__evade";

#[ctor::ctor(unsafe)]
fn helper_entry() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(MARKER) {
        return;
    }
    let mut out = std::io::stdout();
    let code = match run(&args[2..]) {
        Ok(()) => {
            let _ = writeln!(out, "ok {}", std::process::id());
            0
        }
        Err(error) => {
            let _ = writeln!(out, "fail {error}");
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).cloned().ok_or_else(|| format!("missing argument {i}: {args:?}"));
    match arg(0)?.as_str() {
        "uring-openat" => uring_open(&arg(1)?, false, false),
        "uring-openat2" => uring_open(&arg(1)?, true, false),
        "uring-openat-direct" => uring_open(&arg(1)?, false, true),
        "uring-openat-skip" => uring_open_skip(&arg(1)?),
        "uring-openat-skip-async" => uring_open_skip_async(&arg(1)?),
        "uring-openat-skip-spin" => uring_open_skip_spin(&arg(1)?),
        "uring-connect" => uring_connect(&parse(&arg(1)?)?),
        "tfo-sendto" => fastopen(&parse(&arg(1)?)?, false),
        "tfo-sendmsg" => fastopen(&parse(&arg(1)?)?, true),
        "connect" => TcpStream::connect(parse(&arg(1)?)?).map(drop).map_err(|e| format!("connect: {e}")),
        "connect-nonblocking" => connect_nonblocking(&parse(&arg(1)?)?),
        "thread-read" => {
            let path = arg(1)?;
            std::thread::spawn(move || std::fs::read(path).map(drop).map_err(|e| format!("read: {e}")))
                .join()
                .map_err(|_| "the reading thread panicked".to_owned())?
        }
        "fork-read-exit" => fork_read_exit(&arg(1)?),
        // Issue 11: prints what it read, so a test sees whether any byte
        // of the token reached the process.
        "read-print" => {
            let data = std::fs::read(arg(1)?).map_err(|e| format!("read: {e}"))?;
            std::io::stdout().write_all(&data).map_err(|e| format!("write: {e}"))
        }
        "opath-reopen" => opath_reopen(&arg(1)?),
        "steal-fd" => steal_fd(&arg(1)?),
        other => Err(format!("unknown action {other}")),
    }
}

fn parse(addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|e| format!("address {addr}: {e}"))
}

/// One request through a fresh ring; returns its result.
fn submit(ring: &mut IoUring, entry: squeue::Entry) -> Result<i32, String> {
    // SAFETY: every pointer the entry holds outlives the wait below.
    unsafe { ring.submission().push(&entry) }.map_err(|e| format!("queue full: {e}"))?;
    ring.submit_and_wait(1).map_err(|e| format!("io_uring_enter: {e}"))?;
    let cqe: cqueue::Entry = ring.completion().next().ok_or("no completion")?;
    Ok(cqe.result())
}

/// Opens `path` with IORING_OP_OPENAT or OPENAT2 (optionally into a direct
/// descriptor), then reads it through the ring: no open(2) at all.
fn uring_open(path: &str, openat2: bool, direct: bool) -> Result<(), String> {
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    let how = types::OpenHow::new().flags(libc::O_RDONLY as u64);
    let mut entry = if openat2 {
        opcode::OpenAt2::new(types::Fd(libc::AT_FDCWD), c_path.as_ptr(), &how).build()
    } else {
        opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c_path.as_ptr()).flags(libc::O_RDONLY).build()
    };
    if direct {
        ring.submitter().register_files_sparse(4).map_err(|e| format!("register_files_sparse: {e}"))?;
        let slot = types::DestinationSlot::try_from_slot_target(2).map_err(|_| "slot")?;
        entry = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c_path.as_ptr())
            .flags(libc::O_RDONLY)
            .file_index(Some(slot))
            .build();
    }
    let res = submit(&mut ring, entry)?;
    if res < 0 {
        return Err(format!("io_uring open: errno {}", -res));
    }
    let mut buf = [0u8; 64];
    let read = if direct {
        opcode::Read::new(types::Fixed(2), buf.as_mut_ptr(), buf.len() as u32).build()
    } else {
        opcode::Read::new(types::Fd(res), buf.as_mut_ptr(), buf.len() as u32).build()
    };
    let n = submit(&mut ring, read)?;
    if n <= 0 {
        return Err(format!("io_uring read: {n}"));
    }
    Ok(())
}

/// IORING_OP_OPENAT with IOSQE_CQE_SKIP_SUCCESS, linked to a NOP: the open
/// posts no completion; the fd is the lowest free one, read with read(2).
fn uring_open_skip(path: &str) -> Result<(), String> {
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: plain syscalls: learn the lowest free fd.
    let guess = unsafe { libc::dup(0) };
    // SAFETY: as above.
    unsafe { libc::close(guess) };
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c_path.as_ptr())
        .flags(libc::O_RDONLY)
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS | squeue::Flags::IO_LINK);
    // SAFETY: the path outlives the wait.
    unsafe { ring.submission().push(&open) }.map_err(|e| format!("queue full: {e}"))?;
    if submit(&mut ring, opcode::Nop::new().build())? != 0 {
        return Err("the linked NOP failed".to_owned());
    }
    let mut buf = [0u8; 16];
    // SAFETY: reading into a valid buffer from the guessed fd.
    let n = unsafe { libc::read(guess, buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then_some(()).ok_or_else(|| format!("read fd {guess}: {}", std::io::Error::last_os_error()))
}

/// IORING_OP_OPENAT with IOSQE_CQE_SKIP_SUCCESS and IOSQE_ASYNC alone: an
/// io-wq worker opens it; the process never calls io_uring again, and
/// reads the guessed fd after a pause.
fn uring_open_skip_async(path: &str) -> Result<(), String> {
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    let (_ring, guess) = submit_open_skip_async(&c_path)?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut buf = [0u8; 16];
    // SAFETY: reading into a valid buffer from the guessed fd.
    let n = unsafe { libc::read(guess, buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then_some(()).ok_or_else(|| format!("read fd {guess}: {}", std::io::Error::last_os_error()))
}

/// The hostile form of [`uring_open_skip_async`]: from the moment the open
/// is submitted, `read(2)` on the guessed fd in a tight loop, racing
/// whatever would stop the process; prints what it read.
fn uring_open_skip_spin(path: &str) -> Result<(), String> {
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    let (_ring, guess) = submit_open_skip_async(&c_path)?;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < std::time::Duration::from_secs(2) {
        // SAFETY: reading into a valid buffer from the guessed fd.
        let n = unsafe { libc::read(guess, buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n @ 1..) = usize::try_from(n) {
            return std::io::stdout().write_all(&buf[..n]).map_err(|e| format!("write: {e}"));
        }
    }
    Err(format!("fd {guess} never became readable"))
}

/// Submits IORING_OP_OPENAT of `path` with IOSQE_CQE_SKIP_SUCCESS and
/// IOSQE_ASYNC: an io-wq worker opens it and posts no completion. Returns
/// the ring (kept until the fd is read) and the fd the open will get (the
/// lowest free one); `path` must outlive the read.
fn submit_open_skip_async(path: &CString) -> Result<(IoUring, i32), String> {
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    // SAFETY: plain syscalls: learn the lowest free fd.
    let guess = unsafe { libc::dup(0) };
    // SAFETY: as above.
    unsafe { libc::close(guess) };
    let flags = squeue::Flags::SKIP_SUCCESS | squeue::Flags::ASYNC;
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).flags(libc::O_RDONLY).build().flags(flags);
    // SAFETY: the caller keeps the path alive until the fd is read.
    unsafe { ring.submission().push(&open) }.map_err(|e| format!("queue full: {e}"))?;
    ring.submit().map_err(|e| format!("io_uring_enter: {e}"))?;
    Ok((ring, guess))
}

fn socket_for(addr: &SocketAddr) -> Result<OwnedFd, String> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `sockaddr_in`/`sockaddr_in6` for `addr`, and its length.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, valid all-zero.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// IORING_OP_CONNECT: no connect(2).
fn uring_connect(addr: &SocketAddr) -> Result<(), String> {
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let socket = socket_for(addr)?;
    let (storage, len) = sockaddr(addr);
    let entry =
        opcode::Connect::new(types::Fd(socket.as_raw_fd()), (&raw const storage).cast::<libc::sockaddr>(), len).build();
    match submit(&mut ring, entry)? {
        0 => Ok(()),
        res => Err(format!("io_uring connect: errno {}", -res)),
    }
}

/// TCP Fast Open: the first data goes with the SYN through sendto or
/// sendmsg(MSG_FASTOPEN); no connect(2).
fn fastopen(addr: &SocketAddr, sendmsg: bool) -> Result<(), String> {
    let socket = socket_for(addr)?;
    let (storage, len) = sockaddr(addr);
    let data = b"GET /api HTTP/1.1\r\n\r\n";
    let sent = if sendmsg {
        let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
        // SAFETY: msghdr is plain data; the pointers outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw const storage).cast_mut().cast();
        msg.msg_namelen = len;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: valid fd and msghdr.
        unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, libc::MSG_FASTOPEN) }
    } else {
        // SAFETY: valid fd, buffer and address for the call.
        unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_FASTOPEN,
                (&raw const storage).cast(),
                len,
            )
        }
    };
    if sent < 0 {
        return Err(format!("fast open: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// connect(2) on an O_NONBLOCK socket: returns EINPROGRESS at once.
fn connect_nonblocking(addr: &SocketAddr) -> Result<(), String> {
    let socket = socket_for(addr)?;
    // SAFETY: valid fd.
    unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let (storage, len) = sockaddr(addr);
    // SAFETY: valid fd and address.
    let res = unsafe { libc::connect(socket.as_raw_fd(), (&raw const storage).cast(), len) };
    let err = std::io::Error::last_os_error();
    match (res, err.raw_os_error()) {
        (0, _) | (_, Some(libc::EINPROGRESS)) => Ok(()),
        _ => Err(format!("connect: {err}")),
    }
}

/// A child that reads the token and exits at once; the parent reaps it.
fn fork_read_exit(path: &str) -> Result<(), String> {
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: the child only makes async-signal-safe calls before _exit.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: async-signal-safe calls only.
            unsafe {
                let fd = libc::open(c_path.as_ptr(), libc::O_RDONLY);
                let mut buf = [0u8; 16];
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::_exit(i32::from(n <= 0));
            }
        }
        child => {
            let mut status = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(child, &raw mut status, 0) };
            (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
                .then_some(())
                .ok_or_else(|| format!("the child failed: status {status}"))
        }
    }
}

/// An `O_PATH` fd (no read access) reopened for reading through
/// `/proc/self/fd/N`.
fn opath_reopen(path: &str) -> Result<(), String> {
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: valid C string; the fd is owned below.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open O_PATH: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor we own.
    let _owned = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::read(format!("/proc/self/fd/{fd}")).map(drop).map_err(|e| format!("reopen: {e}"))
}

/// A child opens the token and waits; the parent copies that fd out of it
/// with `pidfd_getfd(2)` and reads it: the parent never opens anything.
fn steal_fd(path: &str) -> Result<(), String> {
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    let mut pipe = [0i32; 2];
    // SAFETY: valid array of two fds.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the child only makes async-signal-safe calls.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: async-signal-safe calls only, then pause until killed.
        unsafe {
            let fd = libc::open(c_path.as_ptr(), libc::O_RDONLY);
            libc::write(pipe[1], (&raw const fd).cast(), 4);
            loop {
                libc::pause();
            }
        }
    }
    let mut target = -1i32;
    // SAFETY: reading 4 bytes into an i32.
    let got = unsafe { libc::read(pipe[0], (&raw mut target).cast(), 4) };
    let result = (|| {
        if got != 4 || target < 0 {
            return Err("the child could not open the token".to_owned());
        }
        // SAFETY: plain syscalls with integer arguments.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) };
        if pidfd < 0 {
            return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: as above.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) };
        if fd < 0 {
            return Err(format!("pidfd_getfd: {}", std::io::Error::last_os_error()));
        }
        let mut buf = [0u8; 16];
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::pread(fd as i32, buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then_some(()).ok_or_else(|| format!("read the stolen fd: {}", std::io::Error::last_os_error()))
    })();
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    result
}

//! The few actions the evasion tests' helper (`../evasion/actions.rs`) has
//! no word for, in the same shape: this test binary run as
//! `<binary> __matrix <action> <args>` (by the actor's `run`, so inside the
//! pod's cgroup and mount namespace); a constructor runs the action before
//! libtest starts and exits, printing `ok <detail>` or `fail <why>`.
//!
//! Also here: whether this kernel has io_uring at all, the one reason an
//! io_uring case may pass without an alert.

use std::{
    ffi::{c_void, CString},
    io::Write,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// First argument that turns the test binary into this helper.
pub const MARKER: &str = "__matrix";

#[ctor::ctor(unsafe)]
fn matrix_helper_entry() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(MARKER) {
        return;
    }
    let mut out = std::io::stdout();
    let code = match run(&args[2..]) {
        Ok(detail) => {
            let _ = writeln!(out, "ok {detail}");
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

fn run(args: &[String]) -> Result<String, String> {
    let arg = |i: usize| args.get(i).cloned().ok_or_else(|| format!("missing argument {i}: {args:?}"));
    match arg(0)?.as_str() {
        "openat-dirfd" => openat_dirfd(&arg(1)?, &arg(2)?),
        "vfork-read" => vfork_read(&arg(1)?),
        other => Err(format!("unknown action {other}")),
    }
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|e| format!("{text}: {e}"))
}

/// `openat(dirfd, name)` with `dirfd` an open directory: the path the
/// kernel sees is relative to a descriptor, not to the working directory.
/// The detail is the dirfd, which the alert must name.
fn openat_dirfd(dir: &str, name: &str) -> Result<String, String> {
    let (c_dir, c_name) = (c_string(dir)?, c_string(name)?);
    // SAFETY: a valid C string; the fd is owned below.
    let dirfd = unsafe { libc::open(c_dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if dirfd < 0 {
        return Err(format!("open {dir}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let dir_owned = unsafe { OwnedFd::from_raw_fd(dirfd) };
    // SAFETY: a valid directory fd and C string; the fd is owned below.
    let fd = unsafe { libc::openat(dir_owned.as_raw_fd(), c_name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("openat {dirfd} {name}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| format!("read: {e}"))?;
    if bytes.is_empty() {
        return Err(format!("{dir}/{name} was empty"));
    }
    Ok(dirfd.to_string())
}

/// The vfork child's work: open and read the path the argument points to,
/// then `_exit`. It runs on the parent's memory (`CLONE_VM`) while the
/// parent is suspended, so it makes only raw system calls.
extern "C" fn vfork_child(path: *mut c_void) -> libc::c_int {
    // SAFETY: `path` is the parent's C string, alive while the parent is
    // suspended (`CLONE_VFORK`); only async-signal-safe calls follow.
    unsafe {
        let fd = libc::open(path.cast::<libc::c_char>().cast_const(), libc::O_RDONLY);
        if fd < 0 {
            libc::_exit(2);
        }
        let mut buf = [0u8; 16];
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::_exit(if n > 0 { 0 } else { 3 })
    }
}

/// What `vfork(2)` does (`clone(CLONE_VM | CLONE_VFORK)`, as posix_spawn
/// does it), with a stack of its own for the child so no Rust frame is
/// shared: the child reads the token and exits while the parent waits.
/// The detail is the child's pid.
fn vfork_read(path: &str) -> Result<String, String> {
    let c_path = c_string(path)?;
    let mut stack = vec![0u128; 4096]; // 64 KiB, 16-byte aligned
    let top = stack.as_mut_ptr_range().end.cast::<c_void>();
    // SAFETY: the child runs `vfork_child` on `stack`, which outlives it
    // (the parent is suspended until the child exits), with `c_path`.
    let child = unsafe {
        libc::clone(
            vfork_child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            c_path.as_ptr().cast_mut().cast(),
        )
    };
    if child < 0 {
        return Err(format!("clone(CLONE_VM|CLONE_VFORK): {}", std::io::Error::last_os_error()));
    }
    let mut status = 0;
    // SAFETY: our own child.
    if unsafe { libc::waitpid(child, &raw mut status, 0) } != child {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    drop(stack);
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(child.to_string()),
        _ => Err(format!("the vfork child failed: status {status:#x}")),
    }
}

/// Whether the running kernel is older than `major.minor`.
pub fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("the kernel release");
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (major, minor)
}

/// Notes a case that cannot run here, on the test's stderr.
#[expect(clippy::print_stderr, reason = "a skipped case says so in the test log")]
pub fn unsupported(case: &str, why: &str) {
    eprintln!("kernel_matrix: {case}: unsupported on this kernel: {why}");
}

/// Whether `io_uring_setup(2)` is missing from this kernel (`ENOSYS`): the
/// only case in which an io_uring case may pass without its alert. Any
/// other refusal (`EPERM` from `kernel.io_uring_disabled`, say) is not a
/// reason: the helper then fails and so does the case.
pub fn io_uring_missing() -> bool {
    // struct io_uring_params: 120 bytes, zero is a valid request.
    let mut params = [0u8; 120];
    // SAFETY: one entry, a zeroed params struct of the kernel's size.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: the ring we just made.
        unsafe { libc::close(fd as i32) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
}

//! Human-readable renderings of raw syscall values for alerts.

/// Open flags by name, in the order `open(2)` lists them.
const OPEN_FLAGS: &[(u64, &str)] = &[
    (libc::O_CREAT as u64, "O_CREAT"),
    (libc::O_EXCL as u64, "O_EXCL"),
    (libc::O_NOCTTY as u64, "O_NOCTTY"),
    (libc::O_TRUNC as u64, "O_TRUNC"),
    (libc::O_APPEND as u64, "O_APPEND"),
    (libc::O_NONBLOCK as u64, "O_NONBLOCK"),
    (libc::O_DSYNC as u64, "O_DSYNC"),
    (libc::O_DIRECT as u64, "O_DIRECT"),
    (KERNEL_O_LARGEFILE, "O_LARGEFILE"),
    (libc::O_DIRECTORY as u64, "O_DIRECTORY"),
    (libc::O_NOFOLLOW as u64, "O_NOFOLLOW"),
    (libc::O_NOATIME as u64, "O_NOATIME"),
    (libc::O_CLOEXEC as u64, "O_CLOEXEC"),
    (libc::O_PATH as u64, "O_PATH"),
    (libc::O_SYNC as u64 & !(libc::O_DSYNC as u64), "O_SYNC"),
    (libc::O_TMPFILE as u64 & !(libc::O_DIRECTORY as u64), "O_TMPFILE"),
];

/// The kernel's `O_LARGEFILE`, which it adds itself to 64-bit opens (io_uring's
/// `struct io_open` holds it); libc defines it as 0 on 64-bit targets.
#[cfg(target_arch = "aarch64")]
const KERNEL_O_LARGEFILE: u64 = 0o400_000;
/// The kernel's `O_LARGEFILE` (see the aarch64 one).
#[cfg(not(target_arch = "aarch64"))]
const KERNEL_O_LARGEFILE: u64 = 0o100_000;

/// `O_RDONLY|O_CLOEXEC`-style rendering; unknown bits as hex.
pub fn open_flags(flags: u64) -> String {
    let mut parts = vec![match flags & libc::O_ACCMODE as u64 {
        0 => "O_RDONLY".to_owned(),
        1 => "O_WRONLY".to_owned(),
        2 => "O_RDWR".to_owned(),
        _ => "O_ACCMODE".to_owned(),
    }];
    let mut rest = flags & !(libc::O_ACCMODE as u64);
    for &(bit, name) in OPEN_FLAGS {
        if rest & bit == bit && bit != 0 {
            parts.push(name.to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

/// What a `connect(2)` result means for the caller.
pub fn connect_outcome(result: i64) -> String {
    match result {
        0 => "connected".to_owned(),
        r if r == -i64::from(libc::EINPROGRESS) => "in_progress".to_owned(),
        r => format!("failed: {}", errno_name(-r)),
    }
}

fn errno_name(errno: i64) -> String {
    let known: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::EINTR, "EINTR"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::EACCES, "EACCES"),
        (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::EISCONN, "EISCONN"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::EALREADY, "EALREADY"),
    ];
    known
        .iter()
        .find(|(code, _)| i64::from(*code) == errno)
        .map_or_else(|| format!("errno {errno}"), |(_, name)| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_by_name() {
        assert_eq!(open_flags(0), "O_RDONLY");
        assert_eq!(open_flags((libc::O_RDONLY | libc::O_CLOEXEC) as u64), "O_RDONLY|O_CLOEXEC");
        assert_eq!(open_flags((libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64), "O_RDWR|O_CREAT|O_TRUNC");
        assert_eq!(open_flags((libc::O_PATH | libc::O_NOFOLLOW) as u64), "O_RDONLY|O_NOFOLLOW|O_PATH");
        assert_eq!(open_flags(libc::O_SYNC as u64), "O_RDONLY|O_DSYNC|O_SYNC");
        assert_eq!(open_flags(1 << 40), "O_RDONLY|0x10000000000");
    }

    #[test]
    fn connect_results_name_the_errno() {
        assert_eq!(connect_outcome(0), "connected");
        assert_eq!(connect_outcome(-115), "in_progress");
        assert_eq!(connect_outcome(-111), "failed: ECONNREFUSED");
        assert_eq!(connect_outcome(-4095), "failed: errno 4095");
    }
}

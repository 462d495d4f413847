//! The load the throughput steps offer: token-file opens from several
//! processes at once, so the agent's own ceiling is measured rather than
//! what one thread of the load can issue. Each process paces its share of
//! the rate in 1 ms slices; all start together (they wait on one pipe that
//! the parent closes) and each reports how many opens it made and in how
//! long, through a pipe of its own.
//!
//! The processes are forked from this (threaded) one. Between `fork` and
//! `_exit` a child only opens, closes, reads the clock, sleeps and writes
//! to a pipe: no allocation, no lock, so nothing another thread held at the
//! fork can block it.

use std::{ffi::CString, thread, time::Duration};

use anyhow::{bail, Result};

use crate::util::say;

/// What a multi-process load did.
pub struct Offered {
    /// Opens made by all the processes.
    pub opens: u64,
    /// The longest time one of them ran.
    pub elapsed: Duration,
}

/// How many processes offer the throughput steps' load: one per CPU, so
/// the load is not what limits the rate (they share the CPUs with the
/// agent, as a node's workloads do).
pub fn processes() -> usize {
    thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

/// Opens and closes `path` at `rate` per second in all (0: each process
/// flat out) from `processes` processes for `duration`.
pub fn opens_from(processes: usize, path: &CString, rate: u32, duration: Duration) -> Result<Offered> {
    let mut go = [0; 2];
    // SAFETY: a two-element array for the two fds.
    if unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let mut children = Vec::new();
    let shares = shares(rate, processes);
    for share in shares {
        let mut report = [0; 2];
        // SAFETY: as above.
        if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the child runs only async-signal-safe calls (module doc).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: fds of this process; see the module doc for the child.
            unsafe {
                libc::close(go[1]);
                libc::close(report[0]);
                let mut byte = 0u8;
                // Blocks until the parent closes its end: every child starts at once.
                libc::read(go[0], (&raw mut byte).cast(), 1);
                let started = std::time::Instant::now();
                let opens = paced_opens(path, share, duration);
                let figures = [opens, started.elapsed().as_nanos() as u64];
                libc::write(report[1], figures.as_ptr().cast(), size_of_val(&figures));
                libc::_exit(0);
            }
        }
        // SAFETY: the child's end, not used here.
        unsafe { libc::close(report[1]) };
        children.push((pid, report[0]));
    }
    // SAFETY: the parent's ends of the start pipe; closing the write end starts the children.
    unsafe {
        libc::close(go[0]);
        libc::close(go[1]);
    }
    let mut offered = Offered { opens: 0, elapsed: Duration::ZERO };
    let mut failed = 0;
    for (pid, report) in children {
        let mut figures = [0u64; 2];
        // SAFETY: reads into a local array of the size written; then reaps the child.
        let read = unsafe { libc::read(report, figures.as_mut_ptr().cast(), size_of_val(&figures)) };
        // SAFETY: as above.
        unsafe {
            libc::close(report);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        if read != size_of_val(&figures) as isize {
            failed += 1;
            continue;
        }
        offered.opens += figures[0];
        offered.elapsed = offered.elapsed.max(Duration::from_nanos(figures[1]));
    }
    if failed > 0 {
        say(format!("bench: {failed} of the load's processes reported nothing"));
    }
    Ok(offered)
}

/// Each process's share of `rate` (0 stays 0: flat out).
fn shares(rate: u32, processes: usize) -> Vec<u32> {
    let n = u32::try_from(processes.max(1)).unwrap_or(u32::MAX);
    (0..n).map(|i| rate / n + u32::from(i < rate % n)).collect()
}

/// Opens and closes `path` at `rate` per second (0: flat out) for
/// `duration`, in 1 ms slices that catch up when behind; returns how many.
/// Allocates nothing: it runs in forked children.
pub fn paced_opens(path: &CString, rate: u32, duration: Duration) -> u64 {
    let started = std::time::Instant::now();
    let mut done: u64 = 0;
    while started.elapsed() < duration {
        let due = if rate == 0 { done + 1000 } else { (started.elapsed().as_secs_f64() * f64::from(rate)) as u64 + 1 };
        // Never past the end: when the load falls behind the offered rate
        // it runs flat out until the duration is up, then stops.
        while done < due && (!done.is_multiple_of(256) || started.elapsed() < duration) {
            // SAFETY: a NUL-terminated path; the fd is closed at once.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: fd was just opened here.
                unsafe { libc::close(fd) };
            }
            done += 1;
        }
        if rate != 0 {
            thread::sleep(Duration::from_micros(1000));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_shared_whole() {
        assert_eq!(shares(200_000, 2), vec![100_000, 100_000]);
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(0, 2), vec![0, 0], "flat out stays flat out");
        assert_eq!(shares(5, 0), vec![5], "at least one process");
    }

    #[test]
    fn every_process_opens_and_reports() {
        let path = CString::new("/dev/null").expect("no NUL in the path");
        let offered = opens_from(2, &path, 2_000, Duration::from_millis(200)).expect("the load runs");
        // 2,000/s for 0.2 s from two processes: 400 opens, give or take a slice each.
        assert!((380..=420).contains(&offered.opens), "{} opens", offered.opens);
        assert!(offered.elapsed >= Duration::from_millis(200), "{:?}", offered.elapsed);
    }
}

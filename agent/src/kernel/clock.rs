//! Kernel timestamps (`CLOCK_BOOTTIME`, which keeps counting through suspend)
//! to wall-clock time for alerts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time of boot, measured once at start-up.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    boot_epoch_ns: i128,
}

impl BootClock {
    /// Measures boot time now.
    pub fn measure() -> Self {
        let mut boot = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut boot) };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos();
        let since_boot = i128::from(boot.tv_sec) * 1_000_000_000 + i128::from(boot.tv_nsec);
        BootClock { boot_epoch_ns: i128::try_from(now).unwrap_or(i128::MAX) - since_boot }
    }

    /// The wall-clock time of a `bpf_ktime_get_boot_ns()` value, as seconds
    /// and nanoseconds since the Unix epoch.
    pub fn wall(self, boot_ns: u64) -> (i64, i32) {
        let epoch_ns = self.boot_epoch_ns + i128::from(boot_ns);
        let seconds = i64::try_from(epoch_ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX);
        let nanos = i32::try_from(epoch_ns.rem_euclid(1_000_000_000)).unwrap_or(0);
        (seconds, nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_in_boot_time_maps_to_now_on_the_wall() {
        let clock = BootClock::measure();
        let mut boot = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut boot) };
        let boot_ns = u64::try_from(boot.tv_sec).expect("positive") * 1_000_000_000
            + u64::try_from(boot.tv_nsec).expect("positive");
        let (seconds, _) = clock.wall(boot_ns);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after epoch").as_secs();
        assert!((i64::try_from(now).expect("fits") - seconds).abs() <= 1, "{now} vs {seconds}");
    }
}

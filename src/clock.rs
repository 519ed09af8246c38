//! A coarse wall clock that costs one atomic load per request.
//!
//! A background thread stores the unix time in seconds every 50 ms; expiry checks and usage stamps read
//! it. Before [`start`] is called (unit tests, CLI commands) [`now`] falls back to the system clock.
//! [`mono_nanos`] is the fine monotonic clock the rate limiters read (only when a limit applies).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix seconds as last stored by the ticker; 0 until it runs.
static NOW: AtomicU64 = AtomicU64::new(0);
static START: Once = Once::new();

fn system_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts the ticker thread (once per process).
pub fn start() {
    START.call_once(|| {
        NOW.store(system_secs(), Ordering::Relaxed);
        std::thread::Builder::new()
            .name("tokengate-clock".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(50));
                NOW.store(system_secs(), Ordering::Relaxed);
            })
            .expect("spawn clock thread");
    });
}

/// The current unix time in seconds, at most ~50 ms stale once the ticker runs.
#[inline]
pub fn now() -> u64 {
    match NOW.load(Ordering::Relaxed) {
        0 => system_secs(),
        t => t,
    }
}

/// Nanoseconds on a monotonic clock since the first call in this process (rate limiters' time: never
/// goes back, unaffected by wall-clock steps). One `clock_gettime` through the vDSO.
#[inline]
pub fn mono_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(std::time::Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month 1-12, day 1-31).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_with_the_system_clock() {
        super::start();
        let a = super::now();
        assert!(a.abs_diff(super::system_secs()) <= 1);
    }
}

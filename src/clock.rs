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

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_with_the_system_clock() {
        super::start();
        let a = super::now();
        assert!(a.abs_diff(super::system_secs()) <= 1);
    }
}

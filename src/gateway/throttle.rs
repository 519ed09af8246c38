//! Brute-force throttling: failed authentications are counted per client address in fixed windows; an
//! address over the limit gets 429 with `Retry-After` instead of 401 for its failures.
//!
//! Only failures are ever looked up (a request with a valid token never touches this), so clients with
//! valid tokens are never throttled by someone else's failures — not even behind the same NAT address.
//! Memory is bounded: at most `max_clients` addresses are tracked, in 64 independently locked shards;
//! a full shard drops its expired windows first and then its oldest entry.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

const SHARDS: usize = 64;

#[derive(Clone, Copy)]
struct Window {
    start: u64,
    failures: u32,
}

/// Per-address failure counters.
pub struct Throttle {
    shards: Vec<Mutex<HashMap<IpAddr, Window>>>,
    hasher: std::collections::hash_map::RandomState,
    max_failures: u32,
    window_secs: u64,
    per_shard: usize,
}

impl Throttle {
    /// `max_failures == 0` disables throttling.
    pub fn new(max_failures: u32, window_secs: u64, max_clients: usize) -> Throttle {
        Throttle {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            max_failures,
            window_secs: window_secs.max(1),
            per_shard: (max_clients / SHARDS).max(1),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Window>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// Records one failed authentication from `ip` at unix time `now`. Returns `Some(retry_after_secs)`
    /// when the address is over its limit (answer 429), `None` otherwise (answer 401/400).
    pub fn failure(&self, ip: IpAddr, now: u64) -> Option<u64> {
        if self.max_failures == 0 {
            return None;
        }
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&ip) && map.len() >= self.per_shard {
            let window = self.window_secs;
            map.retain(|_, w| now < w.start + window);
            if map.len() >= self.per_shard {
                if let Some(oldest) = map.iter().min_by_key(|(_, w)| w.start).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let w = map.entry(ip).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now >= w.start + self.window_secs {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        (w.failures > self.max_failures)
            .then(|| (w.start + self.window_secs).saturating_sub(now).max(1))
    }

    /// Number of addresses tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_after_the_limit_until_the_window_ends() {
        let t = Throttle::new(3, 60, 1000);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(t.failure(ip, 100), None);
        assert_eq!(t.failure(ip, 101), None);
        assert_eq!(t.failure(ip, 102), None);
        assert_eq!(t.failure(ip, 110), Some(50));
        // Another address is unaffected.
        assert_eq!(t.failure("10.0.0.2".parse().unwrap(), 110), None);
        // A new window starts fresh.
        assert_eq!(t.failure(ip, 160), None);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Throttle::new(3, 60, 640);
        for i in 0..100_000u32 {
            t.failure(IpAddr::from(i.to_be_bytes()), 1);
        }
        assert!(t.tracked() <= 640, "{}", t.tracked());
    }

    #[test]
    fn zero_disables() {
        let t = Throttle::new(0, 60, 10);
        let ip: IpAddr = "::1".parse().unwrap();
        assert!((0..100).all(|_| t.failure(ip, 1).is_none()));
    }
}

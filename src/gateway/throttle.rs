//! Brute-force throttling: failed authentications are counted per client in fixed windows; a client over
//! the limit gets 429 with `Retry-After` instead of 401 for its failures.
//!
//! Only failures are ever looked up (a request with a valid token never touches this), so clients with
//! valid tokens are never throttled by someone else's failures — not even behind the same NAT address.
//!
//! **Who is one client.** An IPv4 address; an IPv6 **/64** (one subscriber's prefix: an attacker holds
//! 2^64 addresses in it, so counting per address would count nothing); an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, what a dual-stack socket reports) as the IPv4 address it carries.
//!
//! **Memory** is bounded: at most `max_clients` clients are tracked, in up to 64 independently locked
//! shards of at least 1,024 (fewer shards for a small `max_clients`, so the bound is not split into
//! slivers). When a new client finds its shard full, expired windows go first; then the entry to evict is
//! chosen so that evicting helps an attacker least:
//! - a client **not** over the limit, the oldest window first: it loses at most `max_failures` counted
//!   failures, which a fresh address would have had anyway;
//! - only when every tracked client is throttled, the one whose window **ends soonest** (all windows have
//!   the same length: the oldest). It had the least punishment left, and coming back it must fail
//!   `max_failures` times again before its next 429 — so an attacker rotating addresses gains no more
//!   than `max_failures` guesses per address it spends, as it would from fresh addresses. The other
//!   choices are worse: leaving the newcomer untracked would give every newcomer unlimited guesses while
//!   the table is full, and refusing newcomers (429 for any untracked failure) would let an attacker who
//!   fills the table turn every other client's 401 into a 429.
//!
//! A rotating attacker therefore cannot reset its own throttled addresses while the table holds clients
//! that are not throttled (before 2026-12 the oldest entry went first, throttled or not).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

const MAX_SHARDS: usize = 64;
/// The fewest entries a shard holds (unless `max_clients` itself is smaller).
const MIN_PER_SHARD: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Window {
    start: u64,
    failures: u32,
}

/// Per-client failure counters.
pub struct Throttle {
    shards: Box<[Mutex<HashMap<IpAddr, Window>>]>,
    hasher: std::collections::hash_map::RandomState,
    max_failures: u32,
    window_secs: u64,
    per_shard: usize,
}

/// The client `ip` counts for: the address itself for IPv4, the /64 for IPv6, the IPv4 address of an
/// IPv4-mapped IPv6 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
    }
}

impl Throttle {
    /// `max_failures == 0` disables throttling.
    pub fn new(max_failures: u32, window_secs: u64, max_clients: usize) -> Throttle {
        let max_clients = max_clients.max(1);
        let shards = (max_clients / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        Throttle {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            max_failures,
            window_secs: window_secs.max(1),
            per_shard: max_clients / shards,
        }
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, Window>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// Records one failed authentication from `ip` at unix time `now`. Returns `Some(retry_after_secs)`
    /// when the client is over its limit (answer 429), `None` otherwise (answer 401/400).
    pub fn failure(&self, ip: IpAddr, now: u64) -> Option<u64> {
        if self.max_failures == 0 {
            return None;
        }
        let key = client_key(ip);
        let mut map = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= self.per_shard {
            let window = self.window_secs;
            map.retain(|_, w| now < w.start.saturating_add(window));
            if map.len() >= self.per_shard {
                let max = self.max_failures;
                // Not throttled before throttled; within each, the oldest window (the soonest to end).
                if let Some(victim) = map
                    .iter()
                    .min_by_key(|(_, w)| (w.failures > max, w.start))
                    .map(|(k, _)| *k)
                {
                    map.remove(&victim);
                }
            }
        }
        let w = map.entry(key).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now >= w.start.saturating_add(self.window_secs) {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        (w.failures > self.max_failures).then(|| {
            w.start
                .saturating_add(self.window_secs)
                .saturating_sub(now)
                .max(1)
        })
    }

    /// Number of clients tracked (for tests and metrics).
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

    fn v4(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn throttles_after_the_limit_until_the_window_ends() {
        let t = Throttle::new(3, 60, 1000);
        let a = ip("10.0.0.1");
        assert_eq!(t.failure(a, 100), None);
        assert_eq!(t.failure(a, 101), None);
        assert_eq!(t.failure(a, 102), None);
        assert_eq!(t.failure(a, 110), Some(50));
        // Another address is unaffected.
        assert_eq!(t.failure(ip("10.0.0.2"), 110), None);
        // A new window starts fresh.
        assert_eq!(t.failure(a, 160), None);
    }

    #[test]
    fn memory_is_bounded() {
        for max_clients in [64, 640, 5000] {
            let t = Throttle::new(3, 60, max_clients);
            for i in 0..3 * max_clients as u32 + 1000 {
                t.failure(v4(i), 1);
            }
            assert!(t.tracked() <= max_clients, "{max_clients}: {}", t.tracked());
        }
    }

    #[test]
    fn shards_hold_at_least_1024_unless_the_bound_is_smaller() {
        let t = Throttle::new(3, 60, 64);
        assert_eq!((t.shards.len(), t.per_shard), (1, 64));
        let t = Throttle::new(3, 60, 5000);
        assert_eq!((t.shards.len(), t.per_shard), (4, 1250));
        let t = Throttle::new(3, 60, 100_000);
        assert_eq!((t.shards.len(), t.per_shard), (64, 1562));
    }

    #[test]
    fn zero_disables() {
        let t = Throttle::new(0, 60, 10);
        assert!((0..100).all(|_| t.failure(ip("::1"), 1).is_none()));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = Throttle::new(2, 60, 1000);
        // Every failure from another address of the same /64: throttled on the third, as one address is.
        assert_eq!(t.failure(ip("2001:db8:1:2::1"), 1), None);
        assert_eq!(t.failure(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 1), None);
        assert_eq!(t.failure(ip("2001:db8:1:2:dead:beef::7"), 1), Some(60));
        assert_eq!(t.tracked(), 1);
        // The neighbouring /64 is another client.
        assert_eq!(t.failure(ip("2001:db8:1:3::1"), 1), None);
        assert_eq!(t.tracked(), 2);
        assert_eq!(client_key(ip("2001:db8:1:2:a:b:c:d")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn ipv4_mapped_counts_as_the_ipv4_address() {
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        let t = Throttle::new(1, 60, 1000);
        assert_eq!(t.failure(ip("192.0.2.7"), 1), None);
        assert_eq!(t.failure(ip("::ffff:192.0.2.7"), 1), Some(60));
        // Not the whole ::ffff:0:0/96 as one /64: each mapped address is its own client.
        assert_eq!(t.failure(ip("::ffff:192.0.2.8"), 1), None);
    }

    #[test]
    fn a_full_table_evicts_a_client_that_is_not_throttled_and_keeps_the_throttled() {
        let t = Throttle::new(1, 60, 64);
        let attacker = v4(1);
        assert_eq!(t.failure(attacker, 10), None);
        assert_eq!(t.failure(attacker, 10), Some(60), "throttled");
        // The rest of the table: one failure each (not throttled), all newer than the attacker's window.
        for i in 2..=64 {
            assert_eq!(t.failure(v4(i), 11), None);
        }
        assert_eq!(t.tracked(), 64);
        // The attacker rotates through fresh addresses: each evicts someone, never the throttled one.
        for i in 100..400 {
            t.failure(v4(i), 12);
            assert_eq!(t.tracked(), 64);
            assert!(
                t.failure(attacker, 12).is_some(),
                "still throttled after {i}"
            );
        }
    }

    #[test]
    fn among_clients_not_throttled_the_oldest_window_goes_first() {
        let t = Throttle::new(5, 600, 64);
        for i in 1..=64 {
            t.failure(v4(i), u64::from(i));
        }
        t.failure(v4(1000), 65);
        // v4(1) had the oldest window: evicted, so its next failure counts from 1 again.
        let map = t.shards[0].lock().unwrap();
        assert!(!map.contains_key(&v4(1)) && map.contains_key(&v4(2)));
        assert_eq!(map[&v4(1000)].failures, 1);
    }

    #[test]
    fn when_every_client_is_throttled_the_window_ending_soonest_goes() {
        let t = Throttle::new(1, 600, 64);
        // Throttled at times 10..74; the window of v4(1) ends first.
        for i in 1..=64u32 {
            let now = 9 + u64::from(i);
            t.failure(v4(i), now);
            assert!(t.failure(v4(i), now).is_some());
        }
        // A newcomer is tracked (its failures count from the first).
        assert_eq!(t.failure(v4(500), 75), None);
        assert_eq!(t.failure(v4(500), 75), Some(600));
        {
            let map = t.shards[0].lock().unwrap();
            assert!(!map.contains_key(&v4(1)), "the soonest to end went");
            assert!((2..=64).all(|i| map.contains_key(&v4(i))));
        }
        // The evicted address must fail `max_failures` times again before its next 429: no more than a
        // fresh address gets.
        assert_eq!(t.failure(v4(1), 76), None);
        assert_eq!(t.failure(v4(1), 76), Some(600));
    }

    #[test]
    fn expired_windows_go_before_anyone_is_evicted() {
        let t = Throttle::new(1, 60, 64);
        t.failure(v4(1), 10);
        t.failure(v4(1), 10); // throttled, window ends at 70
        for i in 2..=64 {
            t.failure(v4(i), 5); // windows end at 65
        }
        // At 66 the 63 expired windows are dropped; the throttled client, still in its window, stays.
        t.failure(v4(900), 66);
        assert_eq!(t.tracked(), 2);
        assert_eq!(t.failure(v4(1), 66), Some(4));
    }

    #[test]
    fn window_arithmetic_does_not_overflow() {
        let t = Throttle::new(1, u64::MAX, 64);
        assert_eq!(t.failure(v4(1), u64::MAX - 1), None);
        assert_eq!(t.failure(v4(1), u64::MAX - 1), Some(1));
    }
}

//! Rate limits and quotas, decided in memory before a request is forwarded, with no lock per request:
//!
//! - [`Gcra`]: the generic cell rate algorithm (a token bucket kept as one "theoretical arrival time" per
//!   key in an `AtomicU64`, advanced by compare-and-swap): `count/period` with a burst, exact under any
//!   concurrency on one node.
//! - [`Limiters`]: the per-(route, token) and per-(route, user) buckets of the routes' `rate_limit` and
//!   `user_rate_limit`, in a lock-free map; a bucket that is full again (idle) is the same as no bucket,
//!   so [`Limiters::sweep`] drops them and idle keys cost nothing.
//! - [`QuotaCount`]: a token's accepted requests in its calendar period: the shared count (all nodes, as
//!   of this node's last flush) plus this node's unflushed ones, checked and incremented in one CAS, so a
//!   quota of N accepts exactly N on one node at any concurrency. Across nodes each node may overshoot by
//!   what the others accepted since its last flush.
//!
//! Cross-node truth, said plainly: rates are enforced per node (N nodes let through up to N times a
//! rate); quotas are enforced against the shared count with at most one flush interval of other nodes'
//! traffic of overshoot per node.

use crate::config::Rate;
use crate::tokens::fields::Quota;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// A rate with a burst, in nanoseconds: one request costs `emission`; up to `tolerance` may be owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub rate: Rate,
    pub burst: u64,
    emission: u64,
    tolerance: u64,
}

/// What a limiter said yes to: what is left, for the `RateLimit` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Requests that could go through right now.
    pub remaining: u64,
    /// Seconds until the limit is whole again (bucket full, or the quota period over).
    pub reset_secs: u64,
}

impl Gcra {
    pub fn new(rate: Rate, burst: u64) -> Gcra {
        let emission = (rate.per_secs as u128 * 1_000_000_000 / rate.count as u128) as u64;
        let burst = burst.max(1);
        Gcra {
            rate,
            burst,
            emission: emission.max(1),
            tolerance: emission.max(1).saturating_mul(burst),
        }
    }

    /// Takes one request from the bucket whose state is `tat`, at monotonic time `now` (ns). `Err`: the
    /// seconds (at least 1) until one would be allowed.
    #[inline]
    pub fn take(&self, tat: &AtomicU64, now: u64) -> Result<Left, u64> {
        let mut old = tat.load(Ordering::Relaxed);
        loop {
            let next = old.max(now) + self.emission;
            let owed = next - now;
            if owed > self.tolerance {
                let wait = owed - self.tolerance;
                return Err(wait.div_ceil(1_000_000_000).max(1));
            }
            match tat.compare_exchange_weak(old, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    return Ok(Left {
                        remaining: (self.tolerance - owed) / self.emission,
                        reset_secs: owed.div_ceil(1_000_000_000),
                    })
                }
                Err(now_there) => old = now_there,
            }
        }
    }

    /// `RateLimit-Policy` parameters: the burst (`q`) over the seconds it takes to refill (`w`).
    pub fn window_secs(&self) -> u64 {
        self.tolerance.div_ceil(1_000_000_000).max(1)
    }
}

/// Which kind of bucket a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Token,
    User,
}

/// The route's per-token and per-user buckets: (route index, kind, token id or user hash) → TAT.
pub struct Limiters {
    map: papaya::HashMap<(u32, Kind, u64), AtomicU64>,
    /// Keys user ids (a keyed hash: ids chosen to collide would share a bucket otherwise).
    users: std::collections::hash_map::RandomState,
}

impl Default for Limiters {
    fn default() -> Self {
        Limiters {
            map: papaya::HashMap::new(),
            users: Default::default(),
        }
    }
}

impl Limiters {
    /// Takes one request from route `route`'s bucket for token `id`.
    #[inline]
    pub fn token(&self, g: &Gcra, route: usize, id: i64, now: u64) -> Result<Left, u64> {
        self.take(g, (route as u32, Kind::Token, id as u64), now)
    }

    /// Takes one request from route `route`'s bucket for all of `user`'s tokens together.
    #[inline]
    pub fn user(&self, g: &Gcra, route: usize, user: &str, now: u64) -> Result<Left, u64> {
        let key = (route as u32, Kind::User, self.users.hash_one(user));
        self.take(g, key, now)
    }

    fn take(&self, g: &Gcra, key: (u32, Kind, u64), now: u64) -> Result<Left, u64> {
        let map = self.map.pin();
        match map.get(&key) {
            Some(tat) => g.take(tat, now),
            // First request of this key (or since it went idle): one insert, not one per request.
            None => g.take(map.get_or_insert(key, AtomicU64::new(0)), now),
        }
    }

    /// Drops buckets that are full again (their state says nothing a fresh bucket would not).
    pub fn sweep(&self, now: u64) {
        self.map
            .pin()
            .retain(|_, tat| tat.load(Ordering::Relaxed) > now);
    }

    /// Forgets every bucket (a reload may change what the route indices mean).
    pub fn clear(&self) {
        self.map.pin().clear();
    }

    /// Buckets held (for tests and the bench).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn pack(period: i64, count: u64) -> u64 {
    ((period as u64) << COUNT_BITS) | (count & COUNT_MASK)
}

fn unpack(v: u64) -> (i64, u64) {
    ((v >> COUNT_BITS) as i64, v & COUNT_MASK)
}

/// A token's quota state on this node: the shared count as the store last reported it and this node's
/// unflushed accepted requests, each packed with its period's number.
#[derive(Debug)]
pub struct QuotaCount {
    pub quota: Quota,
    shared: AtomicU64,
    local: AtomicU64,
}

impl QuotaCount {
    /// A count starting from the store's `used` in period `period` (`None`: nothing used yet).
    pub fn new(quota: Quota, period: Option<i64>, used: u64) -> QuotaCount {
        QuotaCount {
            quota,
            shared: AtomicU64::new(pack(period.unwrap_or(0), used)),
            local: AtomicU64::new(0),
        }
    }

    fn in_period(v: u64, period: i64) -> u64 {
        match unpack(v) {
            (p, c) if p == period => c,
            _ => 0,
        }
    }

    /// Counts one accepted request at unix time `now`, unless the quota is used up. `Err`: seconds until
    /// the period ends.
    #[inline]
    pub fn take(&self, now: i64) -> Result<Left, u64> {
        let period = self.quota.period.index(now);
        let reset = (self.quota.period.start_of(period + 1) - now).max(1) as u64;
        let mut old = self.local.load(Ordering::Relaxed);
        loop {
            let shared = Self::in_period(self.shared.load(Ordering::Acquire), period);
            let local = Self::in_period(old, period);
            let used = shared + local;
            if used >= self.quota.count {
                return Err(reset);
            }
            match self.local.compare_exchange_weak(
                old,
                pack(period, local + 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Left {
                        remaining: self.quota.count - used - 1,
                        reset_secs: reset,
                    })
                }
                Err(now_there) => old = now_there,
            }
        }
    }

    /// This node's unflushed count and its period's start (unix seconds), for the usage flush.
    pub fn pending(&self) -> Option<(i64, u64)> {
        match unpack(self.local.load(Ordering::Acquire)) {
            (_, 0) => None,
            (p, n) => Some((self.quota.period.start_of(p), n)),
        }
    }

    /// After a flush of `sent` counts in the period starting at `period_start` that left the shared
    /// total at `total`: the total becomes the shared count and the sent counts leave the local one.
    pub fn settle(&self, period_start: i64, sent: u64, total: u64) {
        let period = self.quota.period.index(period_start);
        self.shared.store(pack(period, total), Ordering::Release);
        let _ = self
            .local
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| match unpack(v) {
                (p, n) if p == period => Some(pack(p, n.saturating_sub(sent))),
                _ => None,
            });
    }

    /// Used in the current period (shared + unflushed), and when the period ends.
    pub fn used(&self, now: i64) -> (u64, i64) {
        let period = self.quota.period.index(now);
        (
            Self::in_period(self.shared.load(Ordering::Acquire), period)
                + Self::in_period(self.local.load(Ordering::Acquire), period),
            self.quota.period.start_of(period + 1),
        )
    }

    /// Carries another count's unflushed requests over (a replaced entry).
    pub fn absorb(&self, other: &QuotaCount) {
        let (p, n) = unpack(other.local.swap(0, Ordering::AcqRel));
        if n > 0 {
            let _ =
                self.local
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| match unpack(v) {
                        (q, m) if q == p => Some(pack(q, m + n)),
                        (_, 0) => Some(pack(p, n)),
                        _ => None,
                    });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let g = Gcra::new(Rate::parse("10/s").unwrap(), 10);
        let tat = AtomicU64::new(0);
        let t0 = 100 * SEC;
        let ok = (0..50).filter(|_| g.take(&tat, t0).is_ok()).count();
        assert_eq!(ok, 10, "the burst");
        assert_eq!(g.take(&tat, t0), Err(1));
        // Over the next 2 s, at most 2 × 10 more (one per 100 ms).
        let mut more = 0;
        for ms in (1..=2000).step_by(1) {
            if g.take(&tat, t0 + ms * SEC / 1000).is_ok() {
                more += 1;
            }
        }
        assert_eq!(more, 20);
        let left = g.take(&tat, t0 + 10 * SEC).unwrap();
        assert_eq!(left.remaining, 9);
        assert_eq!(g.window_secs(), 1);
    }

    #[test]
    fn gcra_is_exact_under_contention() {
        let g = Arc::new(Gcra::new(Rate::parse("100/h").unwrap(), 50));
        let tat = Arc::new(AtomicU64::new(0));
        let now = 5 * SEC;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (g, tat) = (g.clone(), tat.clone());
                std::thread::spawn(move || (0..1000).filter(|_| g.take(&tat, now).is_ok()).count())
            })
            .collect();
        let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(ok, 50);
        let wait = g.take(&tat, now).unwrap_err();
        assert_eq!(wait, 36, "one request per 36 s at 100/h");
    }

    #[test]
    fn limiters_are_per_route_token_and_user_and_idle_ones_go() {
        let l = Limiters::default();
        let g = Gcra::new(Rate::parse("1/s").unwrap(), 1);
        let now = 10 * SEC;
        assert!(l.token(&g, 0, 1, now).is_ok());
        assert!(l.token(&g, 0, 1, now).is_err());
        assert!(l.token(&g, 1, 1, now).is_ok(), "another route");
        assert!(l.token(&g, 0, 2, now).is_ok(), "another token");
        assert!(l.user(&g, 0, "alice", now).is_ok());
        assert!(l.user(&g, 0, "alice", now).is_err());
        assert!(l.user(&g, 0, "bob", now).is_ok());
        assert_eq!(l.len(), 5);
        l.sweep(now);
        assert_eq!(l.len(), 5, "still owed");
        l.sweep(now + 2 * SEC);
        assert!(l.is_empty(), "full buckets are dropped");
        assert!(l.token(&g, 0, 1, now + 2 * SEC).is_ok());
    }

    #[test]
    fn quota_is_exact_and_settles_with_the_shared_count() {
        let q = Quota::parse("100/day").unwrap();
        let now = 1_795_386_600;
        let day = q.period.index(now);
        let count = Arc::new(QuotaCount::new(q, Some(day), 30));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = count.clone();
                std::thread::spawn(move || (0..100).filter(|_| c.take(now).is_ok()).count())
            })
            .collect();
        let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(ok, 70, "exactly the 70 left");
        let reset = count.take(now).unwrap_err();
        assert_eq!(reset as i64, q.period.start_of(day + 1) - now);
        assert_eq!(count.used(now).0, 100);
        // The flush sends 70; another node had added 5: the store says 105.
        let (start, n) = count.pending().unwrap();
        assert_eq!((start, n), (q.period.start_of(day), 70));
        count.settle(start, n, 105);
        assert_eq!(count.pending(), None);
        assert_eq!(count.used(now).0, 105);
        // A new day starts from zero.
        let tomorrow = q.period.start_of(day + 1) + 5;
        assert_eq!(count.take(tomorrow).unwrap().remaining, 99);
        assert_eq!(count.used(tomorrow).0, 1);
    }
}

//! The routes' rate limits, decided in memory before a request is forwarded, with no lock per request:
//! [`Limiters`] holds the per-(route, token) and per-(route, user) buckets of `rate_limit` and
//! `user_rate_limit` in a lock-free map. A bucket that is full again (idle) is the same as no bucket, so
//! [`Limiters::sweep`] drops them and idle keys cost nothing. A token's own rate limit and quota live in
//! its index entry (`tokens::index::TokenLimits`); the primitives are in [`crate::limiter`].
//!
//! Cross-node truth, said plainly: rates are enforced per node (N nodes let through up to N times a
//! rate); quotas are enforced against the shared count with at most one flush interval of other nodes'
//! traffic of overshoot per node.

pub use crate::limiter::{Gcra, Left, QuotaCount};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    const SEC: u64 = 1_000_000_000;

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
}

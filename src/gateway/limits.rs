//! The routes' rate limits, decided in memory before a request is forwarded, with no lock per request:
//! [`Limiters`] holds the per-(route, token) and per-(route, user) buckets of `rate_limit` and
//! `user_rate_limit` in a lock-free map. A bucket that is full again (idle) is the same as no bucket, so
//! [`Limiters::sweep`] drops them and idle keys cost nothing. A token's own rate limit and quota live in
//! its index entry (`tokens::index::TokenLimits`); the primitives are in [`crate::limiter`].
//!
//! Cross-node truth, said plainly: rates are enforced per node (N nodes let through up to N times a
//! rate); quotas are enforced against the shared count with at most one flush interval of other nodes'
//! traffic of overshoot per node (their flushed counts reach every node through the store's quota feed
//! within the sync delay, see `tokens::store::quota_feed`).

pub use crate::limiter::{Gcra, Left, QuotaCount};
use crate::tokens::fields::Period;
use crate::tokens::index::Entry;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// A route's limits: `rate_limit` (with `rate_burst`), `user_rate_limit` and `rate_limit_headers`.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    /// A bucket per token on this route.
    pub token_rate: Option<Gcra>,
    /// A bucket per user on this route (all their tokens together).
    pub user_rate: Option<Gcra>,
    /// `RateLimit` on answers within the limits too.
    pub headers: bool,
}

impl RouteLimits {
    /// Whether the route limits anything itself.
    #[inline]
    pub fn any(&self) -> bool {
        self.token_rate.is_some() || self.user_rate.is_some()
    }
}

/// The limit a 429 came from, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The token's own rate limit or the route's per-token one.
    Rate,
    /// The route's per-user rate limit.
    UserRate,
    Quota,
    /// `max_in_flight_per_token`: the token's requests and tunnels open at once.
    InFlight,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Rate,
        LimitKind::UserRate,
        LimitKind::Quota,
        LimitKind::InFlight,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Rate => "rate",
            LimitKind::UserRate => "user_rate",
            LimitKind::Quota => "quota",
            LimitKind::InFlight => "in_flight",
        }
    }
}

/// A request over a limit: which one, the seconds until a retry can pass (at least 1), and the
/// `RateLimit-Policy` and `RateLimit` values of the answer (draft-ietf-httpapi-ratelimit-headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    pub kind: LimitKind,
    pub retry_after: u64,
    pub policy: String,
    pub remaining: String,
}

/// One limit that applied to a request: its name in the `RateLimit` fields, its size (`q`) and window
/// (`w`, seconds), and what it said.
#[derive(Clone, Copy)]
struct Applied {
    name: &'static str,
    quota: u64,
    window: u64,
    left: Left,
}

/// Takes one request from every limit that applies to `entry` on route `route` (index `route`), in
/// order: the token's own rate, the route's per-token rate, the route's per-user rate, and last the
/// token's quota (so that a request refused by a rate does not spend quota). `now`: unix seconds;
/// `mono`: monotonic nanoseconds. `Ok(Some(field))`: the `RateLimit` value for the response, when the
/// route asks for it.
pub fn check(
    limiters: &Limiters,
    route: usize,
    limits: &RouteLimits,
    entry: &Entry,
    now: u64,
    mono: u64,
) -> Result<Option<RateLimitField>, Over> {
    let own = entry.limits.as_deref();
    let own_rate = own.and_then(|l| Some((Gcra::new(l.rate?, l.rate?.one_second()), &l.tat)));
    let mut applied: [Option<Applied>; 4] = [None; 4];
    let mut n = 0;
    let rates = [
        own_rate.map(|(g, tat)| ("token", g, LimitKind::Rate, g.take(tat, mono))),
        limits.token_rate.map(|g| {
            let result = limiters.token(&g, route, entry.token_id, mono);
            ("route", g, LimitKind::Rate, result)
        }),
        limits.user_rate.map(|g| {
            let result = limiters.user(&g, route, entry.user(), mono);
            ("user", g, LimitKind::UserRate, result)
        }),
    ];
    // Each bucket is only asked once the ones before it said yes (a refused request costs no later one).
    for (name, g, kind, result) in rates.into_iter().flatten() {
        let (quota, window) = (g.burst, g.window_secs());
        match result {
            Ok(left) => {
                applied[n] = Some(Applied {
                    name,
                    quota,
                    window,
                    left,
                });
                n += 1;
            }
            Err(wait) => return Err(over(kind, wait, (name, quota, window), &applied[..n])),
        }
    }
    if let Some(qc) = own.and_then(|l| l.quota.as_ref()) {
        let window = match qc.quota.period {
            Period::Day => 86_400,
            Period::Month => 2_592_000,
        };
        match qc.take(now as i64) {
            Ok(left) => {
                applied[n] = Some(Applied {
                    name: "quota",
                    quota: qc.quota.count,
                    window,
                    left,
                });
                n += 1;
            }
            Err(reset) => {
                let passed = &applied[..n];
                return Err(over(
                    LimitKind::Quota,
                    reset,
                    ("quota", qc.quota.count, window),
                    passed,
                ));
            }
        }
    }
    Ok(limits.headers.then(|| remaining_field(&applied[..n])))
}

/// `RateLimit: "route";r=4;t=1, "quota";r=99;t=3600`.
fn remaining_field(applied: &[Option<Applied>]) -> RateLimitField {
    let mut field = RateLimitField::default();
    for a in applied.iter().flatten() {
        field.push(a.name, a.left);
    }
    field
}

/// The answer's facts for a request over the limit `name` (size `quota`, `window` seconds), after it
/// passed the limits in `passed`.
fn over(
    kind: LimitKind,
    retry_after: u64,
    (name, quota, window): (&'static str, u64, u64),
    passed: &[Option<Applied>],
) -> Over {
    let retry_after = retry_after.max(1);
    let mut policy: Vec<String> = passed
        .iter()
        .flatten()
        .map(|a| format!("\"{}\";q={};w={}", a.name, a.quota, a.window))
        .collect();
    policy.push(format!("\"{name}\";q={quota};w={window}"));
    let mut remaining = remaining_field(passed);
    remaining.push(
        name,
        Left {
            remaining: 0,
            reset_secs: retry_after,
        },
    );
    Over {
        kind,
        retry_after,
        policy: policy.join(", "),
        remaining: remaining.to_string(),
    }
}

/// What is left of the limits a forwarded request passed, for the response's `RateLimit` field
/// (`"name";r=REMAINING;t=SECONDS`, comma-separated). Plain data, written straight into the response head:
/// no allocation per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitField {
    items: [Option<(&'static str, Left)>; 4],
}

impl RateLimitField {
    /// Appends one limit's remainder (at most four: the token's rate, the route's two, the quota).
    pub fn push(&mut self, name: &'static str, left: Left) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some((name, left));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }
}

impl std::fmt::Display for RateLimitField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, left)) in self.items.iter().flatten().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{name}\";r={};t={}", left.remaining, left.reset_secs)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;
    use crate::tokens::fields::Quota;
    use crate::tokens::format::Token;
    use crate::tokens::index::Index;
    use crate::tokens::store::IndexRow;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;
    /// 2026-12-01T12:00:00Z: twelve hours before the day's quota period ends.
    const NOW: u64 = 1_796_126_400;
    const MONO: u64 = 100 * SEC;

    /// An entry for token `id` of `user` with its own `rate` and `quota` (either may be absent).
    fn entry(id: i64, user: &str, rate: Option<&str>, quota: Option<&str>) -> Arc<Entry> {
        let index = Index::new();
        let t = Token::generate();
        index.apply(&IndexRow {
            id,
            user: user.into(),
            digest: t.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: vec![],
            expires_at: None,
            revoked: false,
            rev: 1,
            bound_cert: None,
            rate_limit: rate.map(|r| Rate::parse(r).unwrap()),
            quota: quota.map(|q| Quota::parse(q).unwrap()),
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        });
        index.get(&t.digest()).unwrap().entry
    }

    fn route(token: Option<&str>, user: Option<&str>, headers: bool) -> RouteLimits {
        let gcra = |r: &str| {
            let r = Rate::parse(r).unwrap();
            Gcra::new(r, r.one_second())
        };
        RouteLimits {
            token_rate: token.map(gcra),
            user_rate: user.map(gcra),
            headers,
        }
    }

    /// How many of `n` requests at one instant pass.
    fn passed(l: &Limiters, r: &RouteLimits, e: &Entry, n: usize) -> usize {
        (0..n)
            .filter(|_| check(l, 0, r, e, NOW, MONO).is_ok())
            .count()
    }

    #[test]
    fn nothing_to_limit_says_nothing() {
        let l = Limiters::default();
        let e = entry(1, "alice", None, None);
        assert!(!route(None, None, true).any());
        assert_eq!(
            check(&l, 0, &route(None, None, false), &e, NOW, MONO),
            Ok(None)
        );
        assert_eq!(passed(&l, &route(None, None, false), &e, 1000), 1000);
        assert!(l.is_empty(), "no bucket was made");
    }

    #[test]
    fn a_token_s_own_rate_refuses_with_its_policy() {
        let l = Limiters::default();
        let e = entry(1, "alice", Some("2/s"), None);
        let r = route(None, None, false);
        assert_eq!(passed(&l, &r, &e, 2), 2, "one second's worth of burst");
        let over = check(&l, 0, &r, &e, NOW, MONO).unwrap_err();
        assert_eq!(over.kind, LimitKind::Rate);
        assert_eq!(over.retry_after, 1);
        assert_eq!(over.policy, "\"token\";q=2;w=1");
        assert_eq!(over.remaining, "\"token\";r=0;t=1");
        assert!(
            check(&l, 0, &r, &e, NOW, MONO + SEC / 2).is_ok(),
            "refilled at 2/s"
        );
    }

    #[test]
    fn the_stricter_of_the_token_s_and_the_route_s_rate_wins() {
        let l = Limiters::default();
        let strict_token = entry(1, "alice", Some("1/s"), None);
        let loose_route = route(Some("5/s"), None, false);
        assert_eq!(passed(&l, &loose_route, &strict_token, 10), 1);
        let loose_token = entry(2, "alice", Some("100/s"), None);
        let strict_route = route(Some("3/s"), None, false);
        assert_eq!(passed(&l, &strict_route, &loose_token, 10), 3);
        let over = check(&l, 0, &strict_route, &loose_token, NOW, MONO).unwrap_err();
        assert_eq!(over.kind, LimitKind::Rate);
        // The limits passed before the one that refused are named too.
        assert_eq!(over.policy, "\"token\";q=100;w=1, \"route\";q=3;w=1");
        assert!(
            over.remaining.ends_with("\"route\";r=0;t=1"),
            "{}",
            over.remaining
        );
        // Buckets are per route: route 1 has its own for the same token.
        assert!(check(&l, 1, &strict_route, &loose_token, NOW, MONO).is_ok());
    }

    #[test]
    fn a_user_rate_counts_all_their_tokens_and_no_one_else_s() {
        let l = Limiters::default();
        let r = route(None, Some("4/s"), false);
        let (a1, a2, b) = (
            entry(1, "alice", None, None),
            entry(2, "alice", None, None),
            entry(3, "bob", None, None),
        );
        assert_eq!(passed(&l, &r, &a1, 3) + passed(&l, &r, &a2, 3), 4);
        let over = check(&l, 0, &r, &a2, NOW, MONO).unwrap_err();
        assert_eq!(over.kind, LimitKind::UserRate);
        assert_eq!(passed(&l, &r, &b, 5), 4, "bob has his own bucket");
    }

    #[test]
    fn a_quota_takes_exactly_its_count_and_is_not_spent_by_rate_refusals() {
        let l = Limiters::default();
        let e = entry(1, "alice", None, Some("3/day"));
        let r = route(Some("2/s"), None, false);
        assert_eq!(passed(&l, &r, &e, 5), 2, "the rate refuses the rest");
        let over = check(&l, 0, &r, &e, NOW, MONO).unwrap_err();
        assert_eq!(
            over.kind,
            LimitKind::Rate,
            "refused by the rate, not the quota"
        );
        let used = e.limits.as_ref().unwrap().quota.as_ref().unwrap();
        assert_eq!(
            used.take(NOW as i64).unwrap().remaining,
            0,
            "only 2 of 3 were spent"
        );
        let over = check(&l, 0, &r, &e, NOW, MONO + 10 * SEC).unwrap_err();
        assert_eq!(over.kind, LimitKind::Quota);
        assert_eq!(over.retry_after, 12 * 3600, "until the day (UTC) ends");
        assert!(
            over.policy.ends_with("\"quota\";q=3;w=86400"),
            "{}",
            over.policy
        );
        // The next day the quota is whole again.
        assert!(check(&l, 0, &r, &e, NOW + 12 * 3600, MONO + 20 * SEC).is_ok());
    }

    #[test]
    fn headers_list_what_is_left_of_every_limit_passed() {
        let l = Limiters::default();
        let e = entry(1, "alice", Some("10/s"), Some("100/month"));
        // The quota resets at the start of January: 30.5 days from noon on 1 December.
        let field = check(
            &l,
            0,
            &route(Some("5/s"), Some("20/s"), true),
            &e,
            NOW,
            MONO,
        )
        .unwrap()
        .expect("rate_limit_headers asks for the field");
        assert_eq!(
            field.to_string(),
            "\"token\";r=9;t=1, \"route\";r=4;t=1, \"user\";r=19;t=1, \"quota\";r=99;t=2635200"
        );
        let quiet = check(&l, 0, &route(Some("5/s"), None, false), &e, NOW, MONO).unwrap();
        assert_eq!(
            quiet, None,
            "without rate_limit_headers nothing is formatted"
        );
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
}

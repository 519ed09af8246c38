//! A route's servers and the choice among them, per request: `round_robin` (each in turn),
//! `least_requests` (fewest in flight) or `user_hash` (rendezvous hashing of the user id: the same user
//! to the same server while the set is stable, and only the users of a server that leaves move). Only
//! servers in rotation are chosen; a pool of one costs one atomic load.
//!
//! Rotation: a server that refuses a connection (or times out, or fails its TLS handshake) before any
//! byte of a request went out is taken out at once ([`Pool::failed`]) and its idle connections are
//! closed; the request moves on to the next server. It comes back when the active checks
//! (`transport::health`) see it healthy `healthy_after` times in a row, or — without checks — when one
//! request, let through every `interval`, finds it accepting connections again ([`Pool::connected`]).
//! With every server out, [`Pool::pick`] says so at once (502 `no_healthy_upstream`, no connect storm).
//!
//! Why not `pingora-load-balancing`: its `select` builds a `HashSet` and hashes backends with SipHash on
//! every call, it has no least-requests selection (0.9), no passive marking, and its HTTP check speaks
//! through pingora's own connectors, which this engine does not use. What is here is small and
//! allocation-free per request.

use super::upstream::Upstream;
use crate::config::{Balance, HealthCheckConfig};
use crate::telemetry::metrics::ServerMetrics;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One server of the pool, with what the health checker keeps about it.
pub struct Member {
    pub upstream: Arc<Upstream>,
    pub metrics: ServerMetrics,
    /// The server's rendezvous-hash seed (from its label: every gateway of a fleet agrees).
    seed: u64,
    /// Monotonic ns of the next active check, and whether one is running.
    pub next_check: AtomicU64,
    pub probing: AtomicBool,
    /// Monotonic ns of the next re-resolution of its host name.
    pub next_resolve: AtomicU64,
    /// Monotonic ns of the next sweep of its idle connections ([`Upstream::reap_idle`]).
    pub next_reap: AtomicU64,
}

/// A route's servers and how one is chosen.
pub struct Pool {
    pub route: String,
    pub members: Vec<Member>,
    pub balance: Balance,
    /// The round-robin cursor (also where `least_requests` starts looking, so ties alternate).
    next: AtomicUsize,
    /// Servers out of rotation (none: no work beyond one load per pick).
    down: AtomicUsize,
    /// Active checks; `None`: servers out of rotation are retried by one request every `retry_after`.
    pub check: Option<HealthCheckConfig>,
    pub retry_after: Duration,
    pub resolve_interval: Duration,
}

/// Counts a request in flight to a server (for `least_requests`) until dropped.
pub struct InFlight<'a>(Option<&'a AtomicUsize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Pool {
    pub fn new(
        route: &str,
        servers: Vec<(Arc<Upstream>, ServerMetrics)>,
        balance: Balance,
        check: Option<HealthCheckConfig>,
        resolve_interval: Duration,
    ) -> Pool {
        let mut down = 0;
        let members = servers
            .into_iter()
            .map(|(upstream, metrics)| {
                let is_down = upstream.health.down.load(Ordering::Relaxed);
                down += usize::from(is_down);
                metrics.up.set(i64::from(!is_down));
                Member {
                    seed: fnv1a(upstream.label.as_bytes()),
                    upstream,
                    metrics,
                    next_check: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                    next_resolve: AtomicU64::new(0),
                    next_reap: AtomicU64::new(0),
                }
            })
            .collect();
        Pool {
            route: route.to_owned(),
            members,
            balance,
            next: AtomicUsize::new(0),
            down: AtomicUsize::new(down),
            retry_after: check
                .as_ref()
                .map_or(Duration::from_secs(2), |c| c.interval),
            check,
            resolve_interval,
        }
    }

    /// What `user_hash` hashes for a request of `user` (`None` for other balances, and on public routes).
    #[inline]
    pub fn user_key(&self, user: Option<&str>) -> Option<u64> {
        match (self.balance, user) {
            (Balance::UserHash, Some(u)) if self.members.len() > 1 => Some(fnv1a(u.as_bytes())),
            _ => None,
        }
    }

    /// The server for a request whose [`Self::user_key`] is `user`, skipping those in `tried` (bit i:
    /// server i). `None`: no server in rotation is left to try.
    #[inline]
    pub fn pick(&self, user: Option<u64>, tried: u64) -> Option<usize> {
        let n = self.members.len();
        if self.down.load(Ordering::Relaxed) == 0 && n == 1 {
            return (tried == 0).then_some(0);
        }
        if self.down.load(Ordering::Relaxed) > 0 {
            if let Some(i) = self.trial(tried) {
                return Some(i);
            }
        }
        let open = |i: usize| tried & (1 << i) == 0 && self.in_rotation(i);
        match (self.balance, user) {
            (Balance::UserHash, Some(h)) => (0..n)
                .filter(|&i| open(i))
                .max_by_key(|&i| mix(h ^ self.members[i].seed)),
            (Balance::LeastRequests, _) => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| open(i))
                    .min_by_key(|&i| {
                        self.members[i]
                            .upstream
                            .health
                            .in_flight
                            .load(Ordering::Relaxed)
                    })
            }
            _ => {
                // A server out of rotation costs a step of the cursor, not its turn to its neighbour
                // (which would then get twice the share).
                (0..n)
                    .map(|_| self.next.fetch_add(1, Ordering::Relaxed) % n)
                    .find(|&i| open(i))
                    .or_else(|| (0..n).find(|&i| open(i)))
            }
        }
    }

    fn in_rotation(&self, i: usize) -> bool {
        !self.members[i].upstream.health.down.load(Ordering::Relaxed)
    }

    /// Without active checks: a server out of rotation whose `retry_after` has passed, claimed for this
    /// one request (others keep skipping it until it connects or the next interval).
    fn trial(&self, tried: u64) -> Option<usize> {
        if self.check.is_some() {
            return None;
        }
        let now = crate::clock::mono_nanos();
        let retry = self.retry_after.as_nanos() as u64;
        (0..self.members.len()).find(|&i| {
            let h = &self.members[i].upstream.health;
            if tried & (1 << i) != 0 || !h.down.load(Ordering::Relaxed) {
                return false;
            }
            let due = h.retry_at.load(Ordering::Relaxed);
            now >= due
                && h.retry_at
                    .compare_exchange(due, now + retry, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Counts a request to server `i`; for `least_requests` it is in flight until the guard drops.
    #[inline]
    pub fn begin(&self, i: usize) -> InFlight<'_> {
        let m = &self.members[i];
        m.metrics.requests.inc();
        if self.balance == Balance::LeastRequests {
            let n = &m.upstream.health.in_flight;
            n.fetch_add(1, Ordering::Relaxed);
            InFlight(Some(n))
        } else {
            InFlight(None)
        }
    }

    /// Server `i` refused, reset or timed out before any byte of a request went out: out of rotation at
    /// once.
    pub fn failed(&self, i: usize, why: &str) {
        self.members[i].metrics.failures.inc();
        // As nginx does: a lone server without checks is never taken out (there is nowhere else to go,
        // and every request trying it is the fastest way to notice it is back).
        if self.members.len() > 1 || self.check.is_some() {
            self.take_out(i, why);
        }
    }

    /// A connection to server `i` was made: back in rotation if a failure had taken it out (and no
    /// active checks decide instead).
    #[inline]
    pub fn connected(&self, i: usize) {
        if self.check.is_none() && self.members[i].upstream.health.down.load(Ordering::Relaxed) {
            self.put_back(i, "it accepts connections again");
        }
    }

    /// Records one active check of server `i`.
    pub fn checked(&self, i: usize, result: Result<(), String>) {
        let Some(check) = &self.check else { return };
        let m = &self.members[i];
        let h = &m.upstream.health;
        match result {
            Ok(()) => {
                m.metrics.checks_ok.inc();
                h.fails.store(0, Ordering::Relaxed);
                let oks = h.oks.fetch_add(1, Ordering::Relaxed) + 1;
                if h.down.load(Ordering::Relaxed) && oks >= check.healthy_after {
                    self.put_back(i, &format!("{oks} health checks passed"));
                }
            }
            Err(why) => {
                m.metrics.checks_failed.inc();
                h.oks.store(0, Ordering::Relaxed);
                let fails = h.fails.fetch_add(1, Ordering::Relaxed) + 1;
                if !h.down.load(Ordering::Relaxed) && fails >= check.unhealthy_after {
                    self.take_out(i, &format!("{fails} health checks failed, the last: {why}"));
                }
            }
        }
    }

    fn take_out(&self, i: usize, why: &str) {
        let m = &self.members[i];
        let h = &m.upstream.health;
        h.oks.store(0, Ordering::Relaxed);
        h.retry_at.store(
            crate::clock::mono_nanos() + self.retry_after.as_nanos() as u64,
            Ordering::Relaxed,
        );
        if !h.down.swap(true, Ordering::Relaxed) {
            self.down.fetch_add(1, Ordering::Relaxed);
            m.metrics.up.set(0);
            m.upstream.drop_idle();
            log::warn!(
                "route {}: server {} out of rotation: {why}",
                self.route,
                m.upstream.label
            );
        }
    }

    fn put_back(&self, i: usize, why: &str) {
        let m = &self.members[i];
        let h = &m.upstream.health;
        h.fails.store(0, Ordering::Relaxed);
        if h.down.swap(false, Ordering::Relaxed) {
            self.down.fetch_sub(1, Ordering::Relaxed);
            m.metrics.up.set(1);
            log::info!(
                "route {}: server {} back in rotation: {why}",
                self.route,
                m.upstream.label
            );
        }
    }

    /// Whether at least one server is in rotation.
    pub fn any_up(&self) -> bool {
        self.down.load(Ordering::Relaxed) < self.members.len()
    }

    /// The servers as `GET /api/routes` shows them: address, state, requests in flight.
    pub fn servers_json(&self) -> Vec<serde_json::Value> {
        self.members
            .iter()
            .map(|m| {
                let h = &m.upstream.health;
                serde_json::json!({
                    "server": m.upstream.label,
                    "address": m.upstream.addr().to_string(),
                    "state": if h.down.load(Ordering::Relaxed) { "down" } else { "up" },
                    "in_flight": h.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

/// How often a server's idle connections are swept: a quarter of `idle_timeout`, between 10 ms and 1 s.
/// A connection is then closed at most this long after its `idle_timeout`, or after the server closed
/// it; a sweep of a full queue (1,024) costs well under a millisecond.
pub fn reap_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// FNV-1a, 64 bits: a hash every gateway computes alike (no per-process key), so a fleet sends a user
/// to the same server from every node.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads a combined key over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;
    use crate::transport::upstream::Timeouts;

    fn pool(n: usize, balance: Balance, check: Option<HealthCheckConfig>) -> Pool {
        let metrics = Metrics::new();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            write: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        };
        let servers = (0..n)
            .map(|i| {
                let label = format!("10.0.0.{i}:80");
                let up = Upstream::new(&label, &label, label.parse().unwrap(), None, &t);
                (Arc::new(up), metrics.server("r", &label))
            })
            .collect();
        Pool::new("r", servers, balance, check, Duration::from_secs(30))
    }

    fn check() -> HealthCheckConfig {
        HealthCheckConfig {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }

    fn counts(p: &Pool, picks: usize, user: impl Fn(usize) -> Option<String>) -> Vec<usize> {
        let mut c = vec![0; p.members.len()];
        for k in 0..picks {
            c[p.pick(p.user_key(user(k).as_deref()), 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn idle_connections_are_swept_every_quarter_idle_timeout_between_10_ms_and_1_s() {
        assert_eq!(
            reap_interval(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            reap_interval(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            reap_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            reap_interval(Duration::from_millis(20)),
            Duration::from_millis(10)
        );
        assert_eq!(reap_interval(Duration::ZERO), Duration::from_millis(10));
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_skips_what_is_out() {
        let p = pool(3, Balance::RoundRobin, None);
        assert_eq!(counts(&p, 999, |_| None), [333, 333, 333]);
        p.failed(1, "refused");
        assert!(p.any_up());
        assert_eq!(counts(&p, 1000, |_| None), [500, 0, 500]);
        assert_eq!(p.pick(None, 0b101), None, "the rest were tried");
        let p = pool(1, Balance::RoundRobin, None);
        assert_eq!(p.pick(None, 0), Some(0));
        assert_eq!(p.pick(None, 1), None);
        p.failed(0, "refused");
        assert_eq!(
            p.pick(None, 0),
            Some(0),
            "a lone server without checks stays in rotation"
        );
    }

    #[test]
    fn least_requests_prefers_the_server_with_fewest_in_flight() {
        let p = pool(3, Balance::LeastRequests, None);
        let _slow = [p.begin(0), p.begin(0), p.begin(2)];
        assert_eq!(p.pick(None, 0), Some(1));
        let g = p.begin(1);
        let _h = p.begin(1);
        assert_eq!(p.pick(None, 0), Some(2), "0 and 1 have two, 2 has one");
        drop(g);
        // Ties alternate.
        let p = pool(2, Balance::LeastRequests, None);
        assert_eq!(counts(&p, 100, |_| None), [50, 50]);
    }

    #[test]
    fn user_hash_keeps_users_and_moves_only_those_of_a_server_that_leaves() {
        let p = pool(4, Balance::UserHash, None);
        let users: Vec<String> = (0..4000).map(|i| format!("user{i}")).collect();
        let before: Vec<usize> = users
            .iter()
            .map(|u| p.pick(p.user_key(Some(u)), 0).unwrap())
            .collect();
        let again: Vec<usize> = users
            .iter()
            .map(|u| p.pick(p.user_key(Some(u)), 0).unwrap())
            .collect();
        assert_eq!(before, again, "stable while the set is");
        let mut per = [0usize; 4];
        for &s in &before {
            per[s] += 1;
        }
        assert!(per.iter().all(|&c| (800..1200).contains(&c)), "{per:?}");
        p.failed(2, "refused");
        let after: Vec<usize> = users
            .iter()
            .map(|u| p.pick(p.user_key(Some(u)), 0).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, per[2], "only the users of the server that left move");
        assert!(after.iter().all(|&s| s != 2));
        // Without a user (a public route), round robin.
        assert_eq!(
            counts(&p, 300, |_| None).iter().filter(|&&c| c > 0).count(),
            3
        );
    }

    #[test]
    fn without_checks_one_request_per_interval_tries_a_server_that_failed() {
        let mut p = pool(2, Balance::RoundRobin, None);
        p.retry_after = Duration::from_millis(30);
        p.failed(0, "refused");
        assert!(p.members[0].upstream.health.down.load(Ordering::Relaxed));
        assert_eq!(counts(&p, 10, |_| None), [0, 10]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.pick(None, 0), Some(0), "the trial");
        assert_eq!(p.pick(None, 0), Some(1), "one trial per interval");
        p.connected(0);
        assert!(p.any_up() && !p.members[0].upstream.health.down.load(Ordering::Relaxed));
        assert_eq!(counts(&p, 10, |_| None), [5, 5]);
    }

    #[test]
    fn all_out_is_said_at_once_and_a_trial_brings_the_route_back() {
        let mut p = pool(2, Balance::RoundRobin, None);
        p.retry_after = Duration::from_millis(30);
        p.failed(0, "refused");
        p.failed(1, "refused");
        assert!(!p.any_up());
        assert_eq!(p.pick(None, 0), None);
        std::thread::sleep(Duration::from_millis(40));
        let trial = p.pick(None, 0).expect("a trial once the interval passed");
        p.connected(trial);
        assert!(p.any_up());
    }

    #[test]
    fn active_checks_take_out_and_bring_back_after_their_thresholds() {
        let p = pool(2, Balance::RoundRobin, Some(check()));
        p.checked(0, Err("status 503".into()));
        assert!(
            p.any_up() && p.pick(None, 0b10) == Some(0),
            "one failure is not enough"
        );
        p.checked(0, Err("status 503".into()));
        assert_eq!(p.pick(None, 0b10), None, "two are");
        assert_eq!(p.members[0].metrics.up.get(), 0);
        p.connected(0); // a connection alone does not overrule the checks
        assert_eq!(p.pick(None, 0b10), None);
        p.checked(0, Ok(()));
        assert_eq!(p.pick(None, 0b10), None);
        p.checked(0, Ok(()));
        assert_eq!(p.pick(None, 0b10), Some(0));
        assert_eq!(p.members[0].metrics.up.get(), 1);
        // A passive failure takes it out at once; the checks bring it back.
        p.failed(0, "refused");
        assert_eq!(p.pick(None, 0b10), None);
        p.checked(0, Ok(()));
        p.checked(0, Ok(()));
        assert_eq!(p.pick(None, 0b10), Some(0));
    }
}

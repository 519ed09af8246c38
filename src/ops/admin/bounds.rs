//! What a self-service caller may spend: writes per user (`[admin] self_service_rate`, a GCRA bucket per
//! user with one period's worth of burst, at most 60) and active tokens per user
//! (`[admin] max_tokens_per_user`, checked by the API's create). Low privilege must not buy memory or
//! store rows without bound; admins and the CLI are not limited here.

use crate::config::Rate;
use crate::limiter::Gcra;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Users tracked before full buckets are swept (a full bucket is the same as no entry).
const SWEEP_AT: usize = 10_000;

/// Self-service writes per user.
pub struct WriteBudget {
    gcra: Gcra,
    buckets: Mutex<HashMap<String, AtomicU64>>,
}

impl WriteBudget {
    pub fn new(rate: Rate) -> WriteBudget {
        let burst = u64::from(rate.count).min(60);
        WriteBudget {
            gcra: Gcra::new(rate, burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one write for `user` at monotonic time `now` (ns). `Err`: seconds until one is allowed.
    pub fn take(&self, user: &str, now: u64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(user) {
            // A bucket whose theoretical arrival time has passed is full: forgetting it changes nothing.
            buckets.retain(|_, tat| *tat.get_mut() > now);
        }
        let tat = buckets
            .entry(user.to_owned())
            .or_insert_with(|| AtomicU64::new(0));
        self.gcra.take(tat, now).map(|_| ())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_rate_per_user() {
        let b = WriteBudget::new(Rate::parse("3/m").unwrap());
        let t0 = 1_000 * SEC;
        for _ in 0..3 {
            assert_eq!(b.take("alice", t0), Ok(()));
        }
        let wait = b.take("alice", t0).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        // Another user has its own bucket.
        assert_eq!(b.take("bob", t0), Ok(()));
        assert_eq!(b.take("alice", t0 + 20 * SEC), Ok(()));
        assert!(b.take("alice", t0 + 20 * SEC).is_err());
    }

    #[test]
    fn the_burst_is_at_most_sixty() {
        let b = WriteBudget::new(Rate::parse("1000/s").unwrap());
        let ok = (0..100).filter(|_| b.take("a", SEC).is_ok()).count();
        assert_eq!(ok, 60);
    }

    #[test]
    fn full_buckets_are_swept() {
        let b = WriteBudget::new(Rate::parse("60/m").unwrap());
        for i in 0..SWEEP_AT {
            b.take(&format!("u{i}"), SEC).unwrap();
        }
        assert_eq!(b.tracked(), SWEEP_AT);
        // Two seconds on, every bucket that took one write is full again.
        b.take("newcomer", 3 * SEC).unwrap();
        assert_eq!(b.tracked(), 1);
    }
}

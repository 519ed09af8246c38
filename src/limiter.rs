//! Limiter primitives, with no policy: a rate bucket ([`Gcra`], the generic cell rate algorithm: one
//! "theoretical arrival time" per key in an `AtomicU64`, advanced by compare-and-swap) and a quota
//! counter ([`QuotaCount`]: the shared count of a calendar period plus this node's unflushed part, checked
//! and incremented in one CAS). Both are exact under any concurrency on one node and take no lock.
//! Which buckets exist and which requests they count is the gateway's business (`gateway::limits`); a
//! token's own limits live in its index entry.

use crate::config::Rate;
use std::sync::atomic::{AtomicU64, Ordering};

/// A rate with a burst, in nanoseconds: one request costs `emission`; up to `tolerance` may be owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
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
        let emission = rate.per_secs as u64 * 1_000_000_000 / rate.count as u64;
        let burst = burst.max(1);
        Gcra {
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

/// How far ahead of this node's clock a reported quota period may start (clocks a little apart at the
/// turn of a period).
pub const FUTURE_SLACK: i64 = 3600;

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

    /// This node's unflushed count with its period's start and the next period's (unix seconds), for
    /// the usage flush: `(start, end, count)`.
    pub fn pending(&self) -> Option<(i64, i64, u64)> {
        match unpack(self.local.load(Ordering::Acquire)) {
            (_, 0) => None,
            (p, n) => Some((
                self.quota.period.start_of(p),
                self.quota.period.start_of(p + 1),
                n,
            )),
        }
    }

    /// The shared count the store reported, at unix time `now`, for the period starting at
    /// `period_start` (a flush's answer, or another node's flush carried by the quota feed). Shared
    /// counts only grow within a period and a later period replaces an earlier one, so reports may arrive
    /// in any order: an older one (a lower total, an earlier period) changes nothing. A report for a
    /// period that starts more than [`FUTURE_SLACK`] after `now` is ignored: taken, it would hide the
    /// current period's count until then (a node whose clock is far ahead, or a forged row).
    pub fn observe(&self, period_start: i64, total: u64, now: i64) {
        if period_start > now.saturating_add(FUTURE_SLACK) {
            return;
        }
        self.raise(period_start, total);
    }

    fn raise(&self, period_start: i64, total: u64) {
        let period = self.quota.period.index(period_start);
        let total = total.min(COUNT_MASK);
        let _ = self
            .shared
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| match unpack(v) {
                (p, c) if p > period || (p == period && c >= total) => None,
                _ => Some(pack(period, total)),
            });
    }

    /// After a flush of `sent` counts in the period starting at `period_start` that left the shared
    /// total at `total`: the total is observed and the sent counts leave the local one (until then they
    /// are counted twice, which errs on the side of refusing, for the moment in between).
    pub fn settle(&self, period_start: i64, sent: u64, total: u64, now: i64) {
        let period = self.quota.period.index(period_start);
        self.observe(period_start, total, now);
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

    /// Carries another count's unflushed requests over (a replaced entry), and its shared count when
    /// that is newer than the one this count was made with.
    pub fn absorb(&self, other: &QuotaCount) {
        let (p, c) = unpack(other.shared.load(Ordering::Acquire));
        if c > 0 {
            self.raise(other.quota.period.start_of(p), c);
        }
        let (p, n) = unpack(other.local.swap(0, Ordering::AcqRel));
        if n > 0 {
            // In this count's period numbering (the quota's period may have changed with the entry).
            let p = self.quota.period.index(other.quota.period.start_of(p));
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

/// The calendar period a quota counts in (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

/// A quota: at most `count` accepted requests per calendar `period` (UTC), written `100000/day` or
/// `2000000/month`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: u64,
    pub period: Period,
}

impl Quota {
    pub fn parse(s: &str) -> Result<Quota, String> {
        let bad = || format!("{s:?} is not a quota like 100000/day or 2000000/month");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "day" | "d" => Period::Day,
            "month" | "mo" => Period::Month,
            _ => return Err(bad()),
        };
        if count == 0 || count >= 1 << 40 {
            return Err(format!("{s:?}: the count must be between 1 and 2^40"));
        }
        Ok(Quota { count, period })
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period {
            Period::Day => "day",
            Period::Month => "month",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Period {
    /// The period's number (days or months since 1970), for packing with a count.
    pub fn index(self, unix: i64) -> i64 {
        let days = unix.div_euclid(86_400);
        match self {
            Period::Day => days,
            Period::Month => {
                let (y, m, _) = crate::clock::civil_from_days(days);
                y * 12 + (m as i64 - 1) - 1970 * 12
            }
        }
    }

    /// Unix seconds at which period number `index` starts.
    pub fn start_of(self, index: i64) -> i64 {
        match self {
            Period::Day => index * 86_400,
            Period::Month => {
                let months = index + 1970 * 12;
                crate::clock::days_from_civil(
                    months.div_euclid(12),
                    months.rem_euclid(12) as u32 + 1,
                    1,
                ) * 86_400
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_calendar_periods() {
        assert_eq!(
            Quota::parse("100000/day"),
            Ok(Quota {
                count: 100_000,
                period: Period::Day
            })
        );
        assert_eq!(Quota::parse("5/month").unwrap().to_string(), "5/month");
        for bad in ["", "5", "0/day", "5/week", "x/day"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
        // 2026-11-22T22:30:00Z: day 20414, November 2026 (starts below: 2026-11-22, -23, -11-01, -12-01,
        // 2027-01-01, all 00:00:00Z).
        let t = 1_795_386_600;
        let d = Period::Day.index(t);
        assert_eq!(Period::Day.start_of(d), 1795305600);
        assert_eq!(Period::Day.start_of(d + 1), 1795392000);
        let m = Period::Month.index(t);
        assert_eq!(Period::Month.start_of(m), 1793491200);
        assert_eq!(Period::Month.start_of(m + 1), 1796083200);
        assert_eq!(Period::Month.start_of(m + 2), 1798761600);
        assert_eq!(Period::Month.index(Period::Month.start_of(m + 2)), m + 2);
        assert_eq!(Period::Month.index(Period::Month.start_of(m + 1) - 1), m);
    }

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
        let (start, end, n) = count.pending().unwrap();
        assert_eq!(
            (start, end, n),
            (q.period.start_of(day), q.period.start_of(day + 1), 70)
        );
        count.settle(start, n, 105, now);
        assert_eq!(count.pending(), None);
        assert_eq!(count.used(now).0, 105);
        // A new day starts from zero.
        let tomorrow = q.period.start_of(day + 1) + 5;
        assert_eq!(count.take(tomorrow).unwrap().remaining, 99);
        assert_eq!(count.used(tomorrow).0, 1);
    }

    #[test]
    fn shared_counts_only_grow_within_a_period_and_a_later_period_replaces_an_earlier_one() {
        let q = Quota::parse("100/day").unwrap();
        let now = 1_795_386_600;
        let day = q.period.index(now);
        let (today, yesterday, tomorrow) = (
            q.period.start_of(day),
            q.period.start_of(day - 1),
            q.period.start_of(day + 1),
        );
        let count = QuotaCount::new(q, Some(day), 10);
        count.observe(today, 60, now);
        assert_eq!(count.used(now).0, 60, "another node's flush");
        count.observe(today, 40, now);
        assert_eq!(count.used(now).0, 60, "an older report changes nothing");
        count.observe(yesterday, 99, now);
        assert_eq!(count.used(now).0, 60, "nor does an earlier period's");
        // A flush's own answer arriving after a newer feed entry: the sent count still leaves the local.
        assert!(count.take(now).is_ok());
        count.settle(today, 1, 55, now);
        assert_eq!((count.used(now).0, count.pending()), (60, None));
        // A period far ahead of this node's clock is not believed (it would hide today's 60)...
        count.observe(tomorrow + 86_400 * 365, 0, now);
        count.observe(tomorrow, 0, now);
        assert_eq!(count.used(now).0, 60);
        // ...but the next day's, once the clock is near it, replaces today's; today's view of it is 0.
        count.observe(tomorrow, 3, tomorrow - 60);
        assert_eq!(count.used(tomorrow + 1).0, 3);
        count.observe(today, 90, tomorrow + 1);
        assert_eq!(count.used(tomorrow + 1).0, 3, "too late for the new day");
    }

    #[test]
    fn a_replacing_count_keeps_the_newer_shared_count_and_the_pending_one_across_periods() {
        let day = Quota::parse("100/day").unwrap();
        let month = Quota::parse("1000/month").unwrap();
        let now = 1_796_515_200 + 3600; // 6 December 2026, 01:00
        let old = QuotaCount::new(day, Some(day.period.index(now)), 20);
        old.observe(day.period.start_of(day.period.index(now)), 50, now);
        for _ in 0..5 {
            old.take(now).unwrap();
        }
        // Same quota, made from an older row (20): keeps 50 and the 5 pending.
        let same = QuotaCount::new(day, Some(day.period.index(now)), 20);
        same.absorb(&old);
        assert_eq!(same.used(now).0, 55);
        assert_eq!(same.pending().map(|p| p.2), Some(5));
        // Changed to a month: today's count is the month's so far, in the month's numbering.
        let monthly = QuotaCount::new(month, None, 0);
        monthly.absorb(&same);
        assert_eq!(monthly.used(now).0, 55);
        let (start, end, n) = monthly.pending().unwrap();
        assert_eq!(
            (start, end, n),
            (1_796_083_200, 1_798_761_600, 5),
            "December, 5 pending"
        );
    }
}

//! The shutdown signal of the background threads (index sync, usage flush, health checks, the leaks
//! notifier): set once when the server stops, it wakes every sleeper at once. The sync loop also uses
//! it for "pokes" (a change was noticed) that wake it early.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The stop signal that wakes sleeping background threads at once; it also carries "pokes" (a change
/// was noticed) that wake the sync loop early.
#[derive(Default)]
pub struct Shutdown {
    state: Mutex<(bool, u64)>,
    cv: Condvar,
    flag: AtomicBool,
}

impl Shutdown {
    pub fn stop(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
        self.flag.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Sleeps up to `d`; returns true if stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |s| !s.0)
            .unwrap_or_else(|p| p.into_inner());
        g.0
    }

    /// Wakes [`Self::wait_poke`] (a change notification arrived).
    pub fn poke(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        self.cv.notify_all();
    }

    /// Sleeps up to `d` or until poked (after `*seen`); returns true if stopped.
    pub fn wait_poke(&self, d: Duration, seen: &mut u64) -> bool {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |s| !s.0 && s.1 == *seen)
            .unwrap_or_else(|p| p.into_inner());
        *seen = g.1;
        g.0
    }
}

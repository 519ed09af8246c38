//! What a report does, match by match, whoever made it (GitHub's signed report, or an operator's
//! `POST /api/leaks` / `tokengate token leaked`): a string that is not a well-formed token, or one this
//! gateway does not know, is a false positive; one of ours is recorded (once per reporter, source and
//! url), revoked when it is active and the action is `revoke`, and its owner notified (queued in the
//! same transaction as the record). The revoke is the store's, as for `token revoke`, applied to this
//! gateway's index before the answer; the fleet follows by its sync.

use super::LeakMetrics;
use crate::config::leaks::LeakAction;
use crate::tokens::format::{check_format, Digest};
use crate::tokens::index::Index;
use crate::tokens::store::leaks::LeakReport;
use crate::tokens::store::{hex, rfc3339, Location, Store, StoreError, LEAKED};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Longest `url` and `source` kept in an event, a record or a log line; longest `type`.
const MAX_TEXT: usize = 512;
const MAX_TYPE: usize = 64;

/// One match as GitHub sends it (`POST /api/leaks` takes the same).
#[derive(Deserialize)]
pub struct Match {
    pub token: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

/// One entry of the feedback answer.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub token_hash: String,
    pub token_type: String,
    pub label: &'static str,
}

/// Does what reports say; one per process, shared by the partner endpoint and the admin API.
pub struct Taker {
    pub action: LeakAction,
    /// Queue an owner notification for each new report (`[leaks] notify_url` is set).
    pub notify: bool,
    pub metrics: LeakMetrics,
    index: Arc<Index>,
    location: Location,
    store: Mutex<Option<Store>>,
}

impl Taker {
    pub fn new(
        action: LeakAction,
        notify: bool,
        metrics: LeakMetrics,
        index: Arc<Index>,
        location: Location,
    ) -> Taker {
        Taker {
            action,
            notify,
            metrics,
            index,
            location,
            store: Mutex::new(None),
        }
    }

    /// Labels every match, records ours, revokes the active ones (blocking: the store). `reporter`:
    /// `github`, or the admin actor; the revoke's actor is `leak:<reporter>`.
    pub fn take(&self, reporter: &str, matches: &[Match]) -> Result<Vec<Feedback>, StoreError> {
        let now = crate::clock::now();
        let actor = format!("leak:{reporter}");
        let mut out = Vec::with_capacity(matches.len());
        let mut guard = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        let result = (|| {
            for m in matches {
                out.push(self.take_one(&mut guard, m, now, reporter, &actor, &mut changed)?);
            }
            Ok(())
        })();
        if changed {
            if let Some(store) = guard.as_mut() {
                // Applied here before the answer (also after a later failure: what was revoked is).
                if let Err(e) = self.index.sync_from(store.backend()) {
                    *guard = None;
                    return Err(e);
                }
            }
        }
        if let Err(e) = result {
            *guard = None; // reopen next time
            return Err(e);
        }
        Ok(out)
    }

    /// One match: its feedback; for one of ours, the report recorded, the token revoked (when active and
    /// the action is `revoke`) and the owner's notification queued. `changed`: a token was revoked.
    fn take_one(
        &self,
        store: &mut Option<Store>,
        m: &Match,
        now: u64,
        reporter: &str,
        actor: &str,
        changed: &mut bool,
    ) -> Result<Feedback, StoreError> {
        let digest = Digest::of(&m.token);
        let mut feedback = Feedback {
            token_hash: hex(&digest.0),
            token_type: m
                .kind
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_TYPE)
                .collect(),
            label: "false_positive",
        };
        let slot = check_format(&m.token)
            .ok()
            .and_then(|()| self.index.get(&digest));
        let Some(slot) = slot else {
            self.metrics
                .matches
                .with_label_values(&["false_positive", "none"])
                .inc();
            return Ok(feedback);
        };
        feedback.label = "true_positive";
        let entry = slot.entry;
        let active = !entry.is_revoked() && now < slot.valid_until && now < entry.expires_at;
        let (url, source) = (clean(m.url.as_deref()), clean(m.source.as_deref()));
        let store = match store.as_mut() {
            Some(s) => s,
            None => store.insert(Store::open_existing(&self.location)?),
        };
        let (action, record) = match (active, self.action) {
            (false, _) => ("none", None),
            (true, LeakAction::Report) => ("reported", None),
            (true, LeakAction::Revoke) => {
                let detail = format!("reported leaked: source {source}, url {url}");
                let (record, did) =
                    store.revoke_with(entry.token_id, actor, Some(&detail), Some(LEAKED))?;
                *changed |= did;
                (if did { "revoked" } else { "none" }, Some(record))
            }
        };
        let report = LeakReport {
            at: now as i64,
            reporter: reporter.to_owned(),
            token_id: entry.token_id,
            label: feedback.label.to_owned(),
            action: action.to_owned(),
            token_type: feedback.token_type.clone(),
            source: source.clone(),
            url: url.clone(),
        };
        let note = match (self.notify, action) {
            (true, "revoked" | "reported") => {
                let label = match record {
                    Some(r) => r.label,
                    None => store.get(entry.token_id)?.label,
                };
                Some(notification(&report, entry.user(), &label, now))
            }
            _ => None,
        };
        let new = store.record_leak(&report, note.as_deref())?;
        if new && action != "none" {
            log::warn!(
                "leaks: token {} (user {}) {} after a report by {reporter} at {url} ({source})",
                entry.token_id,
                entry.user(),
                if action == "revoked" {
                    "revoked"
                } else {
                    "reported leaked, kept working (action = \"report\")"
                }
            );
        }
        self.metrics
            .matches
            .with_label_values(&["true_positive", action])
            .inc();
        Ok(feedback)
    }
}

/// The owner's notification of a report (the webhook's JSON body).
fn notification(report: &LeakReport, user: &str, label: &str, now: u64) -> String {
    serde_json::json!({
        "event": "token_leaked",
        "token_id": report.token_id,
        "user": user,
        "label": label,
        "source": report.source,
        "url": report.url,
        "action": report.action,
        "at": rfc3339(now as i64),
    })
    .to_string()
}

/// A report's `url` or `source` for an event, a record or a log line: at most [`MAX_TEXT`] characters,
/// no control characters.
fn clean(s: Option<&str>) -> String {
    match s {
        None | Some("") => "unknown".into(),
        Some(s) => s
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_TEXT)
            .collect(),
    }
}

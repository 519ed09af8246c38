//! Where the partner's keys come from and when they are read again: a key document on disk
//! (`public_keys_file`) or at a URL (`public_keys_url`), read at start (a document that cannot be read
//! stops the start, naming the key) and again when a report names a key identifier the document does not
//! have (the partner rotated its keys) — the first time at once, then at most once a minute, so that
//! callers naming made-up identifiers cannot make the gateway fetch or read on their behalf more often.

use super::client::{self, Url};
use super::signature::KeySet;
use crate::config::leaks::KeySource;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Least time between two reads of the document after the first.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// The largest key document read (GitHub's is a few KiB).
const MAX_DOCUMENT: usize = 256 * 1024;

/// The current key set and its source.
pub struct KeyRing {
    source: KeySource,
    /// The keys in force and when the document was last read again (`None`: not since start).
    state: Mutex<(Arc<KeySet>, Option<Instant>)>,
}

impl KeyRing {
    /// Reads the document once; an error names what is wrong (the caller adds the config key).
    pub fn load(source: KeySource) -> Result<KeyRing, String> {
        let keys = read(&source)?;
        Ok(KeyRing {
            source,
            state: Mutex::new((Arc::new(keys), None)),
        })
    }

    /// The key set in force.
    pub fn current(&self) -> Arc<KeySet> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Reads the document again unless that was done (after start) less than [`REFRESH_EVERY`] ago; returns the key
    /// set in force afterwards. A failed read keeps the keys there were. Blocking (file or network).
    pub fn refresh(&self) -> Arc<KeySet> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.1.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return state.0.clone();
        }
        state.1 = Some(Instant::now());
        match read(&self.source) {
            Ok(keys) => {
                log::info!(
                    "leaks: key document read again ({} keys) from {}",
                    keys.len(),
                    describe(&self.source)
                );
                state.0 = Arc::new(keys);
            }
            Err(e) => log::warn!(
                "leaks: cannot read the key document again from {}: {e}; keeping the keys there were",
                describe(&self.source)
            ),
        }
        state.0.clone()
    }
}

fn describe(source: &KeySource) -> String {
    match source {
        KeySource::File(p) => p.display().to_string(),
        KeySource::Url(u) => u.clone(),
    }
}

fn read(source: &KeySource) -> Result<KeySet, String> {
    let bytes = match source {
        KeySource::File(p) => {
            let bytes =
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            if bytes.len() > MAX_DOCUMENT {
                return Err(format!(
                    "{} is larger than {MAX_DOCUMENT} bytes",
                    p.display()
                ));
            }
            bytes
        }
        KeySource::Url(u) => fetch(u)?,
    };
    KeySet::parse(&bytes)
}

/// `GET` of a key document: `https://` verified against the system's roots, `http://` only to a
/// loopback address (the configuration allows nothing else; checked again on the resolved address).
/// Only a 200 is taken.
fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let u = Url::parse(url)?;
    if !u.tls && !u.is_loopback() {
        return Err("http:// is only allowed to a loopback address".into());
    }
    let (status, body) = client::send(
        &u,
        "GET",
        &[("Accept", "application/json")],
        b"",
        MAX_DOCUMENT,
    )?;
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    Ok(body)
}

//! Session tickets that resume on every gateway sharing a store (`[tls] session_tickets`). A ticket is
//! the session (rustls's, with the client certificate it was verified with) sealed with AES-256-GCM
//! under a key from the store (`tokens::store::ticket_keys`): `key id (8 bytes) ‖ nonce (12) ‖
//! ciphertext ‖ tag`, with the listener's *context* (a digest of the `client_ca` file's bytes) as
//! associated data, so a ticket issued under one CA set does not open after the set changes.
//!
//! **Rotation without a broken ticket.** [`keep_current`] asks the store every [`refresh`] to rotate
//! (a new key every half `ticket_lifetime`, keys older than two lifetimes deleted) and installs what it
//! holds. A new key *seals* only once it is [`activation`] old, a margin longer than every node takes to
//! load it, so a ticket sealed on one node always opens on the others; it *opens* tickets from the
//! moment it is loaded. A ticket opens while its key is younger than two lifetimes: at least one lifetime
//! after it was sealed, and never after the key was deleted (rustls asks that lifetimes be enforced by
//! key rotation and erasure). Without a key (the store unreachable since start), no ticket is sent and
//! handshakes are full; nothing fails.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use sha2::{Digest as _, Sha256};

use crate::shutdown::Shutdown;
use crate::tokens::store::ticket_keys::TicketKey;
use crate::tokens::store::{Location, Store};

/// The most a new key waits before it seals tickets (shorter for short lifetimes, see [`activation`]).
const MAX_ACTIVATION: Duration = Duration::from_secs(60);
/// The most time between two looks at the store's keys (see [`refresh`]).
const MAX_REFRESH: Duration = Duration::from_secs(10);
const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// How long a new key is loaded before it seals: a quarter lifetime, at most a minute.
pub fn activation(lifetime: Duration) -> Duration {
    (lifetime / 4).min(MAX_ACTIVATION)
}

/// How often the keys are fetched (and rotated): an eighth of a lifetime, at most 10 s — well inside
/// [`activation`], so every node has a key before any node seals with it.
pub fn refresh(lifetime: Duration) -> Duration {
    (lifetime / 8)
        .min(MAX_REFRESH)
        .max(Duration::from_millis(100))
}

struct Key {
    id: i64,
    created_at: i64,
    aead: LessSafeKey,
}

/// The ticket keys this process holds, newest first; shared by every ticketer it builds (a reload
/// keeps them).
pub struct TicketKeys {
    keys: ArcSwap<Vec<Key>>,
    lifetime: Duration,
    rng: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.load().len())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl TicketKeys {
    /// No keys yet, for tickets valid `lifetime`.
    pub fn new(lifetime: Duration) -> Arc<TicketKeys> {
        Arc::new(TicketKeys {
            keys: ArcSwap::from_pointee(Vec::new()),
            lifetime,
            rng: SystemRandom::new(),
        })
    }

    /// Replaces the keys with `keys` (as the store returned them).
    pub fn install(&self, keys: &[TicketKey]) {
        let mut loaded: Vec<Key> = keys
            .iter()
            .filter_map(|k| {
                Some(Key {
                    id: k.id,
                    created_at: k.created_at,
                    aead: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k.secret).ok()?),
                })
            })
            .collect();
        loaded.sort_by_key(|k| std::cmp::Reverse(k.id));
        self.keys.store(Arc::new(loaded));
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A ticketer over these keys for a listener whose client CA file holds `client_ca` (`None`: no
    /// client certificates are asked for).
    pub fn ticketer(self: &Arc<Self>, client_ca: Option<&[u8]>) -> Arc<dyn ProducesTickets> {
        let mut context = Sha256::new();
        context.update(b"tokengate ticket v1\0");
        match client_ca {
            Some(bytes) => {
                context.update(b"client_ca\0");
                context.update(bytes);
            }
            None => context.update(b"no client_ca\0"),
        }
        Arc::new(FleetTicketer {
            keys: self.clone(),
            context: context.finalize().into(),
        })
    }

    fn seal(&self, context: &[u8; 32], plain: &[u8], now: i64) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let lifetime = self.lifetime.as_secs() as i64;
        let ready = now - activation(self.lifetime).as_secs() as i64;
        // The newest key every node has had long enough; else (a store just made its first key) the
        // oldest one still fit to seal: one whose tickets will open for a whole lifetime.
        let key = keys
            .iter()
            .find(|k| k.created_at <= ready)
            .or_else(|| keys.last())
            .filter(|k| k.created_at >= now - lifetime)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let id = key.id.to_be_bytes();
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(context, &id)),
                &mut out[ID_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open(&self, context: &[u8; 32], ticket: &[u8], now: i64) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let id_value = i64::from_be_bytes(id.try_into().ok()?);
        let keys = self.keys.load();
        let oldest = now - 2 * self.lifetime.as_secs() as i64;
        let key = keys
            .iter()
            .find(|k| k.id == id_value && k.created_at >= oldest)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(aad(context, id.try_into().ok()?)),
                &mut buf,
            )
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

fn aad(context: &[u8; 32], id: &[u8; ID_LEN]) -> [u8; 32 + ID_LEN] {
    let mut a = [0u8; 32 + ID_LEN];
    a[..32].copy_from_slice(context);
    a[32..].copy_from_slice(id);
    a
}

/// [`ProducesTickets`] over the shared keys, for one listener context.
struct FleetTicketer {
    keys: Arc<TicketKeys>,
    context: [u8; 32],
}

impl fmt::Debug for FleetTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetTicketer")
    }
}

impl ProducesTickets for FleetTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.keys.lifetime.as_secs().min(u32::MAX as u64) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.seal(&self.context, plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys.open(&self.context, cipher, unix_now())
    }
}

/// No tickets (`session_tickets = false`).
#[derive(Debug)]
pub struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Rotates the store's keys once and installs them; the error says what failed, never a key.
pub fn rotate_once(keys: &TicketKeys, store: &mut Store) -> Result<(), String> {
    let mut fresh = [0u8; 32];
    keys.rng
        .fill(&mut fresh)
        .map_err(|_| "the system's random source failed".to_string())?;
    let stored = store
        .rotate_ticket_keys(unix_now(), keys.lifetime.as_secs() as i64, &fresh)
        .map_err(|e| e.to_string())?;
    keys.install(&stored);
    Ok(())
}

/// Keeps `keys` current until `stop`: rotates and loads them every [`refresh`], reopening the store
/// after a failure (logged once per outage; the keys held stay in use until they age out).
pub fn keep_current(keys: Arc<TicketKeys>, location: Location, stop: Arc<Shutdown>) {
    let every = refresh(keys.lifetime);
    let mut store: Option<Store> = None;
    let mut failing = false;
    while !stop.is_stopped() {
        if store.is_none() {
            store = Store::open_existing(&location).ok();
        }
        let result = match store.as_mut() {
            Some(s) => rotate_once(&keys, s),
            None => Err("the store could not be opened".into()),
        };
        match result {
            Ok(()) if failing => {
                log::info!("TLS ticket keys: loaded from the store again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    log::warn!(
                        "TLS ticket keys: {e}; keeping the {} key(s) held (resumption across nodes may \
                         fall back to full handshakes)",
                        keys.len()
                    );
                }
                failing = true;
                store = None;
            }
        }
        stop.wait(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64, byte: u8, created_at: i64) -> TicketKey {
        TicketKey {
            id,
            secret: [byte; 32],
            created_at,
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_ticket_sealed_on_one_node_opens_on_another_with_the_same_keys_only() {
        let (a, b, c) = (
            TicketKeys::new(DAY),
            TicketKeys::new(DAY),
            TicketKeys::new(DAY),
        );
        a.install(&[key(1, 7, NOW - 3600)]);
        b.install(&[key(1, 7, NOW - 3600)]);
        c.install(&[key(1, 8, NOW - 3600)]);
        let ctx = [0u8; 32];
        let t = a.seal(&ctx, b"session", NOW).unwrap();
        assert_eq!(b.open(&ctx, &t, NOW).as_deref(), Some(&b"session"[..]));
        assert_eq!(c.open(&ctx, &t, NOW), None, "another key");
        assert_eq!(b.open(&[1; 32], &t, NOW), None, "another listener context");
        // Any bit flipped: refused.
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert_eq!(b.open(&ctx, &bad, NOW), None, "byte {i}");
        }
        for n in 0..t.len() {
            assert_eq!(b.open(&ctx, &t[..n], NOW), None, "cut at {n}");
        }
    }

    #[test]
    fn a_new_key_seals_only_after_its_activation_and_old_tickets_open_until_two_lifetimes() {
        let keys = TicketKeys::new(DAY);
        let ctx = [0u8; 32];
        keys.install(&[key(1, 1, NOW - 10_000)]);
        let old = keys.seal(&ctx, b"s", NOW).unwrap();
        // A new key, just made: loaded, but the old one still seals.
        keys.install(&[key(2, 2, NOW), key(1, 1, NOW - 10_000)]);
        let t = keys.seal(&ctx, b"s", NOW).unwrap();
        assert_eq!(&t[..8], &1i64.to_be_bytes());
        // After the activation: the new key seals; the old ticket still opens.
        let later = NOW + activation(DAY).as_secs() as i64;
        let t = keys.seal(&ctx, b"s", later).unwrap();
        assert_eq!(&t[..8], &2i64.to_be_bytes());
        assert!(keys.open(&ctx, &old, later).is_some());
        // Two lifetimes after the old key was made: its tickets no longer open, even if still held.
        let gone = NOW - 10_000 + 2 * DAY.as_secs() as i64 + 1;
        assert!(keys.open(&ctx, &old, gone).is_none());
        // The first key of a store seals at once (nothing older exists).
        let fresh = TicketKeys::new(DAY);
        fresh.install(&[key(9, 9, NOW)]);
        assert!(fresh.seal(&ctx, b"s", NOW).is_some());
        // A key held past a lifetime (the store unreachable for a day) seals nothing.
        assert!(fresh
            .seal(&ctx, b"s", NOW + DAY.as_secs() as i64 + 1)
            .is_none());
        assert!(
            TicketKeys::new(DAY).seal(&ctx, b"s", NOW).is_none(),
            "no key, no ticket"
        );
    }

    #[test]
    fn a_ticket_from_a_listener_without_client_ca_never_opens_on_one_that_checks_certificates() {
        // A session made where no client certificate was asked for, resumed where one is required,
        // would skip the verification: the listeners' contexts differ, so the ticket does not open.
        let keys = TicketKeys::new(DAY);
        keys.install(&[key(1, 7, unix_now() - 3600)]);
        let open = keys.ticketer(None);
        let devices = keys.ticketer(Some(b"-----BEGIN CERTIFICATE----- device CA"));
        let other_ca = keys.ticketer(Some(b"-----BEGIN CERTIFICATE----- another CA"));
        let t = open
            .encrypt(b"session without a client certificate")
            .unwrap();
        assert!(open.decrypt(&t).is_some(), "the same listener resumes it");
        assert!(devices.decrypt(&t).is_none());
        let t = devices
            .encrypt(b"session with hive 7's certificate")
            .unwrap();
        assert!(devices.decrypt(&t).is_some());
        assert!(other_ca.decrypt(&t).is_none());
        assert!(open.decrypt(&t).is_none());
    }

    #[test]
    fn keys_never_show_in_debug() {
        let keys = TicketKeys::new(DAY);
        keys.install(&[key(1, 0xAB, NOW)]);
        let text = format!("{keys:?} {:?}", keys.ticketer(None));
        assert!(
            !text.contains("171") && !text.to_lowercase().contains("ab, ab"),
            "{text}"
        );
    }
}

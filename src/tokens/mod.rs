//! Tokens: what they are and where they live.
//!
//! - [`format`]: the token format — generation from the OS CSPRNG, checksum, SHA-256 digest.
//! - [`fields`]: checks of user ids, labels, scopes, roles and expiry (CLI and admin API alike);
//!   [`input`]: a new token's or a change's fields as written, checked once by those into store types.
//! - [`store`]: the source of truth (SQLite) — migrations, lifecycle operations, events, change feed,
//!   usage flush.
//! - [`index`]: the lock-free digest → entry map every request reads; [`grants`]: what an entry gets from
//!   its groups and licenses.
//! - [`sync`]: the loops that keep the index in step with the store and flush usage.

pub mod applied;
pub mod fields;
pub mod format;
pub mod grants;
pub mod index;
pub mod input;
pub mod store;
pub mod sync;

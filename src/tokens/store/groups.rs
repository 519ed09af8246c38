//! Groups and licenses: what makes a token act like a user (the operations; what they are made of is
//! in [`super::access`], each backend's SQL in `groups_sqlite.rs` and `groups_pg.rs`). A **group** has a
//! name, the roles it grants, and members (a user — every token of that user — or one token); a
//! **license** has a name, a number of seats, an optional end (`valid_until`) and holders (a user or a
//! token), each holding one seat.
//!
//! Every change is one transaction that also (a) appends an event with actor and detail to the
//! append-only `access_events` log and (b) gives every token whose access it changes the next revision,
//! so that the change reaches the index of every gateway the way a token edit does (the change feed,
//! `rev > last`, the inotify / `NOTIFY` wake-up, the re-check of open streams). The index reads a
//! token's groups, their roles and its licenses with the token's row ([`super::access::Access`], two
//! sub-selects of the change feed's one statement: one snapshot).
//!
//! Seats are never oversold: an assignment counts the holders and inserts in one transaction that
//! holds the license (SQLite `BEGIN IMMEDIATE`, PostgreSQL `SELECT ... FOR UPDATE` on the license row),
//! so two processes assigning the last seat at once get one seat and one refusal.

pub use super::access::{
    check_name, Access, AccessEvent, GroupView, LicenseView, Member, MemberView, MAX_NAME,
};
use super::StoreError;

/// The groups' and licenses' part of the store's contract ([`super::TokenStore`]). Every write takes
/// the actor recorded on its event.
pub trait GroupStore {
    /// Creates a group granting `roles` (names checked by the caller against `[roles]`).
    fn group_create(
        &mut self,
        name: &str,
        roles: &[String],
        actor: &str,
    ) -> Result<GroupView, StoreError>;
    /// Deletes a group: its members lose its roles.
    fn group_delete(&mut self, name: &str, actor: &str) -> Result<(), StoreError>;
    /// Adds a member; `false`: it was one already (no event, no revision).
    fn group_add(&mut self, name: &str, member: &Member, actor: &str) -> Result<bool, StoreError>;
    /// Removes a member (refused with [`StoreError::NotMember`] when it is not one).
    fn group_remove(&mut self, name: &str, member: &Member, actor: &str) -> Result<(), StoreError>;
    /// Every group, by name.
    fn groups(&mut self) -> Result<Vec<GroupView>, StoreError>;
    fn group(&mut self, name: &str) -> Result<GroupView, StoreError>;

    fn license_create(
        &mut self,
        name: &str,
        seats: i64,
        valid_until: Option<i64>,
        actor: &str,
    ) -> Result<LicenseView, StoreError>;
    /// Gives a member a seat; refused with [`StoreError::SeatsTaken`] when every seat is taken, also
    /// when several processes assign at once. `false`: it held one already.
    fn license_assign(
        &mut self,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<bool, StoreError>;
    /// Takes a member's seat back.
    fn license_revoke(
        &mut self,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<(), StoreError>;
    fn licenses(&mut self) -> Result<Vec<LicenseView>, StoreError>;
    fn license(&mut self, name: &str) -> Result<LicenseView, StoreError>;

    /// The audit log of one group or license (`kind`: `group` or `license`), oldest first.
    fn access_events(&mut self, kind: &str, name: &str) -> Result<Vec<AccessEvent>, StoreError>;
}

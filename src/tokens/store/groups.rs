//! Groups and licenses on both backends (SQLite migration 8, PostgreSQL 6): what makes a token act like
//! a user. A **group** has a name, the roles it grants, and members (a user — every token of that user —
//! or one token); a **license** has a name, a number of seats, an optional end (`valid_until`) and
//! holders (a user or a token), each holding one seat.
//!
//! Every change is one transaction that also (a) appends an event with actor and detail to the
//! append-only `access_events` log and (b) gives every token whose access it changes the next revision,
//! so that the change reaches the index of every gateway the way a token edit does (the change feed,
//! `rev > last`, the inotify / `NOTIFY` wake-up, the re-check of open streams). The index reads a
//! token's groups, their roles and its licenses with the token's row ([`Access`], two sub-selects of
//! the change feed's one statement: one snapshot).
//!
//! Seats are never oversold: an assignment counts the holders and inserts in one transaction that
//! holds the license (SQLite `BEGIN IMMEDIATE`, PostgreSQL `SELECT ... FOR UPDATE` on the license row),
//! so two processes assigning the last seat at once get one seat and one refusal.

use super::pg::PgStore;
use super::pg_url::to_err as pg_err;
use super::sqlite::{to_err as sqlite_err, SqliteStore};
use super::{rfc3339, unix_now, StoreError};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

/// SQLite's migration 8 (PostgreSQL's 6 is [`PG_MIGRATION`]).
pub(super) const SQLITE_MIGRATION: &str = "CREATE TABLE groups (
        name       TEXT PRIMARY KEY,
        roles      TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    );
    CREATE TABLE group_members (
        group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
        member     TEXT NOT NULL,
        added_at   INTEGER NOT NULL,
        PRIMARY KEY (group_name, member)
    );
    CREATE INDEX group_members_member ON group_members (member);
    CREATE TABLE licenses (
        name        TEXT PRIMARY KEY,
        seats       INTEGER NOT NULL CHECK (seats >= 0),
        valid_until INTEGER,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE license_holders (
        license_name TEXT NOT NULL REFERENCES licenses (name) ON DELETE CASCADE,
        member       TEXT NOT NULL,
        assigned_at  INTEGER NOT NULL,
        PRIMARY KEY (license_name, member)
    );
    CREATE INDEX license_holders_member ON license_holders (member);
    CREATE TABLE access_events (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at     INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        name   TEXT NOT NULL,
        event  TEXT NOT NULL,
        actor  TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX access_events_name ON access_events (kind, name, id);
    CREATE TRIGGER access_events_no_update BEFORE UPDATE ON access_events
        BEGIN SELECT RAISE(ABORT, 'access_events is append-only'); END;
    CREATE TRIGGER access_events_no_delete BEFORE DELETE ON access_events
        BEGIN SELECT RAISE(ABORT, 'access_events is append-only'); END;";

/// PostgreSQL's migration 6.
pub(super) const PG_MIGRATION: &str = "CREATE TABLE groups (
        name       TEXT PRIMARY KEY,
        roles      TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL
    );
    CREATE TABLE group_members (
        group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
        member     TEXT NOT NULL,
        added_at   BIGINT NOT NULL,
        PRIMARY KEY (group_name, member)
    );
    CREATE INDEX group_members_member ON group_members (member);
    CREATE TABLE licenses (
        name        TEXT PRIMARY KEY,
        seats       BIGINT NOT NULL CHECK (seats >= 0),
        valid_until BIGINT,
        created_at  BIGINT NOT NULL
    );
    CREATE TABLE license_holders (
        license_name TEXT NOT NULL REFERENCES licenses (name) ON DELETE CASCADE,
        member       TEXT NOT NULL,
        assigned_at  BIGINT NOT NULL,
        PRIMARY KEY (license_name, member)
    );
    CREATE INDEX license_holders_member ON license_holders (member);
    CREATE TABLE access_events (
        id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at     BIGINT NOT NULL,
        kind   TEXT NOT NULL,
        name   TEXT NOT NULL,
        event  TEXT NOT NULL,
        actor  TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX access_events_name ON access_events (kind, name, id);
    CREATE FUNCTION access_events_append_only() RETURNS trigger LANGUAGE plpgsql
        AS $$ BEGIN RAISE EXCEPTION 'access_events is append-only'; END $$;
    CREATE TRIGGER access_events_no_change BEFORE UPDATE OR DELETE ON access_events
        FOR EACH ROW EXECUTE FUNCTION access_events_append_only();
    CREATE TRIGGER access_events_no_truncate BEFORE TRUNCATE ON access_events
        FOR EACH STATEMENT EXECUTE FUNCTION access_events_append_only();";

/// The change feed's extra columns on SQLite: a token's groups (`name US roles`, RS-separated) and
/// licenses (`name US valid_until`), as of the same snapshot as the token row.
macro_rules! sqlite_access_columns {
    () => {
        ", (SELECT group_concat(g.name || char(31) || g.roles, char(30))
            FROM group_members m JOIN groups g ON g.name = m.group_name
            WHERE m.member IN ('user:' || tokens.user_id, 'token:' || tokens.id)),
        (SELECT group_concat(l.name || char(31) || COALESCE(l.valid_until, ''), char(30))
            FROM license_holders h JOIN licenses l ON l.name = h.license_name
            WHERE h.member IN ('user:' || tokens.user_id, 'token:' || tokens.id))"
    };
}
pub(super) use sqlite_access_columns;

/// The same on PostgreSQL.
macro_rules! pg_access_columns {
    () => {
        ", (SELECT string_agg(g.name || chr(31) || g.roles, chr(30))
            FROM group_members m JOIN groups g ON g.name = m.group_name
            WHERE m.member IN ('user:' || tokens.user_id, 'token:' || tokens.id::text)),
        (SELECT string_agg(l.name || chr(31) || COALESCE(l.valid_until::text, ''), chr(30))
            FROM license_holders h JOIN licenses l ON l.name = h.license_name
            WHERE h.member IN ('user:' || tokens.user_id, 'token:' || tokens.id::text))"
    };
}
pub(super) use pg_access_columns;

/// The longest group or license name.
pub const MAX_NAME: usize = 64;

/// Checks a group or license name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit. Lower
/// case only, so that `Apiary-42` and `apiary-42` can never be two groups (or one route's requirement
/// and another's group): a name with an upper-case letter is refused, not folded.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?} must be 1 to {MAX_NAME} characters of a-z, 0-9, '.', '_', '-' (lower case), starting with a letter or digit"
        ))
    }
}

/// Who is in a group or holds a license: a user (every token of that user, now and later) or one token
/// (by id: it keeps them through a rotation, and loses them with nothing else).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    User(String),
    Token(i64),
}

impl Member {
    /// A user member; refused when the user id is not one (see `check_user`) or starts with `token:`
    /// (the spelling of a token member in the admin API's paths).
    pub fn user(user: &str) -> Result<Member, String> {
        crate::tokens::fields::check_user(user)?;
        if user.starts_with("token:") {
            return Err(format!(
                "user {user:?} cannot be a member: ids starting with \"token:\" name tokens"
            ));
        }
        Ok(Member::User(user.to_owned()))
    }

    /// The admin API's path spelling: `token:ID` is a token, anything else a user.
    pub fn from_path(segment: &str) -> Result<Member, String> {
        match segment.strip_prefix("token:") {
            Some(id) => id
                .parse::<i64>()
                .ok()
                .filter(|i| *i > 0 && id.bytes().all(|b| b.is_ascii_digit()))
                .map(Member::Token)
                .ok_or_else(|| format!("{segment:?} is not token:ID with a token id")),
            None => Member::user(segment),
        }
    }

    /// How the store keeps it (`user:ID` or `token:ID`).
    pub fn key(&self) -> String {
        match self {
            Member::User(u) => format!("user:{u}"),
            Member::Token(id) => format!("token:{id}"),
        }
    }

    fn parse_key(key: &str) -> Option<Member> {
        if let Some(u) = key.strip_prefix("user:") {
            return Some(Member::User(u.to_owned()));
        }
        key.strip_prefix("token:")?.parse().ok().map(Member::Token)
    }

    pub fn view(&self) -> MemberView {
        match self {
            Member::User(u) => MemberView {
                user: Some(u.clone()),
                token_id: None,
            },
            Member::Token(id) => MemberView {
                user: None,
                token_id: Some(*id),
            },
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::User(u) => write!(f, "user {u}"),
            Member::Token(id) => write!(f, "token {id}"),
        }
    }
}

/// A member in JSON: `{"user":"..."}` or `{"token_id":N}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<i64>,
}

/// A group as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupView {
    pub name: String,
    pub roles: Vec<String>,
    pub members: Vec<MemberView>,
    pub created_at: String,
}

/// A license as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LicenseView {
    pub name: String,
    pub seats: i64,
    pub seats_used: i64,
    pub valid_until: Option<String>,
    /// Not past `valid_until` now.
    pub valid: bool,
    pub holders: Vec<MemberView>,
    pub created_at: String,
}

/// One entry of the groups' and licenses' audit log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccessEvent {
    pub at: String,
    /// `group` or `license`.
    pub kind: String,
    pub name: String,
    pub event: String,
    pub actor: String,
    pub detail: Option<String>,
}

/// What a token gets from groups and licenses, as the change feed reads it with the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Group names, sorted, once each.
    pub groups: Vec<String>,
    /// The roles those groups grant, sorted, once each.
    pub group_roles: Vec<String>,
    /// License names with their end (unix seconds; `None`: no end), sorted by name, once each.
    pub licenses: Vec<(String, Option<i64>)>,
}

impl Access {
    /// Parses the change feed's two columns (see `sqlite_access_columns!`).
    pub fn parse(groups: Option<&str>, licenses: Option<&str>) -> Access {
        let mut a = Access::default();
        for g in groups.into_iter().flat_map(|s| s.split('\u{1e}')) {
            let (name, roles) = g.split_once('\u{1f}').unwrap_or((g, ""));
            a.groups.push(name.to_owned());
            a.group_roles
                .extend(roles.split_ascii_whitespace().map(str::to_owned));
        }
        for l in licenses.into_iter().flat_map(|s| s.split('\u{1e}')) {
            let (name, until) = l.split_once('\u{1f}').unwrap_or((l, ""));
            a.licenses.push((name.to_owned(), until.parse().ok()));
        }
        a.groups.sort();
        a.groups.dedup();
        a.group_roles.sort();
        a.group_roles.dedup();
        a.licenses.sort();
        a.licenses.dedup();
        a
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.licenses.is_empty()
    }
}

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

fn no_group(name: &str) -> StoreError {
    StoreError::NoGroup {
        name: name.to_owned(),
    }
}

fn no_license(name: &str) -> StoreError {
    StoreError::NoLicense {
        name: name.to_owned(),
    }
}

fn members_of(keys: Vec<String>) -> Vec<MemberView> {
    let mut m: Vec<Member> = keys.iter().filter_map(|k| Member::parse_key(k)).collect();
    m.sort();
    m.iter().map(Member::view).collect()
}

fn split_roles(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_owned).collect()
}

fn license_view(
    name: String,
    seats: i64,
    until: Option<i64>,
    created: i64,
    holders: Vec<String>,
    now: i64,
) -> LicenseView {
    LicenseView {
        name,
        seats,
        seats_used: holders.len() as i64,
        valid_until: until.map(rfc3339),
        valid: until.is_none_or(|u| now < u),
        holders: members_of(holders),
        created_at: rfc3339(created),
    }
}

fn until_text(until: Option<i64>) -> String {
    until.map_or("no end".into(), |u| format!("valid until {}", rfc3339(u)))
}

// ---- SQLite ----------------------------------------------------------------------------------------

/// Tokens (not revoked) whose access a change to `members` touches.
const SQLITE_AFFECTED: &str = "SELECT id FROM tokens WHERE revoked_at IS NULL AND
    ('user:' || user_id IN (SELECT value FROM json_each(?1)) OR 'token:' || id IN (SELECT value FROM json_each(?1)))";

/// Gives each token whose access changes with `members` the next revision (one each, in commit order).
fn sqlite_touch(tx: &rusqlite::Transaction<'_>, members: &[String]) -> rusqlite::Result<()> {
    if members.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(members).expect("strings");
    let ids: Vec<i64> = tx
        .prepare_cached(SQLITE_AFFECTED)?
        .query_map([json], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut bump = tx.prepare_cached(
        "UPDATE tokens SET rev = (SELECT COALESCE(MAX(rev), 0) FROM tokens) + 1 WHERE id = ?1",
    )?;
    for id in ids {
        bump.execute([id])?;
    }
    Ok(())
}

fn sqlite_event(
    tx: &rusqlite::Transaction<'_>,
    kind: &str,
    name: &str,
    event: &str,
    actor: &str,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO access_events (at, kind, name, event, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![unix_now(), kind, name, event, actor, detail],
    )?;
    Ok(())
}

fn sqlite_keys(
    conn: &rusqlite::Connection,
    sql: &str,
    name: &str,
) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(sql)?
        .query_map([name], |r| r.get(0))?
        .collect()
}

fn sqlite_token_exists(conn: &rusqlite::Connection, m: &Member) -> rusqlite::Result<bool> {
    match m {
        Member::User(_) => Ok(true),
        Member::Token(id) => Ok(conn
            .query_row("SELECT 1 FROM tokens WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some()),
    }
}

impl SqliteStore {
    fn immediate(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite_err(&path, e))
    }
}

impl GroupStore for SqliteStore {
    fn group_create(
        &mut self,
        name: &str,
        roles: &[String],
        actor: &str,
    ) -> Result<GroupView, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let tx = self.immediate()?;
        let n = tx
            .execute(
                "INSERT INTO groups (name, roles, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![name, roles.join(" "), unix_now()],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::Exists {
                what: format!("group {name:?}"),
            });
        }
        let detail = format!(
            "roles: {}",
            if roles.is_empty() {
                "none".into()
            } else {
                roles.join(" ")
            }
        );
        sqlite_event(&tx, "group", name, "created", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        self.group(name)
    }

    fn group_delete(&mut self, name: &str, actor: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let tx = self.immediate()?;
        let members = sqlite_keys(
            &tx,
            "SELECT member FROM group_members WHERE group_name = ?1",
            name,
        )
        .map_err(err)?;
        sqlite_touch(&tx, &members).map_err(err)?;
        tx.execute("DELETE FROM group_members WHERE group_name = ?1", [name])
            .map_err(err)?;
        if tx
            .execute("DELETE FROM groups WHERE name = ?1", [name])
            .map_err(err)?
            == 0
        {
            return Err(no_group(name));
        }
        let detail = format!("{} members removed", members.len());
        sqlite_event(&tx, "group", name, "deleted", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn group_add(&mut self, name: &str, member: &Member, actor: &str) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let tx = self.immediate()?;
        if tx
            .query_row("SELECT 1 FROM groups WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .map_err(err)?
            .is_none()
        {
            return Err(no_group(name));
        }
        if let Member::Token(id) = member {
            if !sqlite_token_exists(&tx, member).map_err(err)? {
                return Err(StoreError::NotFound { id: *id });
            }
        }
        let key = member.key();
        let n = tx
            .execute(
                "INSERT INTO group_members (group_name, member, added_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![name, key, unix_now()],
            )
            .map_err(err)?;
        if n == 0 {
            return Ok(false);
        }
        sqlite_touch(&tx, std::slice::from_ref(&key)).map_err(err)?;
        sqlite_event(
            &tx,
            "group",
            name,
            "member_added",
            actor,
            Some(&member.to_string()),
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }

    fn group_remove(&mut self, name: &str, member: &Member, actor: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let tx = self.immediate()?;
        let key = member.key();
        // Touched before the row goes (the affected tokens are found through the member, not the row).
        let n = tx
            .execute(
                "DELETE FROM group_members WHERE group_name = ?1 AND member = ?2",
                params![name, key],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::NotMember {
                what: format!("{member} is not in group {name:?}"),
            });
        }
        sqlite_touch(&tx, std::slice::from_ref(&key)).map_err(err)?;
        sqlite_event(
            &tx,
            "group",
            name,
            "member_removed",
            actor,
            Some(&member.to_string()),
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn groups(&mut self) -> Result<Vec<GroupView>, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let names: Vec<String> = self
            .conn
            .prepare_cached("SELECT name FROM groups ORDER BY name")
            .map_err(err)?
            .query_map([], |r| r.get(0))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        names.iter().map(|n| self.group(n)).collect()
    }

    fn group(&mut self, name: &str) -> Result<GroupView, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let (roles, created): (String, i64) = self
            .conn
            .query_row(
                "SELECT roles, created_at FROM groups WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?
            .ok_or_else(|| no_group(name))?;
        let keys = sqlite_keys(
            &self.conn,
            "SELECT member FROM group_members WHERE group_name = ?1",
            name,
        )
        .map_err(err)?;
        Ok(GroupView {
            name: name.to_owned(),
            roles: split_roles(&roles),
            members: members_of(keys),
            created_at: rfc3339(created),
        })
    }

    fn license_create(
        &mut self,
        name: &str,
        seats: i64,
        valid_until: Option<i64>,
        actor: &str,
    ) -> Result<LicenseView, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let tx = self.immediate()?;
        let n = tx
            .execute(
                "INSERT INTO licenses (name, seats, valid_until, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                params![name, seats, valid_until, unix_now()],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::Exists {
                what: format!("license {name:?}"),
            });
        }
        let detail = format!("{seats} seats, {}", until_text(valid_until));
        sqlite_event(&tx, "license", name, "created", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        self.license(name)
    }

    fn license_assign(
        &mut self,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        // BEGIN IMMEDIATE: the write lock is held from the count to the insert, so no other process
        // counts the same free seat.
        let tx = self.immediate()?;
        let seats: i64 = tx
            .query_row("SELECT seats FROM licenses WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?
            .ok_or_else(|| no_license(name))?;
        if let Member::Token(id) = member {
            if !sqlite_token_exists(&tx, member).map_err(err)? {
                return Err(StoreError::NotFound { id: *id });
            }
        }
        let key = member.key();
        let held = tx
            .query_row(
                "SELECT 1 FROM license_holders WHERE license_name = ?1 AND member = ?2",
                params![name, key],
                |_| Ok(()),
            )
            .optional()
            .map_err(err)?
            .is_some();
        if held {
            return Ok(false);
        }
        let used: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM license_holders WHERE license_name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(err)?;
        if used >= seats {
            return Err(StoreError::SeatsTaken {
                name: name.to_owned(),
                seats,
            });
        }
        tx.execute(
            "INSERT INTO license_holders (license_name, member, assigned_at) VALUES (?1, ?2, ?3)",
            params![name, key, unix_now()],
        )
        .map_err(err)?;
        sqlite_touch(&tx, std::slice::from_ref(&key)).map_err(err)?;
        let detail = format!("{member} (seat {} of {seats})", used + 1);
        sqlite_event(&tx, "license", name, "assigned", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }

    fn license_revoke(
        &mut self,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let tx = self.immediate()?;
        let key = member.key();
        let n = tx
            .execute(
                "DELETE FROM license_holders WHERE license_name = ?1 AND member = ?2",
                params![name, key],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::NotMember {
                what: format!("{member} does not hold license {name:?}"),
            });
        }
        sqlite_touch(&tx, std::slice::from_ref(&key)).map_err(err)?;
        sqlite_event(
            &tx,
            "license",
            name,
            "revoked",
            actor,
            Some(&member.to_string()),
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn licenses(&mut self) -> Result<Vec<LicenseView>, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let names: Vec<String> = self
            .conn
            .prepare_cached("SELECT name FROM licenses ORDER BY name")
            .map_err(err)?
            .query_map([], |r| r.get(0))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        names.iter().map(|n| self.license(n)).collect()
    }

    fn license(&mut self, name: &str) -> Result<LicenseView, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let (seats, until, created): (i64, Option<i64>, i64) = self
            .conn
            .query_row(
                "SELECT seats, valid_until, created_at FROM licenses WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(err)?
            .ok_or_else(|| no_license(name))?;
        let keys = sqlite_keys(
            &self.conn,
            "SELECT member FROM license_holders WHERE license_name = ?1",
            name,
        )
        .map_err(err)?;
        Ok(license_view(
            name.to_owned(),
            seats,
            until,
            created,
            keys,
            unix_now(),
        ))
    }

    fn access_events(&mut self, kind: &str, name: &str) -> Result<Vec<AccessEvent>, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at, kind, name, event, actor, detail FROM access_events
                 WHERE kind = ?1 AND name = ?2 ORDER BY id",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![kind, name], |r| {
                Ok(AccessEvent {
                    at: rfc3339(r.get(0)?),
                    kind: r.get(1)?,
                    name: r.get(2)?,
                    event: r.get(3)?,
                    actor: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }
}

// ---- PostgreSQL ------------------------------------------------------------------------------------

const PG_AFFECTED: &str = "SELECT id FROM tokens WHERE revoked_at IS NULL AND
    ('user:' || user_id = ANY($1::text[]) OR 'token:' || id::text = ANY($1::text[])) ORDER BY id";

/// Gives each token whose access changes with `members` the next revision (taken from the counter,
/// which also queues the `NOTIFY`).
fn pg_touch(tx: &mut postgres::Transaction<'_>, members: &[String]) -> Result<(), postgres::Error> {
    if members.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = tx
        .query(PG_AFFECTED, &[&members])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let first: i64 = tx
        .query_one(super::pg_sql::TAKE_REVS, &[&(ids.len() as i64)])?
        .get(0);
    tx.execute(
        "UPDATE tokens t SET rev = $2::int8 + s.n - 1
         FROM UNNEST($1::int8[]) WITH ORDINALITY AS s (id, n) WHERE t.id = s.id",
        &[&ids, &first],
    )?;
    Ok(())
}

fn pg_event(
    tx: &mut postgres::Transaction<'_>,
    kind: &str,
    name: &str,
    event: &str,
    actor: &str,
    detail: Option<&str>,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO access_events (at, kind, name, event, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&unix_now(), &kind, &name, &event, &actor, &detail],
    )?;
    Ok(())
}

fn pg_keys(
    client: &mut impl postgres::GenericClient,
    sql: &str,
    name: &str,
) -> Result<Vec<String>, postgres::Error> {
    Ok(client
        .query(sql, &[&name])?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

fn pg_token_exists(
    tx: &mut postgres::Transaction<'_>,
    m: &Member,
) -> Result<bool, postgres::Error> {
    match m {
        Member::User(_) => Ok(true),
        Member::Token(id) => Ok(tx
            .query_opt("SELECT 1 FROM tokens WHERE id = $1", &[id])?
            .is_some()),
    }
}

impl GroupStore for PgStore {
    fn group_create(
        &mut self,
        name: &str,
        roles: &[String],
        actor: &str,
    ) -> Result<GroupView, StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let n = tx
            .execute(
                "INSERT INTO groups (name, roles, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&name, &roles.join(" "), &unix_now()],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::Exists {
                what: format!("group {name:?}"),
            });
        }
        let detail = format!(
            "roles: {}",
            if roles.is_empty() {
                "none".into()
            } else {
                roles.join(" ")
            }
        );
        pg_event(&mut tx, "group", name, "created", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        self.group(name)
    }

    fn group_delete(&mut self, name: &str, actor: &str) -> Result<(), StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        if tx
            .query_opt("SELECT 1 FROM groups WHERE name = $1 FOR UPDATE", &[&name])
            .map_err(err)?
            .is_none()
        {
            return Err(no_group(name));
        }
        let members = pg_keys(
            &mut tx,
            "SELECT member FROM group_members WHERE group_name = $1",
            name,
        )
        .map_err(err)?;
        tx.execute("DELETE FROM group_members WHERE group_name = $1", &[&name])
            .map_err(err)?;
        tx.execute("DELETE FROM groups WHERE name = $1", &[&name])
            .map_err(err)?;
        pg_touch(&mut tx, &members).map_err(err)?;
        let detail = format!("{} members removed", members.len());
        pg_event(&mut tx, "group", name, "deleted", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)
    }

    fn group_add(&mut self, name: &str, member: &Member, actor: &str) -> Result<bool, StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        // The group row is locked so that a delete running at once cannot leave a member behind.
        if tx
            .query_opt("SELECT 1 FROM groups WHERE name = $1 FOR SHARE", &[&name])
            .map_err(err)?
            .is_none()
        {
            return Err(no_group(name));
        }
        if let Member::Token(id) = member {
            if !pg_token_exists(&mut tx, member).map_err(err)? {
                return Err(StoreError::NotFound { id: *id });
            }
        }
        let key = member.key();
        let n = tx
            .execute(
                "INSERT INTO group_members (group_name, member, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&name, &key, &unix_now()],
            )
            .map_err(err)?;
        if n == 0 {
            return Ok(false);
        }
        pg_touch(&mut tx, std::slice::from_ref(&key)).map_err(err)?;
        pg_event(
            &mut tx,
            "group",
            name,
            "member_added",
            actor,
            Some(&member.to_string()),
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }

    fn group_remove(&mut self, name: &str, member: &Member, actor: &str) -> Result<(), StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let key = member.key();
        let n = tx
            .execute(
                "DELETE FROM group_members WHERE group_name = $1 AND member = $2",
                &[&name, &key],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::NotMember {
                what: format!("{member} is not in group {name:?}"),
            });
        }
        pg_touch(&mut tx, std::slice::from_ref(&key)).map_err(err)?;
        pg_event(
            &mut tx,
            "group",
            name,
            "member_removed",
            actor,
            Some(&member.to_string()),
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn groups(&mut self) -> Result<Vec<GroupView>, StoreError> {
        let url = self.url.clone();
        let names: Vec<String> = self
            .client
            .query("SELECT name FROM groups ORDER BY name", &[])
            .map_err(|e| pg_err(&url, e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        names.iter().map(|n| self.group(n)).collect()
    }

    fn group(&mut self, name: &str) -> Result<GroupView, StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let row = self
            .client
            .query_opt(
                "SELECT roles, created_at FROM groups WHERE name = $1",
                &[&name],
            )
            .map_err(err)?
            .ok_or_else(|| no_group(name))?;
        let keys = pg_keys(
            &mut self.client,
            "SELECT member FROM group_members WHERE group_name = $1",
            name,
        )
        .map_err(err)?;
        Ok(GroupView {
            name: name.to_owned(),
            roles: split_roles(row.get(0)),
            members: members_of(keys),
            created_at: rfc3339(row.get(1)),
        })
    }

    fn license_create(
        &mut self,
        name: &str,
        seats: i64,
        valid_until: Option<i64>,
        actor: &str,
    ) -> Result<LicenseView, StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let n = tx
            .execute(
                "INSERT INTO licenses (name, seats, valid_until, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&name, &seats, &valid_until, &unix_now()],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::Exists {
                what: format!("license {name:?}"),
            });
        }
        let detail = format!("{seats} seats, {}", until_text(valid_until));
        pg_event(&mut tx, "license", name, "created", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        self.license(name)
    }

    fn license_assign(
        &mut self,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        // The license row is locked from the count to the insert: a second assignment waits here and
        // then counts the seat the first one took.
        let seats: i64 = tx
            .query_opt(
                "SELECT seats FROM licenses WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .map_err(err)?
            .ok_or_else(|| no_license(name))?
            .get(0);
        if let Member::Token(id) = member {
            if !pg_token_exists(&mut tx, member).map_err(err)? {
                return Err(StoreError::NotFound { id: *id });
            }
        }
        let key = member.key();
        let held = tx
            .query_opt(
                "SELECT 1 FROM license_holders WHERE license_name = $1 AND member = $2",
                &[&name, &key],
            )
            .map_err(err)?
            .is_some();
        if held {
            return Ok(false);
        }
        let used: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM license_holders WHERE license_name = $1",
                &[&name],
            )
            .map_err(err)?
            .get(0);
        if used >= seats {
            return Err(StoreError::SeatsTaken {
                name: name.to_owned(),
                seats,
            });
        }
        tx.execute(
            "INSERT INTO license_holders (license_name, member, assigned_at) VALUES ($1, $2, $3)",
            &[&name, &key, &unix_now()],
        )
        .map_err(err)?;
        pg_touch(&mut tx, std::slice::from_ref(&key)).map_err(err)?;
        let detail = format!("{member} (seat {} of {seats})", used + 1);
        pg_event(&mut tx, "license", name, "assigned", actor, Some(&detail)).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }

    fn license_revoke(
        &mut self,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<(), StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let key = member.key();
        let n = tx
            .execute(
                "DELETE FROM license_holders WHERE license_name = $1 AND member = $2",
                &[&name, &key],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(StoreError::NotMember {
                what: format!("{member} does not hold license {name:?}"),
            });
        }
        pg_touch(&mut tx, std::slice::from_ref(&key)).map_err(err)?;
        pg_event(
            &mut tx,
            "license",
            name,
            "revoked",
            actor,
            Some(&member.to_string()),
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn licenses(&mut self) -> Result<Vec<LicenseView>, StoreError> {
        let url = self.url.clone();
        let names: Vec<String> = self
            .client
            .query("SELECT name FROM licenses ORDER BY name", &[])
            .map_err(|e| pg_err(&url, e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        names.iter().map(|n| self.license(n)).collect()
    }

    fn license(&mut self, name: &str) -> Result<LicenseView, StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let row = self
            .client
            .query_opt(
                "SELECT seats, valid_until, created_at FROM licenses WHERE name = $1",
                &[&name],
            )
            .map_err(err)?
            .ok_or_else(|| no_license(name))?;
        let keys = pg_keys(
            &mut self.client,
            "SELECT member FROM license_holders WHERE license_name = $1",
            name,
        )
        .map_err(err)?;
        Ok(license_view(
            name.to_owned(),
            row.get(0),
            row.get(1),
            row.get(2),
            keys,
            unix_now(),
        ))
    }

    fn access_events(&mut self, kind: &str, name: &str) -> Result<Vec<AccessEvent>, StoreError> {
        let url = self.url.clone();
        let rows = self
            .client
            .query(
                "SELECT at, kind, name, event, actor, detail FROM access_events
                 WHERE kind = $1 AND name = $2 ORDER BY id",
                &[&kind, &name],
            )
            .map_err(|e| pg_err(&url, e))?;
        Ok(rows
            .iter()
            .map(|r| AccessEvent {
                at: rfc3339(r.get(0)),
                kind: r.get(1),
                name: r.get(2),
                event: r.get(3),
                actor: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_and_a_small_charset() {
        for ok in ["apiary-42", "a", "season.2026_video", "0x"] {
            assert!(check_name("group", ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "Apiary-42",
            "-a",
            ".a",
            "a b",
            "a/b",
            "grüppe",
            "a\u{0}",
            &long,
        ] {
            assert!(check_name("group", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn members_in_paths_and_keys() {
        assert_eq!(Member::from_path("token:7"), Ok(Member::Token(7)));
        assert_eq!(Member::from_path("alice"), Ok(Member::User("alice".into())));
        for bad in [
            "token:", "token:x", "token:-1", "token:+1", "token:0", "a b", "",
        ] {
            assert!(Member::from_path(bad).is_err(), "{bad:?}");
        }
        assert!(Member::user("token:5").is_err());
        for m in [Member::User("a:b".into()), Member::Token(12)] {
            assert_eq!(Member::parse_key(&m.key()), Some(m));
        }
    }

    #[test]
    fn access_parses_the_feed_columns_sorted_and_once() {
        let a = Access::parse(
            Some("b\u{1f}reader writer\u{1e}a\u{1f}\u{1e}b\u{1f}reader writer"),
            Some("video\u{1f}100\u{1e}audio\u{1f}"),
        );
        assert_eq!(a.groups, ["a", "b"]);
        assert_eq!(a.group_roles, ["reader", "writer"]);
        assert_eq!(
            a.licenses,
            [
                ("audio".to_string(), None),
                ("video".to_string(), Some(100))
            ]
        );
        assert!(Access::parse(None, None).is_empty());
    }
}

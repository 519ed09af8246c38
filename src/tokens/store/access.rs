//! What groups and licenses are made of, shared by both backends and the rest of the crate: the SQL of
//! their migrations (SQLite 8, PostgreSQL 6) and of the change feed's columns that bring each token its
//! groups and licenses, the names' rules, members, the JSON views and [`Access`] — what a token gets,
//! as the index reads it with the token's row. The operations are [`super::groups::GroupStore`].

use super::{rfc3339, StoreError};
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

pub use crate::config::values::{check_access_name as check_name, MAX_ACCESS_NAME as MAX_NAME};

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

/// A group's members or a license's holders: the two lists a member is put on and taken off, told apart
/// only by their tables and their words (one description for both backends' SQL).
#[derive(Clone, Copy)]
pub(super) enum Roll {
    GroupMembers,
    LicenseHolders,
}

impl Roll {
    /// `DELETE` of one member (`{p}` is the backend's placeholder prefix: `?` or `$`).
    pub(super) fn delete_sql(self, p: char) -> String {
        let (table, column) = match self {
            Roll::GroupMembers => ("group_members", "group_name"),
            Roll::LicenseHolders => ("license_holders", "license_name"),
        };
        format!("DELETE FROM {table} WHERE {column} = {p}1 AND member = {p}2")
    }

    /// The names of every group or license, in order.
    pub(super) fn names_sql(self) -> &'static str {
        match self {
            Roll::GroupMembers => "SELECT name FROM groups ORDER BY name",
            Roll::LicenseHolders => "SELECT name FROM licenses ORDER BY name",
        }
    }

    /// The audit log's kind and the event of a removal.
    pub(super) fn removed_event(self) -> (&'static str, &'static str) {
        match self {
            Roll::GroupMembers => ("group", "member_removed"),
            Roll::LicenseHolders => ("license", "revoked"),
        }
    }

    /// The error for a member that was not on the list.
    pub(super) fn not_on(self, member: &Member, name: &str) -> StoreError {
        StoreError::NotMember {
            what: match self {
                Roll::GroupMembers => format!("{member} is not in group {name:?}"),
                Roll::LicenseHolders => format!("{member} does not hold license {name:?}"),
            },
        }
    }
}

pub(super) fn no_group(name: &str) -> StoreError {
    StoreError::NoGroup {
        name: name.to_owned(),
    }
}

pub(super) fn no_license(name: &str) -> StoreError {
    StoreError::NoLicense {
        name: name.to_owned(),
    }
}

pub(super) fn members_of(keys: Vec<String>) -> Vec<MemberView> {
    let mut m: Vec<Member> = keys.iter().filter_map(|k| Member::parse_key(k)).collect();
    m.sort();
    m.iter().map(Member::view).collect()
}

pub(super) fn split_roles(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_owned).collect()
}

pub(super) fn license_view(
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

pub(super) fn until_text(until: Option<i64>) -> String {
    until.map_or("no end".into(), |u| format!("valid until {}", rfc3339(u)))
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

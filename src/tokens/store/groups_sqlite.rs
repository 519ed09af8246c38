//! The SQLite side of groups and licenses ([`GroupStore`] for [`SqliteStore`]): every change in one
//! `BEGIN IMMEDIATE` transaction, so a seat is counted and taken under the write lock.

use super::access::{
    license_view, members_of, no_group, no_license, split_roles, until_text, AccessEvent,
    GroupView, LicenseView, Member, Roll,
};
use super::groups::GroupStore;
use super::sqlite::{to_err as sqlite_err, SqliteStore};
use super::{rfc3339, unix_now, StoreError};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

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

    /// Takes `member` off a group or a license, touches its tokens and records the event.
    fn take_off(
        &mut self,
        roll: Roll,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        let tx = self.immediate()?;
        let key = member.key();
        let n = tx
            .execute(&roll.delete_sql('?'), params![name, key])
            .map_err(err)?;
        if n == 0 {
            return Err(roll.not_on(member, name));
        }
        sqlite_touch(&tx, std::slice::from_ref(&key)).map_err(err)?;
        let (kind, event) = roll.removed_event();
        sqlite_event(&tx, kind, name, event, actor, Some(&member.to_string())).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The names of every group or license.
    fn names(&mut self, roll: Roll) -> Result<Vec<String>, StoreError> {
        let path = self.path.clone();
        let err = |e| sqlite_err(&path, e);
        self.conn
            .prepare_cached(roll.names_sql())
            .map_err(err)?
            .query_map([], |r| r.get(0))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)
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
        self.take_off(Roll::GroupMembers, name, member, actor)
    }

    fn groups(&mut self) -> Result<Vec<GroupView>, StoreError> {
        let names = self.names(Roll::GroupMembers)?;
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
        self.take_off(Roll::LicenseHolders, name, member, actor)
    }

    fn licenses(&mut self) -> Result<Vec<LicenseView>, StoreError> {
        let names = self.names(Roll::LicenseHolders)?;
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

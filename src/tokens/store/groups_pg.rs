//! The PostgreSQL side of groups and licenses ([`GroupStore`] for [`PgStore`]): a seat is counted and
//! taken while the license row is locked (`SELECT ... FOR UPDATE`); revisions come from the counter,
//! which also queues the `NOTIFY`.

use super::access::{
    license_view, members_of, no_group, no_license, split_roles, until_text, AccessEvent,
    GroupView, LicenseView, Member, Roll,
};
use super::groups::GroupStore;
use super::pg::PgStore;
use super::pg_url::to_err as pg_err;
use super::{rfc3339, unix_now, StoreError};

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

impl PgStore {
    /// Takes `member` off a group or a license, touches its tokens and records the event.
    fn take_off(
        &mut self,
        roll: Roll,
        name: &str,
        member: &Member,
        actor: &str,
    ) -> Result<(), StoreError> {
        let url = self.url.clone();
        let err = |e| pg_err(&url, e);
        let mut tx = self.client.transaction().map_err(err)?;
        let key = member.key();
        let n = tx
            .execute(&roll.delete_sql('$'), &[&name, &key])
            .map_err(err)?;
        if n == 0 {
            return Err(roll.not_on(member, name));
        }
        pg_touch(&mut tx, std::slice::from_ref(&key)).map_err(err)?;
        let (kind, event) = roll.removed_event();
        pg_event(&mut tx, kind, name, event, actor, Some(&member.to_string())).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The names of every group or license.
    fn names(&mut self, roll: Roll) -> Result<Vec<String>, StoreError> {
        let url = self.url.clone();
        Ok(self
            .client
            .query(roll.names_sql(), &[])
            .map_err(|e| pg_err(&url, e))?
            .iter()
            .map(|r| r.get(0))
            .collect())
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
        self.take_off(Roll::GroupMembers, name, member, actor)
    }

    fn groups(&mut self) -> Result<Vec<GroupView>, StoreError> {
        let names = self.names(Roll::GroupMembers)?;
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
        self.take_off(Roll::LicenseHolders, name, member, actor)
    }

    fn licenses(&mut self) -> Result<Vec<LicenseView>, StoreError> {
        let names = self.names(Roll::LicenseHolders)?;
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

//! The `group` and `license` commands: groups of users and tokens whose roles their members' tokens
//! get, and licenses with seats and an end that routes can require (see `tokens::store::groups`).
//! Every change is recorded with the actor `cli`, and waits, like a token change, until the gateways
//! on this host have applied it.

use super::CLI_ACTOR;
use crate::config::Roles;
use crate::tokens::fields::{check_roles, parse_rfc3339};
use crate::tokens::store::groups::{
    check_name, AccessEvent, GroupView, LicenseView, Member, MemberView,
};
use crate::tokens::store::{Store, StoreError};
use clap::{Args, Subcommand};

/// Who: a user (every token of it) or one token.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// A user id: every token of this user, now and later.
    #[arg(long)]
    pub user: Option<String>,
    /// One token, by id (it keeps this through a rotation).
    #[arg(long)]
    pub token: Option<i64>,
}

impl Who {
    fn member(&self) -> anyhow::Result<Member> {
        match (&self.user, self.token) {
            (Some(u), None) => Member::user(u).map_err(anyhow::Error::msg),
            (None, Some(id)) if id > 0 => Ok(Member::Token(id)),
            (None, Some(id)) => anyhow::bail!("--token {id}: not a token id"),
            _ => anyhow::bail!("give --user or --token"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group whose members' tokens get its roles (of the configuration's `[roles]`).
    Create {
        name: String,
        /// A role the group grants (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Add a user or a token to a group.
    Add {
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// Remove a user or a token from a group.
    Remove {
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// List the groups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a group: roles, members, its change log.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a group: its members lose its roles.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum LicenseCommand {
    /// Create a license with a number of seats, valid until a time or without end.
    Create {
        name: String,
        #[arg(long)]
        seats: i64,
        /// The license's end (RFC 3339); from then on it grants nothing. Default: no end.
        #[arg(long)]
        valid_until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Give a user or a token a seat (refused when every seat is taken).
    Assign {
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// Take a seat back.
    Revoke {
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// List the licenses: seats used / total, validity.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a license: seats, holders, validity, its change log.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn named(kind: &str, name: &str) -> anyhow::Result<()> {
    check_name(kind, name).map_err(anyhow::Error::msg)
}

/// Runs a `group` command; `true` when it changed the store.
pub fn group(store: &mut Store, roles: &Roles, command: GroupCommand) -> anyhow::Result<bool> {
    match command {
        GroupCommand::Create {
            name,
            roles: r,
            json,
        } => {
            named("group", &name)?;
            check_roles(&r, roles).map_err(anyhow::Error::msg)?;
            let mut r = r;
            r.sort();
            r.dedup();
            let g = store.group_create(&name, &r, CLI_ACTOR)?;
            print_group(&g, &[], json);
            Ok(true)
        }
        GroupCommand::Add { name, who } => {
            let m = who.member()?;
            let added = store.group_add(&name, &m, CLI_ACTOR)?;
            println!(
                "{m} {} group {name}",
                if added { "added to" } else { "was already in" }
            );
            Ok(added)
        }
        GroupCommand::Remove { name, who } => {
            let m = who.member()?;
            store.group_remove(&name, &m, CLI_ACTOR)?;
            println!("{m} removed from group {name}");
            Ok(true)
        }
        GroupCommand::List { json } => {
            let all = store.groups()?;
            if json {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                println!("{:<24} {:<30} MEMBERS", "NAME", "ROLES");
                for g in &all {
                    println!(
                        "{:<24} {:<30} {}",
                        g.name,
                        g.roles.join(" "),
                        g.members.len()
                    );
                }
            }
            Ok(false)
        }
        GroupCommand::Show { name, json } => {
            let g = store.group(&name)?;
            let events = store.access_events("group", &name)?;
            print_group(&g, &events, json);
            Ok(false)
        }
        GroupCommand::Delete { name } => {
            store.group_delete(&name, CLI_ACTOR)?;
            println!("group {name} deleted");
            Ok(true)
        }
    }
}

/// Runs a `license` command; `true` when it changed the store.
pub fn license(store: &mut Store, command: LicenseCommand) -> anyhow::Result<bool> {
    match command {
        LicenseCommand::Create {
            name,
            seats,
            valid_until,
            json,
        } => {
            named("license", &name)?;
            if !(0..=1_000_000_000).contains(&seats) {
                anyhow::bail!("--seats {seats}: give 0 to 1000000000 seats");
            }
            let until = valid_until
                .as_deref()
                .map(parse_rfc3339)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--valid-until: {e}"))?;
            let l = store.license_create(&name, seats, until, CLI_ACTOR)?;
            print_license(&l, &[], json);
            Ok(true)
        }
        LicenseCommand::Assign { name, who } => {
            let m = who.member()?;
            let added = match store.license_assign(&name, &m, CLI_ACTOR) {
                Err(e @ StoreError::SeatsTaken { .. }) => anyhow::bail!("{e}"),
                other => other?,
            };
            println!(
                "{m} {} a seat of license {name}",
                if added { "holds" } else { "already held" }
            );
            Ok(added)
        }
        LicenseCommand::Revoke { name, who } => {
            let m = who.member()?;
            store.license_revoke(&name, &m, CLI_ACTOR)?;
            println!("{m} no longer holds license {name}");
            Ok(true)
        }
        LicenseCommand::List { json } => {
            let all = store.licenses()?;
            if json {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                println!("{:<24} {:>11} {:<22} VALID", "NAME", "SEATS", "VALID UNTIL");
                for l in &all {
                    println!(
                        "{:<24} {:>11} {:<22} {}",
                        l.name,
                        format!("{}/{}", l.seats_used, l.seats),
                        l.valid_until.as_deref().unwrap_or("-"),
                        if l.valid { "yes" } else { "no (ended)" }
                    );
                }
            }
            Ok(false)
        }
        LicenseCommand::Show { name, json } => {
            let l = store.license(&name)?;
            let events = store.access_events("license", &name)?;
            print_license(&l, &events, json);
            Ok(false)
        }
    }
}

fn member_text(m: &crate::tokens::store::groups::MemberView) -> String {
    match (&m.user, m.token_id) {
        (Some(u), _) => format!("user {u}"),
        (None, Some(id)) => format!("token {id}"),
        _ => String::new(),
    }
}

fn print_events(events: &[AccessEvent]) {
    if events.is_empty() {
        return;
    }
    println!("events:");
    for e in events {
        println!(
            "  {}  {:<15} {:<12} {}",
            e.at,
            e.event,
            e.actor,
            e.detail.as_deref().unwrap_or("")
        );
    }
}

fn with_events<T: serde::Serialize>(view: &T, events: &[AccessEvent]) -> String {
    let mut v = serde_json::to_value(view).expect("json");
    if !events.is_empty() {
        v["events"] = serde_json::to_value(events).expect("json");
    }
    v.to_string()
}

fn print_group(g: &GroupView, events: &[AccessEvent], json: bool) {
    if json {
        println!("{}", with_events(g, events));
        return;
    }
    println!("group:   {}", g.name);
    println!(
        "roles:   {}",
        if g.roles.is_empty() {
            "none".into()
        } else {
            g.roles.join(" ")
        }
    );
    println!("created: {}", g.created_at);
    println!("members: {}", g.members.len());
    for m in &g.members {
        println!("  {}", member_text(m));
    }
    print_events(events);
}

fn print_license(l: &LicenseView, events: &[AccessEvent], json: bool) {
    if json {
        println!("{}", with_events(l, events));
        return;
    }
    println!("license:     {}", l.name);
    println!("seats:       {}/{} used", l.seats_used, l.seats);
    println!(
        "valid until: {}{}",
        l.valid_until.as_deref().unwrap_or("no end"),
        if l.valid { "" } else { " (ended)" }
    );
    println!("created:     {}", l.created_at);
    for h in &l.holders {
        println!("  {}", member_text(h));
    }
    print_events(events);
}

/// `store copy`: the groups and licenses of `source`, with their members and seat holders, made on
/// `dest` (whose tokens were just copied with their ids, so a token member names the same token).
/// A group or license the target has already must be the same (roles; seats and end), else the copy
/// is refused naming it; members and holders are added where missing. Their audit logs stay with the
/// source; the target's records the copy (actor `store copy`). Returns how many things it changed.
pub fn copy(source: &mut Store, dest: &mut Store) -> anyhow::Result<usize> {
    const ACTOR: &str = "store copy";
    let member = |m: &MemberView| match (&m.user, m.token_id) {
        (None, Some(id)) => Ok(Member::Token(id)),
        (Some(u), None) => Ok(Member::User(u.clone())),
        _ => anyhow::bail!("a member that is neither a user nor a token"),
    };
    let mut changed = 0;
    for g in source.groups()? {
        match dest.group_create(&g.name, &g.roles, ACTOR) {
            Ok(_) => changed += 1,
            Err(StoreError::Exists { .. }) => {
                let there = dest.group(&g.name)?;
                if there.roles != g.roles {
                    anyhow::bail!(
                        "the target has a group {:?} with other roles ({:?}, here {:?}): remove it there or copy with --force",
                        g.name,
                        there.roles,
                        g.roles
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
        for m in &g.members {
            changed += usize::from(dest.group_add(&g.name, &member(m)?, ACTOR)?);
        }
    }
    for l in source.licenses()? {
        let until = l
            .valid_until
            .as_deref()
            .map(parse_rfc3339)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        match dest.license_create(&l.name, l.seats, until, ACTOR) {
            Ok(_) => changed += 1,
            Err(StoreError::Exists { .. }) => {
                let there = dest.license(&l.name)?;
                if (there.seats, &there.valid_until) != (l.seats, &l.valid_until) {
                    anyhow::bail!(
                        "the target has a license {:?} with other seats or end: remove it there or copy with --force",
                        l.name
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
        for h in &l.holders {
            changed += usize::from(dest.license_assign(&l.name, &member(h)?, ACTOR)?);
        }
    }
    Ok(changed)
}

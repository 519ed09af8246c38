//! The command line: `serve`, `check-config`, the `token` commands and (in [`access`]) the `group` and
//! `license` commands. `main.rs` only parses and calls [`run`]. Output for people goes to stdout as aligned tables; `--json` gives machine-readable objects.

pub mod access;

use crate::config::{self, Config};
use crate::tokens::fields::{cert_thumbprint, expiry, grace_until, parse_grace};
use crate::tokens::input::{self, NewInput, PatchInput};
use crate::tokens::store::{self, Location, Store, TokenRecord};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// The actor recorded in the event log for CLI changes.
const CLI_ACTOR: &str = "cli";

#[derive(Parser, Debug)]
#[command(
    name = "tokengate",
    version,
    about = "Bearer-token authentication gateway on pingora"
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(short, long, global = true, default_value = "config/tokengate.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Take over the listening sockets of a running tokengate (after it gets SIGQUIT).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the configuration file and exit (0 when valid).
    CheckConfig,
    /// Manage tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage groups: their members' tokens get the group's roles, and routes can require one.
    Group {
        #[command(subcommand)]
        command: access::GroupCommand,
    },
    /// Manage licenses: seats with an end, which routes can require.
    License {
        #[command(subcommand)]
        command: access::LicenseCommand,
    },
    /// Manage the store: apply its schema, copy it to another store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Apply the schema migrations the configured store lacks (`serve` does it on start too).
    Migrate,
    /// Copy every token, event and usage figure from the configured store into an empty target,
    /// creating its schema: `postgres://...` or `sqlite:PATH`.
    Copy {
        /// The target store.
        #[arg(long)]
        to: String,
        /// Replace what the target holds.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; the plaintext is printed once and never stored.
    Create {
        /// The user id the gateway will inject for this token.
        #[arg(long)]
        user: String,
        /// A label to recognise the token by (e.g. the device).
        #[arg(long)]
        label: String,
        /// Expire after this long (30s, 15m, 12h, 90d; at the latest 9999-12-31T23:59:59Z). Default: never.
        #[arg(long, conflicts_with = "expires_at", value_parser = expires_in_arg)]
        expires_in: Option<String>,
        /// Expire at this RFC 3339 time. Default: never.
        #[arg(long, value_parser = expires_at_arg)]
        expires_at: Option<String>,
        /// Restrict the token to this scope (repeatable). Default: full access.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Give the token this role of the configuration's `[roles]` (repeatable; with `--scope` too).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Bind the token to the device certificate in this PEM file: it then works only over TLS with
        /// that client certificate.
        #[arg(long, conflicts_with = "bind_cert_sha256")]
        bind_cert: Option<PathBuf>,
        /// Bind the token to the certificate with this SHA-256 thumbprint (of its DER, hex).
        #[arg(long)]
        bind_cert_sha256: Option<String>,
        /// The token's own rate limit, all routes together (5/s, 300/m, 10000/h).
        #[arg(long)]
        rate_limit: Option<String>,
        /// Accepted requests per calendar period, UTC (100000/day, 2000000/month).
        #[arg(long)]
        quota: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a token's label, expiry or limits without rotating it (`none` clears a limit).
    Set {
        id: i64,
        #[arg(long)]
        label: Option<String>,
        /// A new expiry (duration from now), or `never`.
        #[arg(long, value_parser = new_expiry_arg)]
        expires_in: Option<String>,
        /// 5/s, 300/m, 10000/h, or none.
        #[arg(long)]
        rate_limit: Option<String>,
        /// 100000/day, 2000000/month, or none.
        #[arg(long)]
        quota: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one token with its lifecycle events.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once (gateways on this host have applied it when the command returns, at most
    /// 1 s later; gateways elsewhere within their sync interval).
    Revoke { id: i64 },
    /// Report leaked tokens (a JSON array of {token, type, url, source}, as GitHub sends; `-`: stdin):
    /// ours are revoked (or only recorded with [leaks] action = "report"), as by the partner endpoint.
    Leaked {
        #[arg(long)]
        from_file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Give a token a new secret; with --grace the old one keeps working that long.
    Rotate {
        id: i64,
        /// How long the old secret stays valid (e.g. 10m). Default: it stops at once.
        #[arg(long, value_parser = grace_arg)]
        grace: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { upgrade } => {
            let config = Config::load(&cli.config)?;
            let location = Location::from_config(&config.store).ok();
            for w in warnings(&config, location.as_ref()) {
                log::warn!("{}: {w}", cli.config.display());
            }
            crate::server::serve(config, upgrade)
        }
        Command::CheckConfig => {
            let c = Config::load(&cli.config)?;
            let file = cli.config.display();
            let location = Location::from_config(&c.store)
                .map_err(|e| anyhow::anyhow!("{file}: [store]: {e}"))?;
            for w in warnings(&c, Some(&location)) {
                eprintln!("warning: {file}: {w}");
            }
            // The files the config names: certificates and keys, client and upstream CAs.
            crate::transport::Table::new(&c, &crate::telemetry::metrics::Metrics::new(), None)
                .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            if let Some(t) = &c.tls {
                let certs = crate::transport::tls::load_certificates(&t.certificates)
                    .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
                crate::transport::tls::edge_config(t, None, None)
                    .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
                for w in crate::transport::tls::warnings(
                    &t.certificates,
                    &certs,
                    std::time::SystemTime::now(),
                ) {
                    eprintln!("warning: {file}: {w}");
                }
                if t.client_ca.is_some() {
                    for w in crate::transport::tls::device_warnings(&certs) {
                        eprintln!("warning: {file}: {w}");
                    }
                }
                for cert in certs.iter() {
                    println!("{file}: {}", cert.summary());
                }
            }
            if let Some(t) = c.verify.as_ref().and_then(|v| v.tls.as_ref()) {
                crate::transport::tls::edge_config(t, None, None)
                    .map_err(|e| anyhow::anyhow!("{file}: [verify.tls]: {e}"))?;
            }
            println!(
                "{file}: ok ({} routes, store {}{})",
                c.routes.len(),
                c.store.describe(),
                c.tls
                    .as_ref()
                    .map(|t| format!(
                        ", TLS on {} with {} certificates",
                        t.listen,
                        t.certificates.len()
                    ))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Command::Token { command } => {
            let config = Config::load(&cli.config)?;
            let mut store = open_store(&cli.config)?;
            let changes = !matches!(
                command,
                TokenCommand::List { .. } | TokenCommand::Show { .. }
            );
            if let TokenCommand::Leaked { from_file, json } = &command {
                let feedback = crate::ops::leaks::from_file::take_file(&config, from_file)?;
                print_leak_feedback(&feedback, *json);
                wait_for_gateways(&store);
                return Ok(());
            }
            token_command(&mut store, &config.roles, command)?;
            if changes {
                wait_for_gateways(&store);
            }
            Ok(())
        }
        Command::Group { command } => {
            let config = Config::load(&cli.config)?;
            let mut store = open_store(&cli.config)?;
            if access::group(&mut store, &config.roles, command)? {
                wait_for_gateways(&store);
            }
            Ok(())
        }
        Command::License { command } => {
            let mut store = open_store(&cli.config)?;
            if access::license(&mut store, command)? {
                wait_for_gateways(&store);
            }
            Ok(())
        }
        Command::Store { command } => {
            let location = Location::from_config(&config::load_store(&cli.config)?)?;
            store_command(&location, command)
        }
    }
}

/// What `check-config` prints and `serve` logs about a valid configuration that opens a door: each
/// `KEY: problem` (the store's key when its connection is not verified TLS to another host).
fn warnings(config: &Config, location: Option<&Location>) -> Vec<String> {
    let mut out: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    if let (Some(w), config::StoreConfig::Postgres { from, .. }) =
        (location.and_then(Location::warning), &config.store)
    {
        out.push(format!("{from}: {w}"));
    }
    out
}

/// The feedback of `token leaked`: per match its SHA-256 and label (never the token).
fn print_leak_feedback(feedback: &[crate::ops::leaks::Feedback], json: bool) {
    if json {
        println!("{}", serde_json::to_string(feedback).expect("json"));
        return;
    }
    for f in feedback {
        println!("{}  {}  {}", f.token_hash, f.label, f.token_type);
    }
}

/// After a change on SQLite: waits (at most a second) until every gateway running on this host has
/// applied it, so the next request they get is decided on it (see `tokens::applied`). A gateway that
/// does not acknowledge in time is named on stderr; the change stands either way.
fn wait_for_gateways(store: &Store) {
    let Store::Sqlite(s) = store else { return };
    let Ok(rev) = s.head_rev() else { return };
    let behind = crate::tokens::applied::wait_applied(s.path(), rev, Duration::from_secs(1));
    if !behind.is_empty() {
        eprintln!(
            "warning: the gateway process(es) {behind:?} on this host have not applied the change within 1s; \
             they will within their sync interval"
        );
    }
}

/// The configured store, opened (and migrated) for a command.
fn open_store(config: &std::path::Path) -> anyhow::Result<Store> {
    let location = Location::from_config(&config::load_store(config)?)?;
    Store::open(&location)
        .with_context(|| format!("opening the token store {}", location.describe()))
}

/// Whether two stores hold the same tokens and events, their revisions aside (copying groups and
/// licenses gives the target's tokens revisions of their own).
fn same_data(a: &store::Export, b: &store::Export) -> bool {
    let unrevised = |t: &store::ExportedToken| store::ExportedToken {
        rev: 0,
        ..t.clone()
    };
    a.events == b.events
        && a.tokens.len() == b.tokens.len()
        && a.tokens
            .iter()
            .zip(&b.tokens)
            .all(|(x, y)| unrevised(x) == unrevised(y))
}

fn store_command(from: &Location, command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Migrate => {
            let mut store = Store::open(from)?;
            let (version, known) = store.schema_version()?;
            println!(
                "{}: schema version {version} (this tokengate knows {known})",
                from.describe()
            );
            Ok(())
        }
        StoreCommand::Copy { to, force } => {
            let target = Location::parse_target(&to)?;
            if target.describe() == from.describe() {
                anyhow::bail!("the target is the configured store itself");
            }
            let mut source = Store::open(from)?;
            let data = source.export()?;
            // The TLS ticket keys too, so that devices keep resuming after the move.
            let keys = source.ticket_keys()?;
            let mut dest = Store::open(&target)
                .with_context(|| format!("opening the target {}", target.describe()))?;
            // Idempotent: a target holding exactly this data is fine as it is.
            if same_data(&dest.export()?, &data) && dest.ticket_keys()? == keys {
                // Groups and licenses the target lacks are still added.
                if access::copy(&mut source, &mut dest)? == 0 {
                    println!(
                        "{} already holds these {} tokens and {} events; nothing to do",
                        target.describe(),
                        data.tokens.len(),
                        data.events.len()
                    );
                    return Ok(());
                }
            } else {
                dest.import(&data, force)?;
                dest.replace_ticket_keys(&keys)?;
                access::copy(&mut source, &mut dest)?;
            }
            let (groups, licenses) = (source.groups()?.len(), source.licenses()?.len());
            println!(
                "copied {} tokens, {} events, {groups} groups and {licenses} licenses from {} to {}",
                data.tokens.len(),
                data.events.len(),
                from.describe(),
                target.describe()
            );
            Ok(())
        }
    }
}

fn token_command(
    store: &mut Store,
    roles: &crate::config::Roles,
    command: TokenCommand,
) -> anyhow::Result<()> {
    let now = store::unix_now();
    match command {
        TokenCommand::Create {
            user,
            label,
            expires_in,
            expires_at,
            scopes,
            roles: wanted_roles,
            bind_cert,
            bind_cert_sha256,
            rate_limit,
            quota,
            json,
        } => {
            // A certificate file is read here (the API takes the thumbprint only); every field is
            // checked by the one validation the admin API also uses.
            let bound_cert = bind_cert.as_deref().map(read_bound_cert).transpose()?;
            let mut new = input::new_token(
                NewInput {
                    user,
                    label,
                    expires_in,
                    expires_at,
                    scopes,
                    roles: wanted_roles,
                    bound_cert_sha256: bind_cert_sha256,
                    rate_limit,
                    quota,
                },
                roles,
            )
            .map_err(|e| anyhow::anyhow!(e.for_cli()))?;
            if bound_cert.is_some() {
                new.bound_cert = bound_cert;
            }
            let (record, token) = store.create(&new, CLI_ACTOR)?;
            print_secret(&record, token.as_str(), json, now)
        }
        TokenCommand::List { user, json } => {
            let records = store.list(user.as_deref())?;
            if json {
                let views: Vec<_> = records.iter().map(|r| r.view(now)).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print!("{}", table(&records, now));
            }
            Ok(())
        }
        TokenCommand::Show { id, json } => {
            print_token(&store.get(id)?, store.events(id)?, json, now)
        }
        TokenCommand::Set {
            id,
            label,
            expires_in,
            rate_limit,
            quota,
            json,
        } => {
            let patch = cli_patch(label, expires_in, rate_limit, quota)?;
            let (record, changed) = store.update(id, &patch, CLI_ACTOR)?;
            print_update(&record, changed, json, now)
        }
        // Needs the configuration as well as the store: taken in `run` before this.
        TokenCommand::Leaked { .. } => {
            anyhow::bail!("token leaked is taken with the configuration")
        }
        TokenCommand::Revoke { id } => {
            let (record, changed) = store.revoke(id, CLI_ACTOR)?;
            if changed {
                println!(
                    "revoked token {} ({}, user {})",
                    record.id, record.label, record.user
                );
            } else {
                println!("token {} was already revoked", record.id);
            }
            Ok(())
        }
        TokenCommand::Rotate { id, grace, json } => {
            if let Some(g) = grace {
                grace_until(store::unix_now(), g).map_err(|e| anyhow::anyhow!("--grace: {e}"))?;
            }
            let (record, token) = store
                .rotate(id, grace, CLI_ACTOR)
                .with_context(|| format!("rotating token {id}"))?;
            print_secret(&record, token.as_str(), json, now)
        }
    }
}

/// What `token set` prints: the token (`--json`), or whether it changed.
fn print_update(record: &TokenRecord, changed: bool, json: bool, now: i64) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&record.view(now))?);
    } else if changed {
        println!(
            "updated token {} ({}, user {})",
            record.id, record.label, record.user
        );
    } else {
        println!("token {} already had these settings", record.id);
    }
    Ok(())
}

/// The thumbprint of the certificate in the PEM file given to `--bind-cert` (the API takes the
/// thumbprint only).
fn read_bound_cert(file: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    let pem = std::fs::read(file)
        .with_context(|| format!("--bind-cert: cannot read {}", file.display()))?;
    cert_thumbprint(&pem).map_err(|e| anyhow::anyhow!("--bind-cert {}: {e}", file.display()))
}

/// `token show`: the token's row and its events, as a table or JSON.
fn print_token(
    record: &store::TokenRecord,
    events: Vec<store::Event>,
    json: bool,
    now: i64,
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(record.view(now))?;
        v["events"] = serde_json::to_value(&events)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", table(std::slice::from_ref(record), now));
    println!("\nEVENTS");
    for e in events {
        println!(
            "  {}  {:<8} by {}  {}",
            store::rfc3339(e.at),
            e.event,
            e.actor,
            e.detail.unwrap_or_default()
        );
    }
    Ok(())
}

/// `token set`'s flags as a change, checked by the validation the admin API also uses (`never` and
/// `none` are the CLI's spelling of a removal). Nothing to change is an error.
fn cli_patch(
    label: Option<String>,
    expires_in: Option<String>,
    rate_limit: Option<String>,
    quota: Option<String>,
) -> anyhow::Result<store::TokenPatch> {
    let removable = |v: Option<String>, none: &str| v.map(|v| (v != none).then_some(v));
    let never = expires_in.as_deref() == Some("never");
    let patch = input::token_patch(PatchInput {
        label,
        expires_in: expires_in.filter(|_| !never),
        expires_at: never.then_some(None),
        rate_limit: removable(rate_limit, "none"),
        quota: removable(quota, "none"),
    })
    .map_err(|e| anyhow::anyhow!(e.for_cli()))?;
    if patch.is_empty() {
        anyhow::bail!("nothing to change: give --label, --expires-in, --rate-limit or --quota");
    }
    Ok(patch)
}

/// `--expires-in` of `token create`: refused as a usage error (exit 2, no store opened) when it is not a
/// duration or ends past 9999-12-31T23:59:59Z. The value is read again at the time of the change.
fn expires_in_arg(text: &str) -> Result<String, String> {
    expiry(Some(text), None).map(|_| text.to_owned())
}

/// `--expires-at` of `token create`, checked as `--expires-in` is.
fn expires_at_arg(text: &str) -> Result<String, String> {
    expiry(None, Some(text)).map(|_| text.to_owned())
}

/// `--expires-in` of `token set`: a duration as for create, or `never`.
fn new_expiry_arg(text: &str) -> Result<String, String> {
    match text {
        "never" => Ok(text.to_owned()),
        _ => expires_in_arg(text),
    }
}

/// `--grace` of `token rotate`: a duration that ends by 9999-12-31T23:59:59Z.
fn grace_arg(text: &str) -> Result<Duration, String> {
    parse_grace(text)
}

fn print_secret(record: &TokenRecord, token: &str, json: bool, now: i64) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::to_value(record.view(now))?;
        v["token"] = token.into();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "{token}")?;
    }
    out.flush()?;
    eprintln!(
        "token {} for user {} ({}): this is the only time it is shown; store it now.",
        record.id, record.user, record.label
    );
    Ok(())
}

/// An aligned table of tokens for people.
pub fn table(records: &[TokenRecord], now: i64) -> String {
    let header = [
        "ID",
        "USER",
        "LABEL",
        "STATUS",
        "CREATED",
        "LAST USED",
        "USES",
        "EXPIRES",
        "SCOPES",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.user.clone(),
                r.label.clone(),
                r.status(now).as_str().to_string(),
                store::rfc3339(r.created_at),
                r.last_used_at
                    .map(store::rfc3339)
                    .unwrap_or_else(|| "never".into()),
                r.use_count.to_string(),
                r.expires_at
                    .map(store::rfc3339)
                    .unwrap_or_else(|| "never".into()),
                if r.scopes.is_empty() {
                    "(all)".into()
                } else {
                    r.scopes.join(",")
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(cell);
                l.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str("(no tokens)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let r = TokenRecord {
            id: 1,
            user: "alice".into(),
            label: "hive".into(),
            scopes: vec![],
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            rotated_at: None,
            last_used_at: None,
            use_count: 0,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
        };
        let t = table(&[r], 10);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].find("USER"), lines[1].find("alice"));
        assert_eq!(lines[0].find("STATUS"), lines[1].find("active"));
    }
}

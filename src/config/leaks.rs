//! The `[leaks]` table: the secret-scanning partner endpoint on the gateway's listeners (GitHub POSTs the
//! tokens it found in public code there), where its verification keys come from, what a confirmed leak
//! does, and the owner-notification webhook. The endpoint itself lives in [`crate::ops`]'s leaks room.

use super::context::Ctx;
use super::model::ConfigError;
pub use super::model::{KeySource, LeakAction, LeaksConfig};
use serde::Deserialize;
use std::net::IpAddr;

/// The path GitHub is told to POST to, when `listen_path` is not set.
pub const DEFAULT_LISTEN_PATH: &str = "/.well-known/tokengate/secret-scanning";

/// `[leaks]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLeaks {
    listen_path: Option<String>,
    public_keys_file: Option<String>,
    public_keys_url: Option<String>,
    action: Option<String>,
    notify_url: Option<String>,
    notify_secret_file: Option<String>,
}

/// Validates `[leaks]`.
pub(super) fn leaks(cx: &Ctx, raw: FileLeaks) -> Result<LeaksConfig, ConfigError> {
    let listen_path = raw
        .listen_path
        .unwrap_or_else(|| DEFAULT_LISTEN_PATH.to_owned());
    check_path(&listen_path).map_err(|p| cx.err("leaks.listen_path", p))?;
    let keys = match (raw.public_keys_file, raw.public_keys_url) {
        (Some(_), Some(_)) => {
            return Err(cx.err(
                "leaks.public_keys_url",
                "give public_keys_file or public_keys_url, not both",
            ))
        }
        (None, None) => {
            return Err(cx.err(
                "leaks.public_keys_file",
                "is required (or public_keys_url): without the partner's keys no report can be verified",
            ))
        }
        (Some(f), None) if f.is_empty() => {
            return Err(cx.err("leaks.public_keys_file", "must not be empty"))
        }
        (Some(f), None) => KeySource::File(cx.path(&f)),
        (None, Some(u)) => {
            check_fetch_url(&u).map_err(|p| cx.err("leaks.public_keys_url", p))?;
            KeySource::Url(u)
        }
    };
    let action = match raw.action.as_deref() {
        None | Some("revoke") => LeakAction::Revoke,
        Some("report") => LeakAction::Report,
        Some(other) => {
            return Err(cx.err(
                "leaks.action",
                format!("{other:?} is not one of \"revoke\", \"report\""),
            ))
        }
    };
    let notify_secret_file = raw.notify_secret_file.map(|f| cx.path(&f));
    match (&raw.notify_url, &notify_secret_file) {
        (Some(u), Some(_)) => {
            check_hook_url(u).map_err(|p| cx.err("leaks.notify_url", p))?;
        }
        (Some(_), None) => {
            return Err(cx.err(
                "leaks.notify_secret_file",
                "is required with notify_url: the webhook is always signed",
            ))
        }
        (None, Some(_)) => {
            return Err(cx.err(
                "leaks.notify_url",
                "is required with notify_secret_file (or remove notify_secret_file)",
            ))
        }
        (None, None) => {}
    }
    Ok(LeaksConfig {
        listen_path,
        keys,
        action,
        notify_url: raw.notify_url,
        notify_secret_file,
    })
}

fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    if p.len() > 256 {
        return Err("is longer than 256 characters".into());
    }
    if p == "/" {
        return Err("must not be / (every request would be taken for a report)".into());
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
    {
        return Err(format!(
            "{p:?} may hold only letters, digits and / - . _ ~ (no query, no escapes)"
        ));
    }
    if p.split('/').any(|s| s == "." || s == "..") || p.contains("//") {
        return Err(format!(
            "{p:?} must not contain . or .. segments or empty ones"
        ));
    }
    Ok(())
}

/// `https://...`, or `http://` to a loopback address (a local mirror).
fn check_fetch_url(u: &str) -> Result<(), String> {
    if u.starts_with("https://") && u.len() > "https://".len() {
        return Ok(());
    }
    if let Some(rest) = u.strip_prefix("http://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
        return Err(format!(
            "{u:?}: http:// is only allowed to a loopback address; use https://"
        ));
    }
    Err(format!("{u:?} is not an https:// URL"))
}

/// The webhook: `https://`, or `http://` (a platform hook on an internal network); the body is signed
/// either way.
fn check_hook_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("{u:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || u.chars().any(|c| c.is_whitespace()) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(check_path(DEFAULT_LISTEN_PATH).is_ok());
        for bad in ["x", "/", "/a/../b", "/a?x", "/a//b", "/a%2fb", "/a b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetch_urls() {
        assert!(check_fetch_url("https://api.github.com/meta/public_keys/secret_scanning").is_ok());
        assert!(check_fetch_url("http://127.0.0.1:9999/keys").is_ok());
        assert!(check_fetch_url("http://[::1]:9999/keys").is_ok());
        assert!(check_fetch_url("http://localhost/keys").is_ok());
        assert!(check_fetch_url("http://example.com/keys").is_err());
        assert!(check_fetch_url("http://127.0.0.1.evil.com/keys").is_err());
        assert!(check_fetch_url("ftp://x").is_err());
    }

    fn parse(leaks: &str) -> Result<super::super::Config, ConfigError> {
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"127.0.0.1:9\"\n[leaks]\n{leaks}\n"
        );
        super::super::Config::parse(&text, std::path::Path::new("/etc/tg/tokengate.toml"))
    }

    #[test]
    fn the_table_is_validated_naming_the_key() {
        let c = parse("public_keys_file = \"keys.json\"").unwrap();
        let l = c.leaks.unwrap();
        assert_eq!(l.listen_path, DEFAULT_LISTEN_PATH);
        assert_eq!(l.keys, KeySource::File("/etc/tg/keys.json".into()));
        assert_eq!(l.action, LeakAction::Revoke);
        for (toml, key) in [
            ("", "leaks.public_keys_file"),
            (
                "public_keys_file = \"k\"\npublic_keys_url = \"https://x\"",
                "leaks.public_keys_url",
            ),
            (
                "public_keys_url = \"http://example.com/k\"",
                "leaks.public_keys_url",
            ),
            (
                "public_keys_file = \"k\"\naction = \"delete\"",
                "leaks.action",
            ),
            (
                "public_keys_file = \"k\"\nlisten_path = \"/\"",
                "leaks.listen_path",
            ),
            (
                "public_keys_file = \"k\"\nnotify_url = \"https://hooks\"",
                "leaks.notify_secret_file",
            ),
            (
                "public_keys_file = \"k\"\nnotify_secret_file = \"s\"",
                "leaks.notify_url",
            ),
            (
                "public_keys_file = \"k\"\nnotify_url = \"ftp://x\"\nnotify_secret_file = \"s\"",
                "leaks.notify_url",
            ),
            ("public_keys_file = \"k\"\nwhat = 1", "leaks.what"),
        ] {
            let e = parse(toml).unwrap_err();
            assert!(e.key.starts_with(key), "{toml}: {e}");
            assert_eq!(e.file, "/etc/tg/tokengate.toml");
        }
    }
}

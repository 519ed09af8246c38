//! The `[verify]` table (the verify listener that other proxies ask: nginx `auth_request`, Caddy
//! `forward_auth`, Traefik ForwardAuth, Envoy `ext_authz`, and MQTT brokers) and the `[mqtt]` table (how
//! MQTT usernames are read and the `[[mqtt.topics]]` rules). The listener itself lives in the
//! transport; the decisions it asks in the gateway room.

use super::context::Ctx;
use super::file::{FileMqtt, FileVerify};
use super::model::{ConfigError, IpNet};
pub use super::model::{MqttConfig, MqttMode, MqttUsername, TopicAction, TopicRule, VerifyConfig};
use super::values::{check_listen, check_prefix, check_scope};

/// The placeholder a topic pattern may hold: the authenticated token's user id.
pub const USER_ID_PLACEHOLDER: &str = "{user_id}";

/// Validates `[verify]`.
pub(super) fn verify(cx: &Ctx, raw: FileVerify) -> Result<VerifyConfig, ConfigError> {
    check_listen(&raw.listen).map_err(|p| cx.err("verify.listen", p))?;
    let mut trusted_proxies = Vec::with_capacity(raw.trusted_proxies.len());
    for (i, p) in raw.trusted_proxies.iter().enumerate() {
        trusted_proxies.push(IpNet::parse(p).ok_or_else(|| {
            cx.err(
                &format!("verify.trusted_proxies[{i}]"),
                format!("{p:?} is not an IP address or CIDR"),
            )
        })?);
    }
    if trusted_proxies.is_empty() {
        return Err(cx.err(
            "verify.trusted_proxies",
            "is required: without it every asker would be refused (403)",
        ));
    }
    let cache_seconds = raw.cache_seconds.unwrap_or(0);
    if cache_seconds > 3600 {
        return Err(cx.err(
            "verify.cache_seconds",
            format!("{cache_seconds} is more than an hour: a revoked token would keep working that long in the asker's cache"),
        ));
    }
    let path_prefix = match raw.path_prefix {
        None => None,
        Some(p) => {
            check_prefix(&p).map_err(|e| cx.err("verify.path_prefix", e))?;
            let p = p.trim_end_matches('/').to_owned();
            if p.is_empty() || p.starts_with("/mqtt") {
                return Err(cx.err(
                    "verify.path_prefix",
                    "must not be / or under /mqtt (the MQTT endpoints live there)",
                ));
            }
            Some(p)
        }
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(super::tls::tls_at(
            cx,
            super::file::FileTls {
                listen: raw.listen.clone(),
                min_version: t.min_version,
                client_ca: t.client_ca,
                client_auth: t.client_auth,
                certificates: t.certificates,
                // The verify listener's askers are proxies, not battery devices: the defaults.
                session_tickets: None,
                ticket_lifetime: None,
                max_fragment_size: None,
                early_data: None,
                // HTTP/1.1 only: forward auth and MQTT askers speak it, and the verify engine has
                // no HTTP/2 loop.
                alpn: None,
            },
            "verify.tls",
        )?),
    };
    Ok(VerifyConfig {
        tls,
        listen: raw.listen,
        trusted_proxies,
        cache_seconds,
        path_prefix,
    })
}

/// Validates `[mqtt]`.
pub(super) fn mqtt(cx: &Ctx, raw: FileMqtt) -> Result<MqttConfig, ConfigError> {
    let username = match raw.mqtt_username.as_deref() {
        None | Some("free") => MqttUsername::Free,
        Some("user_id") => MqttUsername::UserId,
        Some(other) => {
            return Err(cx.err(
                "mqtt.mqtt_username",
                format!("{other:?} is not one of \"free\", \"user_id\""),
            ))
        }
    };
    let mode = match raw.mqtt_mode.as_deref() {
        None | Some("json") => MqttMode::Json,
        Some("status") => MqttMode::Status,
        Some(other) => {
            return Err(cx.err(
                "mqtt.mqtt_mode",
                format!("{other:?} is not one of \"json\", \"status\""),
            ))
        }
    };
    let mut topics = Vec::with_capacity(raw.topics.len());
    for (i, t) in raw.topics.into_iter().enumerate() {
        check_pattern(&t.pattern).map_err(|p| cx.err(&format!("mqtt.topics[{i}].pattern"), p))?;
        let action = match t.action.as_deref() {
            None | Some("all") => TopicAction::All,
            Some("publish") => TopicAction::Publish,
            Some("subscribe") => TopicAction::Subscribe,
            Some(other) => {
                return Err(cx.err(
                    &format!("mqtt.topics[{i}].action"),
                    format!("{other:?} is not one of \"publish\", \"subscribe\", \"all\""),
                ))
            }
        };
        if let Some(s) = &t.required_scope {
            check_scope(s).map_err(|p| cx.err(&format!("mqtt.topics[{i}].required_scope"), p))?;
        }
        for (field, kind, v) in [
            ("required_group", "group", &t.required_group),
            ("required_license", "license", &t.required_license),
        ] {
            if let Some(n) = v {
                super::values::check_access_name(kind, n)
                    .map_err(|p| cx.err(&format!("mqtt.topics[{i}].{field}"), p))?;
            }
        }
        topics.push(TopicRule {
            pattern: t.pattern,
            action,
            required_scope: t.required_scope,
            required_group: t.required_group,
            required_license: t.required_license,
        });
    }
    Ok(MqttConfig {
        username,
        mode,
        topics,
    })
}

/// A topic filter: levels split by `/`, `+` and `#` only as whole levels (`#` last), `{user_id}`
/// anywhere inside a level, no other braces, no NUL, at most 64 KiB.
fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 65535 {
        return Err("must be 1 to 65535 bytes".into());
    }
    if p.contains('\0') {
        return Err("must not contain NUL".into());
    }
    let levels: Vec<&str> = p.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains(['+', '#']) && *level != "+" && *level != "#" {
            return Err(format!("{p:?}: + and # must stand alone between slashes"));
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err(format!("{p:?}: # must be the last level"));
        }
        if level.replace(USER_ID_PLACEHOLDER, "").contains(['{', '}']) {
            return Err(format!(
                "{p:?}: the only placeholder is {USER_ID_PLACEHOLDER}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = "[gateway]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"127.0.0.1:1\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("/etc/tg.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn verify_and_mqtt_tables() {
        let c = parse("[verify]\nlisten = \"127.0.0.1:9191\"\ntrusted_proxies = [\"127.0.0.1/32\"]\ncache_seconds = 5\npath_prefix = \"/authz/\"\n[mqtt]\nmqtt_username = \"user_id\"\nmqtt_mode = \"status\"\n[[mqtt.topics]]\npattern = \"hives/{user_id}/+/telemetry\"\naction = \"publish\"\nrequired_scope = \"telemetry:write\"\n").unwrap();
        let v = c.verify.unwrap();
        assert_eq!(
            (v.cache_seconds, v.path_prefix.as_deref()),
            (5, Some("/authz"))
        );
        assert_eq!(c.mqtt.username, super::MqttUsername::UserId);
        assert_eq!(c.mqtt.mode, super::MqttMode::Status);
        assert_eq!(c.mqtt.topics[0].action, super::TopicAction::Publish);
        let c = parse("").unwrap();
        assert!(c.verify.is_none());
        assert!(c.mqtt.topics.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        for (extra, key) in [
            ("[verify]\nlisten = \"nowhere\"\ntrusted_proxies = [\"127.0.0.1\"]\n", "verify.listen"),
            ("[verify]\nlisten = \"127.0.0.1:1\"\n", "verify.trusted_proxies"),
            ("[verify]\nlisten = \"127.0.0.1:1\"\ntrusted_proxies = [\"x\"]\n", "verify.trusted_proxies[0]"),
            ("[verify]\nlisten = \"127.0.0.1:1\"\ntrusted_proxies = [\"::1\"]\ncache_seconds = 7200\n", "verify.cache_seconds"),
            ("[verify]\nlisten = \"127.0.0.1:1\"\ntrusted_proxies = [\"::1\"]\npath_prefix = \"/mqtt\"\n", "verify.path_prefix"),
            ("[verify]\nlisten = \"127.0.0.1:1\"\ntrusted_proxies = [\"::1\"]\ncolour = 1\n", "colour"),
            ("[verify]\nlisten = \"127.0.0.1:1\"\ntrusted_proxies = [\"::1\"]\n[verify.tls]\n", "verify.tls.certificates"),
            ("[verify]\nlisten = \"127.0.0.1:1\"\ntrusted_proxies = [\"::1\"]\n[verify.tls]\nmin_version = \"1.0\"\n", "verify.tls.min_version"),
            ("[mqtt]\nmqtt_username = \"who\"\n", "mqtt.mqtt_username"),
            ("[mqtt]\nmqtt_mode = \"xml\"\n", "mqtt.mqtt_mode"),
            ("[[mqtt.topics]]\npattern = \"a/#/b\"\n", "mqtt.topics[0].pattern"),
            ("[[mqtt.topics]]\npattern = \"a/b+\"\n", "mqtt.topics[0].pattern"),
            ("[[mqtt.topics]]\npattern = \"a/{client}\"\n", "mqtt.topics[0].pattern"),
            ("[[mqtt.topics]]\npattern = \"a\"\naction = \"read\"\n", "mqtt.topics[0].action"),
            ("[[mqtt.topics]]\npattern = \"a\"\nrequired_scope = \"\"\n", "mqtt.topics[0].required_scope"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}

//! Who may do what: the `[roles]` table (role name → scopes) and the admin listener's trusted account
//! identity (`[admin] trusted_user_header` from `trusted_proxies`). Keys in errors are `roles.NAME[i]`,
//! `admin.trusted_user_header`, ...

use super::context::Ctx;
use super::file::FileAdmin;
use super::model::{AdminConfig, ConfigError, IpNet, Roles};
use super::values::{check_role, check_scope, header_name, Rate};
use std::collections::BTreeMap;

/// The `[roles]` table: every name and scope checked; each role's scopes sorted and unique.
pub(super) fn roles(cx: &Ctx, raw: BTreeMap<String, Vec<String>>) -> Result<Roles, ConfigError> {
    let mut roles = Roles::new();
    for (name, scopes) in raw {
        check_role(&name).map_err(|p| cx.err(&format!("roles.{name}"), p))?;
        for (i, s) in scopes.iter().enumerate() {
            check_scope(s).map_err(|p| cx.err(&format!("roles.{name}[{i}]"), p))?;
        }
        let mut scopes = scopes;
        scopes.sort();
        scopes.dedup();
        roles.insert(name, scopes);
    }
    Ok(roles)
}

/// The `[admin]` table beyond `listen` (checked by the caller).
pub(super) fn admin(cx: &Ctx, raw: FileAdmin) -> Result<AdminConfig, ConfigError> {
    let trusted_user_header = match &raw.trusted_user_header {
        None => None,
        Some(h) => {
            let name = header_name(h).map_err(|p| cx.err("admin.trusted_user_header", p))?;
            if name.as_str().starts_with("x-token-") || name == "cookie" {
                return Err(cx.err(
                    "admin.trusted_user_header",
                    format!("{h:?} cannot carry the account's user id"),
                ));
            }
            Some(name)
        }
    };
    let mut trusted_proxies = Vec::new();
    for (i, p) in raw.trusted_proxies.iter().flatten().enumerate() {
        trusted_proxies.push(IpNet::parse(p).ok_or_else(|| {
            cx.err(
                &format!("admin.trusted_proxies[{i}]"),
                format!("{p:?} is not an IP address or CIDR"),
            )
        })?);
    }
    match (trusted_user_header.is_some(), trusted_proxies.is_empty()) {
        (true, true) => Err(cx.err(
            "admin.trusted_proxies",
            "trusted_user_header needs the addresses it is believed from (trusted_proxies)",
        )),
        (false, false) => Err(cx.err(
            "admin.trusted_user_header",
            "trusted_proxies is set but names no header to believe",
        )),
        _ => {
            Ok(AdminConfig {
                listen: raw.listen,
                trusted_user_header,
                trusted_proxies,
                max_tokens_per_user: match raw.max_tokens_per_user {
                    None => AdminConfig::DEFAULT_MAX_TOKENS_PER_USER,
                    Some(0) => return Err(cx.err(
                        "admin.max_tokens_per_user",
                        "must be at least 1 (self-service callers could create no token at all)",
                    )),
                    Some(n) => n,
                },
                self_service_rate: match &raw.self_service_rate {
                    None => AdminConfig::DEFAULT_SELF_SERVICE_RATE,
                    Some(r) => Rate::parse(r).map_err(|p| cx.err("admin.self_service_rate", p))?,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    const BASE: &str = "[gateway]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"127.0.0.1:1\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{extra}\n{BASE}"), Path::new("/etc/tg/gw.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn roles_and_the_trusted_header() {
        let c = parse(
            "[roles]\ndevice = [\"video:upload\", \"telemetry:write\", \"video:upload\"]\nviewer = []\n\
             [admin]\ntrusted_user_header = \"X-Forwarded-User\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
        )
        .unwrap();
        assert_eq!(c.roles["device"], ["telemetry:write", "video:upload"]);
        assert!(c.roles["viewer"].is_empty());
        assert_eq!(
            c.admin.trusted_user_header.as_ref().unwrap(),
            "x-forwarded-user"
        );
        assert!(c.admin.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        let c = parse("").unwrap();
        assert!(c.roles.is_empty() && c.admin.trusted_user_header.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        for (extra, key) in [
            ("[roles]\n\"bad role\" = []", "roles.bad role"),
            ("[roles]\ndevice = [\"ok\", \"@other\"]", "roles.device[1]"),
            ("[roles]\ndevice = [\"has space\"]", "roles.device[0]"),
            ("[admin]\ntrusted_user_header = \"x-forwarded-user\"", "admin.trusted_proxies"),
            ("[admin]\ntrusted_proxies = [\"10.0.0.0/8\"]", "admin.trusted_user_header"),
            (
                "[admin]\ntrusted_user_header = \"authorization\"\ntrusted_proxies = [\"10.0.0.1\"]",
                "admin.trusted_user_header",
            ),
            (
                "[admin]\ntrusted_user_header = \"x-user\"\ntrusted_proxies = [\"nope\"]",
                "admin.trusted_proxies[0]",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.starts_with(&format!("/etc/tg/gw.toml: {key}: ")), "{extra}: {e}");
        }
    }
}

//! Configuration: the TOML file schema (serde, unknown keys rejected), its defaults, and the conversion into
//! the validated [`Config`] that the rest of the crate sees. Every error names the file, the key and the
//! problem, e.g. `config/tokengate.toml: routes[1].upstream: "nowhere" is not host:port`.
//!
//! - [`model`]: the validated types (`Config`, `RouteConfig`, ...).
//! - [`file`]: the file as written (serde structs).
//! - [`load`]: reading and checking a file; [`route`]: one `[[routes]]` entry; [`pool`]: its servers;
//!   [`tls`]: the `[tls]` table.
//! - [`access`]: who may do what — `[roles]` and the admin listener's trusted account header.
//! - [`values`]: parsers for single values (durations, scopes, header names, addresses).
//! - [`warnings`]: valid settings that open a door (`trusted_proxies` wider than one network).
//! - [`leaks`]: the `[leaks]` table (the secret-scanning endpoint).
//! - [`verify`]: the `[verify]` table (the verify listener) and `[mqtt]` (usernames, topic rules).
//! - [`store_url`]: the PostgreSQL connection string's two forms and the redaction of its password.

mod access;
mod context;
mod file;
pub mod leaks;
mod load;
pub mod model;
mod pool;
mod route;
pub mod store_url;
mod tls;
pub mod values;
pub mod verify;
mod warnings;

pub use load::{load_store, STORE_URL_ENV};
pub use model::*;
pub use store_url::redact_url;
pub use values::{check_role, check_scope, parse_duration, Rate};
pub use warnings::Warning;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    const MINIMAL: &str = r#"
[gateway]
listen = "127.0.0.1:8080"
[[routes]]
name = "telemetry"
path_prefix = "/iot/"
upstream = "127.0.0.1:8600"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/tg/gw.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.gateway.user_id_header.as_str(), "x-user-id");
        assert_eq!(
            c.gateway.token_id_header.as_ref().unwrap().as_str(),
            "x-token-id"
        );
        assert_eq!(c.gateway.sync_interval, Duration::from_millis(100));
        assert_eq!(
            c.store,
            StoreConfig::Sqlite {
                path: PathBuf::from("/etc/tg/data/tokengate.db")
            }
        );
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        assert_eq!(c.routes[0].path_prefix, "/iot");
        assert_eq!(c.routes[0].auth, AuthMode::Bearer);
    }

    #[test]
    fn every_listener_has_its_own_port() {
        let with = |extra: &str| parse(&format!("{MINIMAL}{extra}"));
        let verify = |addr: &str| {
            format!("[verify]\nlisten = \"{addr}\"\ntrusted_proxies = [\"127.0.0.1\"]\n")
        };
        let tls = |addr: &str| {
            format!("[tls]\nlisten = \"{addr}\"\n[[tls.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n")
        };
        for (extra, key, earlier) in [
            (verify("127.0.0.1:8080"), "verify.listen", "gateway.listen"),
            (verify("0.0.0.0:8080"), "verify.listen", "gateway.listen"),
            (verify("127.0.0.1:9090"), "verify.listen", "admin.listen"),
            (
                "[admin]\nlisten = \"[::]:8080\"\n".to_owned(),
                "admin.listen",
                "gateway.listen",
            ),
            (tls("127.0.0.1:8080"), "tls.listen", "gateway.listen"),
            (
                format!("{}{}", tls("127.0.0.1:8443"), verify("127.0.0.1:8443")),
                "verify.listen",
                "tls.listen",
            ),
        ] {
            let e = with(&extra).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains(earlier) && e.contains("its own"),
                "{extra}: {e}"
            );
        }
        // Another address on the same port, or the system's pick, is its own socket.
        with(&verify("127.0.0.2:8080")).unwrap();
        parse(&MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:0"))
            .and_then(|_| with(&verify("127.0.0.1:9191")))
            .unwrap();
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let bad = MINIMAL.replace("127.0.0.1:8600", "nowhere");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/tg/gw.toml: routes[0].upstream: \"nowhere\""),
            "{e}"
        );

        let e = parse(&format!("{MINIMAL}colour = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0]") && e.contains("colour"), "{e}");

        let e = parse(&MINIMAL.replace("[gateway]", "[gateway]\nthreads = \"two\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.threads"), "{e}");

        let e = parse(&format!("{MINIMAL}[[routes]]\nname = \"telemetry\"\npath_prefix = \"/x\"\nupstream = \"127.0.0.1:1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes[1].name") && e.contains("already used"),
            "{e}"
        );

        let e = parse(&MINIMAL.replace("/iot/", "/a/../b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].path_prefix"), "{e}");

        // The access log writes route names as they are (plain and JSON): nothing that could break a
        // line gets in.
        for name in ["a b", "a\\\"b", "a\\\\b", "a\\tb", "a\\nb", "αβ", "a=b", ""] {
            let e = parse(&MINIMAL.replace("name = \"telemetry\"", &format!("name = \"{name}\"")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("routes[0].name"), "{name:?}: {e}");
        }

        let e = parse(&MINIMAL.replace("[gateway]", "[gateway]\ngrace_period = \"soon\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gateway.grace_period") && e.contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn ipnet_matching() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn example_production_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/production.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Sqlite {
                path: PathBuf::from("/var/lib/tokengate/tokengate.db")
            }
        );
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        assert!(c.routes.iter().any(|r| r.query_token_param.is_some()));
        let tls = c.tls.expect("production runs TLS");
        assert_eq!(tls.certificates.len(), 2);
        assert!(c.routes.iter().any(|r| r.tls_only));
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml");
        let c = Config::load(&path).unwrap();
        assert!(c.routes.iter().any(|r| r.path_prefix == "/video"));
    }

    #[test]
    fn tls_section_and_https_upstreams() {
        let with_tls = |tls: &str| MINIMAL.replace("[[routes]]", &format!("{tls}\n[[routes]]"));
        let c = parse(&with_tls(
            "[tls]\nlisten = \"0.0.0.0:8443\"\nclient_ca = \"ca.pem\"\n[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"/k/a.key\"",
        ))
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.min_version, TlsVersion::V1_2);
        assert_eq!(t.client_auth, ClientAuth::Optional);
        assert_eq!(t.certificates[0].cert, PathBuf::from("/etc/tg/a.pem"));
        assert_eq!(t.certificates[0].key, PathBuf::from("/k/a.key"));
        let cert = "[[tls.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"";
        for (tls, key) in [
            (
                format!("[tls]\nlisten = \"0.0.0.0:8443\"\nmin_version = \"1.1\"\n{cert}"),
                "tls.min_version",
            ),
            (
                "[tls]\nlisten = \"0.0.0.0:8443\"".to_string(),
                "tls.certificates",
            ),
            (
                format!("[tls]\nlisten = \"0.0.0.0:8443\"\nclient_auth = \"required\"\n{cert}"),
                "tls.client_auth",
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:8080\"\n{cert}"),
                "tls.listen",
            ),
            (format!("[tls]\nlisten = \"nowhere\"\n{cert}"), "tls.listen"),
        ] {
            let e = parse(&with_tls(&tls)).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = parse(&MINIMAL.replace("listen = \"127.0.0.1:8080\"", "listen = \"\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.listen") && e.contains("[tls]"), "{e}");

        let https = MINIMAL.replace("127.0.0.1:8600", "https://localhost:8600");
        let r = &parse(&https).unwrap().routes[0];
        let up = r.pool.tls.as_ref().unwrap();
        assert_eq!((up.server_name.as_ref(), up.ca.as_ref()), (None, None));
        assert_eq!(r.pool.servers[0].host, "localhost");
        assert_eq!(r.pool.servers[0].addr.port(), 8600);
        let e = parse(&MINIMAL.replace("127.0.0.1:8600", "ftp://localhost:8600"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].upstream"), "{e}");
        let e = parse(&format!("{MINIMAL}upstream_ca = \"x.pem\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes[0].upstream_ca") && e.contains("https"),
            "{e}"
        );
    }

    #[test]
    fn store_urls_never_show_their_password() {
        let c = parse(&format!(
            "{MINIMAL}\n[store]\nurl = \"postgres://tg:s3cret@db:5432/tg?sslmode=require&password=s3cret\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let text = format!("{:?} {}", c.store, c.store.describe());
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("postgres://tg:***@db:5432/tg?sslmode=require&password=***"),
            "{text}"
        );
        let e = parse(&format!(
            "{MINIMAL}\n[store]\nurl = \"mysql://u:s3cret@h/db\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.url") && !e.contains("s3cret"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[store]\npath = \"a.db\"\nurl = \"postgres://u:p@h/db\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn rate_keys_parse_with_their_defaults_and_errors_name_the_key() {
        let c = parse(&format!(
            "{MINIMAL}rate_limit = \"600/m\"\nuser_rate_limit = \"50/s\"\nrate_limit_headers = true\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let r = &c.routes[0];
        assert_eq!(
            r.rate_limit,
            Some((Rate::parse("600/m").unwrap(), 10)),
            "burst: one second's worth"
        );
        assert_eq!(r.user_rate_limit, Some(Rate::parse("50/s").unwrap()));
        assert!(r.rate_limit_headers);
        let c = parse(&format!(
            "{MINIMAL}rate_limit = \"20/s\"\nrate_burst = 40\n"
        ))
        .unwrap();
        assert_eq!(c.routes[0].rate_limit.unwrap().1, 40);
        assert_eq!(parse(MINIMAL).unwrap().routes[0].rate_limit, None);
        assert!(!parse(MINIMAL).unwrap().routes[0].rate_limit_headers);

        for (extra, key, problem) in [
            (
                "rate_limit = \"fast\"",
                "routes[0].rate_limit",
                "is not a rate",
            ),
            (
                "rate_limit = \"0/s\"",
                "routes[0].rate_limit",
                "between 1 and",
            ),
            (
                "rate_limit = \"5/d\"",
                "routes[0].rate_limit",
                "is not a rate",
            ),
            (
                "user_rate_limit = \"1e9/s\"",
                "routes[0].user_rate_limit",
                "is not a rate",
            ),
            (
                "rate_limit = \"5/s\"\nrate_burst = 0",
                "routes[0].rate_burst",
                "between 1 and",
            ),
            (
                "rate_burst = 10",
                "routes[0].rate_burst",
                "needs rate_limit",
            ),
            (
                "auth = \"none\"\nrate_limit = \"5/s\"",
                "routes[0].rate_limit",
                "auth = \"bearer\"",
            ),
        ] {
            let e = parse(&format!("{MINIMAL}{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("/etc/tg/gw.toml: {key}: ")) && e.contains(problem),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn required_group_and_license_are_names_on_authenticated_routes() {
        let c = parse(&format!(
            "{MINIMAL}required_group = \"apiary-42\"\nrequired_license = \"video-analytics\"\n"
        ))
        .unwrap();
        assert_eq!(c.routes[0].required_group.as_deref(), Some("apiary-42"));
        assert_eq!(
            c.routes[0].required_license.as_deref(),
            Some("video-analytics")
        );
        for (extra, key, problem) in [
            (
                "required_group = \"Apiary-42\"",
                "routes[0].required_group",
                "lower case",
            ),
            (
                "required_group = \"\"",
                "routes[0].required_group",
                "1 to 64",
            ),
            (
                "required_license = \"a b\"",
                "routes[0].required_license",
                "lower case",
            ),
            (
                "auth = \"none\"\nrequired_group = \"g\"",
                "routes[0].required_group",
                "auth = \"none\"",
            ),
            (
                "auth = \"none\"\nrequired_license = \"l\"",
                "routes[0].required_license",
                "auth = \"none\"",
            ),
            ("required_groups = \"g\"", "", "unknown field"),
        ] {
            let e = parse(&format!("{MINIMAL}{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("/etc/tg/gw.toml: ") && e.contains(key) && e.contains(problem),
                "{extra}: {e}"
            );
        }
    }
}

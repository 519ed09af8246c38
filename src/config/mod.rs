//! Configuration: the TOML file schema (serde, unknown keys rejected), its defaults, and the conversion into
//! the validated [`Config`] that the rest of the crate sees. Every error names the file, the key and the
//! problem, e.g. `config/tokengate.toml: routes[1].upstream: "nowhere" is not host:port`.
//!
//! - [`model`]: the validated types (`Config`, `RouteConfig`, ...).
//! - [`file`]: the file as written (serde structs).
//! - [`load`]: reading and checking a file; [`route`]: one `[[routes]]` entry; [`tls`]: the `[tls]` table.
//! - [`values`]: parsers for single values (durations, scopes, header names, addresses).

mod context;
mod file;
mod load;
pub mod model;
mod route;
mod tls;
pub mod values;

pub use load::load_store_path;
pub use model::*;
pub use values::{check_scope, parse_duration};

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
        assert_eq!(c.store.path, PathBuf::from("/etc/tg/data/tokengate.db"));
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        assert_eq!(c.routes[0].path_prefix, "/iot");
        assert_eq!(c.routes[0].auth, AuthMode::Bearer);
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
            c.store.path,
            PathBuf::from("/var/lib/tokengate/tokengate.db")
        );
        assert_eq!(c.admin.listen, "127.0.0.1:9090");
        assert!(c.routes.iter().any(|r| r.query_token_param.is_some()));
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml");
        let c = Config::load(&path).unwrap();
        assert!(c.routes.iter().any(|r| r.path_prefix == "/video"));
    }
}

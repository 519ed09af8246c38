//! The configuration file as written: serde structs mirroring the TOML tables, unknown keys refused.
//! Nothing here is validated; [`super::Config::parse`] turns it into the validated [`super::Config`].

use super::model::{AccessLogFormat, AuthMode, Balance, ClientAuth};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) gateway: FileGateway,
    #[serde(default)]
    pub(super) store: FileStore,
    #[serde(default)]
    pub(super) admin: FileAdmin,
    #[serde(default)]
    pub(super) log: FileLog,
    #[serde(default)]
    pub(super) throttle: FileThrottle,
    pub(super) tls: Option<FileTls>,
    /// `[leaks]`: the secret-scanning endpoint (see `super::leaks`).
    pub(super) leaks: Option<super::leaks::FileLeaks>,
    /// `[verify]`: the verify listener (see `super::verify`).
    pub(super) verify: Option<FileVerify>,
    /// `[mqtt]`: MQTT usernames and topic rules (see `super::verify`).
    #[serde(default)]
    pub(super) mqtt: FileMqtt,
    /// Role name → scopes.
    #[serde(default)]
    pub(super) roles: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(super) routes: Vec<FileRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) listen: String,
    pub(super) min_version: Option<String>,
    pub(super) client_ca: Option<String>,
    pub(super) client_auth: Option<ClientAuth>,
    #[serde(default)]
    pub(super) certificates: Vec<FileCert>,
    pub(super) session_tickets: Option<bool>,
    pub(super) ticket_lifetime: Option<String>,
    pub(super) max_fragment_size: Option<usize>,
    pub(super) early_data: Option<bool>,
    pub(super) alpn: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCert {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileThrottle {
    pub(super) max_failures: Option<u32>,
    pub(super) window: Option<String>,
    pub(super) max_clients: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLog {
    pub(super) access: Option<AccessLogFormat>,
    pub(super) access_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileGateway {
    pub(super) listen: String,
    pub(super) user_id_header: Option<String>,
    pub(super) token_id_header: Option<String>,
    pub(super) threads: Option<usize>,
    pub(super) work_stealing: Option<bool>,
    pub(super) grace_period: Option<String>,
    pub(super) revoked_retention: Option<String>,
    pub(super) sync_interval: Option<String>,
    pub(super) usage_flush_interval: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) keepalive_timeout: Option<String>,
    pub(super) upgrade_sock: Option<String>,
    pub(super) max_in_flight: Option<usize>,
    pub(super) header_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_in_flight_per_token: Option<u32>,
    pub(super) max_connections_per_address: Option<usize>,
    pub(super) body_timeout: Option<String>,
    pub(super) send_timeout: Option<String>,
    pub(super) min_body_rate: Option<u64>,
    pub(super) max_head_bytes: Option<usize>,
    pub(super) h2c: Option<bool>,
    pub(super) h2_max_concurrent_streams: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStore {
    pub(super) path: Option<String>,
    pub(super) url: Option<String>,
    pub(super) url_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    #[serde(default = "default_admin_listen")]
    pub(super) listen: String,
    pub(super) trusted_user_header: Option<String>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) max_tokens_per_user: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) self_service_rate: Option<String>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

impl Default for FileAdmin {
    fn default() -> Self {
        FileAdmin {
            listen: default_admin_listen(),
            trusted_user_header: None,
            trusted_proxies: None,
            max_tokens_per_user: None,
            max_connections: None,
            self_service_rate: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub(super) name: String,
    pub(super) path_prefix: String,
    pub(super) upstream: Option<String>,
    pub(super) upstreams: Option<Vec<String>>,
    pub(super) balance: Option<Balance>,
    pub(super) health_check: Option<FileHealthCheck>,
    pub(super) resolve_interval: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) read_timeout: Option<String>,
    pub(super) write_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) auth: Option<AuthMode>,
    pub(super) required_scope: Option<String>,
    pub(super) required_group: Option<String>,
    pub(super) required_license: Option<String>,
    #[serde(default)]
    pub(super) strip_request_headers: Vec<String>,
    pub(super) user_id_header: Option<String>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) request_timeout: Option<String>,
    pub(super) query_token_param: Option<String>,
    pub(super) sign_secret: Option<String>,
    pub(super) tls_only: Option<bool>,
    pub(super) rate_limit: Option<String>,
    pub(super) rate_burst: Option<u64>,
    pub(super) user_rate_limit: Option<String>,
    pub(super) rate_limit_headers: Option<bool>,
    pub(super) forward_scopes: Option<bool>,
    pub(super) websocket: Option<bool>,
    pub(super) websocket_idle_timeout: Option<String>,
    pub(super) upstream_ca: Option<String>,
    pub(super) upstream_sni: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHealthCheck {
    pub(super) path: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) unhealthy_after: Option<u32>,
    pub(super) healthy_after: Option<u32>,
}

/// The default number of proxy worker threads: the number of cores.
pub(super) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `[verify]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileVerify {
    pub(super) listen: String,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) cache_seconds: Option<u64>,
    pub(super) path_prefix: Option<String>,
    pub(super) tls: Option<FileVerifyTls>,
}

/// `[verify.tls]` as written: `[tls]` without its own `listen` (the verify listener's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileVerifyTls {
    pub(super) min_version: Option<String>,
    pub(super) client_ca: Option<String>,
    pub(super) client_auth: Option<ClientAuth>,
    #[serde(default)]
    pub(super) certificates: Vec<FileCert>,
}

/// `[mqtt]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMqtt {
    pub(super) mqtt_username: Option<String>,
    pub(super) mqtt_mode: Option<String>,
    #[serde(default)]
    pub(super) topics: Vec<FileTopic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTopic {
    pub(super) pattern: String,
    pub(super) action: Option<String>,
    pub(super) required_scope: Option<String>,
    pub(super) required_group: Option<String>,
    pub(super) required_license: Option<String>,
}

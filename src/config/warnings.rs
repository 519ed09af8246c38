//! Settings that are valid but open a door: `check-config` prints them, `serve` logs them at start. Each
//! names the key. (The store's transport is judged where the connection string is parsed:
//! `tokens::store::PgUrl::transport_warning`.)

use super::model::{Config, IpNet};

/// A valid setting that weakens the gateway: the key (`gateway.trusted_proxies[0]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

impl Config {
    /// What in this configuration is valid but dangerous.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        wide_proxies(
            &mut out,
            "gateway.trusted_proxies",
            &self.gateway.trusted_proxies,
            "may set X-Forwarded-For (the client address rate limits and logs see), X-Forwarded-Proto \
             and x-request-id",
        );
        wide_proxies(
            &mut out,
            "admin.trusted_proxies",
            &self.admin.trusted_proxies,
            "may act as any user on the admin API, with no token, by naming them in trusted_user_header",
        );
        out
    }
}

fn wide_proxies(out: &mut Vec<Warning>, key: &str, nets: &[IpNet], power: &str) {
    for (i, net) in nets.iter().enumerate() {
        if net.spans_several_networks() {
            out.push(Warning {
                key: format!("{key}[{i}]"),
                problem: format!(
                    "{net} is wider than any one network (IPv4 shorter than /8, IPv6 shorter than /32 \
                     outside fc00::/7): every address in it, most of the internet, {power}; list your \
                     proxies' own addresses"
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::IpNet;

    #[test]
    fn networks_wider_than_one_organisation() {
        for wide in [
            "0.0.0.0/0",
            "128.0.0.0/1",
            "10.0.0.0/7",
            "::/0",
            "2000::/3",
            "2001:db8::/16",
            "2001:db8::/31",
            "fc00::/6",
        ] {
            assert!(
                IpNet::parse(wide).unwrap().spans_several_networks(),
                "{wide}"
            );
        }
        for narrow in [
            "10.0.0.0/8",
            "100.64.0.0/10",
            "192.168.0.0/16",
            "203.0.113.7",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "fc00::/7",
            "fd12:3456::/16",
            "fe80::/10",
            "::1",
            "::ffff:0.0.0.0/96",
        ] {
            assert!(
                !IpNet::parse(narrow).unwrap().spans_several_networks(),
                "{narrow}"
            );
        }
    }
}

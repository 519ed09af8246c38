//! Choosing the edge's certificate per handshake from the SNI ([`SniResolver`]), with a set that a
//! reload swaps live: new handshakes see the new set, established connections are untouched.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::LoadedCerts;

/// Picks the certificate for each handshake from the SNI: an exact SAN name first, then a
/// `*.parent` wildcard (one label), else the first configured certificate. Names compare
/// case-insensitively.
///
/// The set sits behind an [`ArcSwap`]: a handshake loads it without a lock, and
/// [`SniResolver::replace`] publishes a new one atomically. A connection keeps the certificate it
/// was handshaken with, so a reload affects only new handshakes.
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

struct CertSet {
    default: Arc<CertifiedKey>,
    /// `api.example.com` → key.
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `example.com` → key, from a SAN `*.example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// For `Debug` and logs: the names in each map.
    names: Vec<Box<str>>,
}

impl CertSet {
    fn new(certs: &LoadedCerts) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut names = Vec::new();
        // Config order: the first entry naming a host wins (`warnings` reports the shadowed ones).
        for cert in certs.iter() {
            for name in &cert.dns_names {
                let (map, host) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_ref()),
                };
                map.entry(host.into()).or_insert_with(|| cert.key.clone());
                names.push(name.clone());
            }
        }
        Self {
            default: certs.0[0].key.clone(),
            exact,
            wildcard,
            names,
        }
    }

    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sni) = sni else { return &self.default };
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        // rustls hands us a lower-cased name already; only allocate if some client proves
        // otherwise.
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        self.exact
            .get(sni)
            .or_else(|| {
                sni.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .unwrap_or(&self.default)
    }
}

impl SniResolver {
    pub fn new(certs: &LoadedCerts) -> Self {
        Self {
            set: ArcSwap::from_pointee(CertSet::new(certs)),
        }
    }

    /// Publishes a new set (SIGHUP): handshakes that start after this call use it.
    pub fn replace(&self, certs: &LoadedCerts) {
        self.set.store(Arc::new(CertSet::new(certs)));
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.set.load().names)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::certs::load_certificates;
    use crate::transport::tls::testing::files;

    #[test]
    fn resolver_matching_rules() {
        let s = files();
        let resolver = SniResolver::new(&load_certificates(&s.cfg.certificates).unwrap());
        let set = resolver.set.load();
        let b = set.wildcard.get("b.example.com").unwrap();
        let picks = |sni, key: &Arc<CertifiedKey>| Arc::ptr_eq(set.pick(Some(sni)), key);
        for sni in ["q.b.example.com", "Q.B.Example.Com.", "q.b.example.com."] {
            assert!(picks(sni, b), "{sni}");
        }
        for sni in [
            "b.example.com",
            "q.q.b.example.com",
            "xb.example.com",
            "q.b.example.comx",
            "",
        ] {
            assert!(picks(sni, &set.default), "{sni}");
        }
        assert!(picks(
            "A.EXAMPLE.COM",
            set.exact.get("a.example.com").unwrap()
        ));
        assert!(Arc::ptr_eq(set.pick(None), &set.default));
    }
}

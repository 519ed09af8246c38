//! The one test certificate helper, for the integration tests (through `tests/common/tls.rs`) and the
//! crate's unit tests (`src/transport/tls/`, included by path): a throw-away CA made with rcgen per run,
//! server and device certificates it signs, and writing them as files. Self-contained (rcgen, sha2 and
//! std only) so both kinds of test build it. Fixed keys in legacy encodings are files in
//! `tests/fixtures/tls/`.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// A certificate authority that signs server and device certificates.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), to trust or to configure as `client_ca`.
    pub ca_pem: String,
}

/// A certificate and its key, PEM and DER.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        let ca_pem = issuer.pem();
        Pki { issuer, ca_pem }
    }

    /// The CA certificate as DER, to put in a root store.
    pub fn ca_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A certificate for `names` (DNS names or IP addresses) with a fresh P-256 key.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    /// Like [`Self::leaf`], with the parameters edited first (validity, extensions...).
    pub fn leaf_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        self.leaf_with_key(names, KeyPair::generate().expect("leaf key"), edit)
    }

    /// Like [`Self::leaf_with`], for a given key (an RSA one, or one read from a fixture file).
    pub fn leaf_with_key(
        &self,
        names: &[&str],
        key: KeyPair,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("device"),
        );
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    /// Lower-case hex SHA-256 of the certificate's DER (what a token is bound to).
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Writes `NAME.crt` and `NAME.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        (cert, key)
    }
}

/// Writes PEM text to `dir/name`.
pub fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write pem");
    path
}

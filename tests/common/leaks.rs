//! Secret-scanning reports for tests: P-256 signing keys (ring), the partner's key document, signed
//! `POST`s to the gateway's `[leaks]` endpoint.

use super::{build_request, raw_http, Gateway, GatewayBuilder, RawResponse};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The endpoint's default path.
pub const PATH: &str = "/.well-known/tokengate/secret-scanning";
/// The key document's file name in the gateway's folder.
pub const KEYS_FILE: &str = "secret-scanning-keys.json";

/// DER prefix of a P-256 SubjectPublicKeyInfo (the uncompressed point follows).
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A signing key with its identifier.
pub struct Signer {
    pub id: String,
    pair: EcdsaKeyPair,
    pub pkcs8: Vec<u8>,
}

impl Signer {
    pub fn new(id: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer {
            id: id.to_owned(),
            pair,
            pkcs8: pkcs8.as_ref().to_vec(),
        }
    }

    /// The public key as PEM (`PUBLIC KEY`, SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// Base64 of the DER signature over `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

/// GitHub's key document for `signers` (the first current).
pub fn document(signers: &[&Signer]) -> String {
    let keys: Vec<Value> = signers
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"key_identifier": s.id, "key": s.public_pem(), "is_current": i == 0}))
        .collect();
    json!({ "public_keys": keys }).to_string()
}

/// A builder with `[leaks]` reading `KEYS_FILE` next to the config, plus `extra` `[leaks]` keys.
pub fn with_leaks(builder: GatewayBuilder, extra: &[(&str, &str)]) -> GatewayBuilder {
    let mut b = builder.section("leaks", "public_keys_file", &format!("\"{KEYS_FILE}\""));
    for (k, v) in extra {
        b = b.section("leaks", k, v);
    }
    b
}

/// Builds the gateway, writes the key document of `signers` next to its config, starts it.
pub fn start_with_keys(builder: GatewayBuilder, signers: &[&Signer]) -> Gateway {
    let mut gw = builder.build();
    std::fs::write(gw.dir().join(KEYS_FILE), document(signers)).unwrap();
    gw.start();
    gw
}

/// One match of a report.
pub fn report_match(token: &str) -> Value {
    json!({
        "token": token,
        "type": "tokengate_device_token",
        "url": "https://github.com/octo/hive/blob/abc123/example.env",
        "source": "content",
    })
}

/// The request bytes of a report with the given fields.
pub fn report_request(body: &[u8], key_id: Option<&str>, signature: Option<&str>) -> Vec<u8> {
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(k) = key_id {
        headers.push(("Github-Public-Key-Identifier", k));
    }
    if let Some(s) = signature {
        headers.push(("Github-Public-Key-Signature", s));
    }
    build_request("POST", PATH, &headers, body)
}

/// POSTs `body` signed by `signer` to `addr`.
pub fn send_signed(addr: SocketAddr, signer: &Signer, body: &[u8]) -> RawResponse {
    raw_http(
        addr,
        &report_request(body, Some(&signer.id), Some(&signer.sign(body))),
    )
}

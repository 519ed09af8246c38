//! The partner's signature on a report: the key document (`{"public_keys":[{"key_identifier","key",
//! "is_current"}]}`, keys as PEM `PUBLIC KEY`s on the P-256 curve) and the check of
//! `Github-Public-Key-Signature` (base64 of a DER ECDSA P-256 / SHA-256 signature over the raw body)
//! with the key its `Github-Public-Key-Identifier` names.

use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::Deserialize;

/// The DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1, a 66-byte bit string
/// holding an uncompressed point): every key in the document must start with exactly these bytes.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Longest key identifier and signature (base64) looked at: longer ones are refused unread.
pub const MAX_KEY_ID: usize = 256;
pub const MAX_SIGNATURE: usize = 256;

/// The keys of one document: identifier → uncompressed P-256 point.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<(String, Vec<u8>)>,
}

#[derive(Deserialize)]
struct Document {
    public_keys: Vec<DocKey>,
}

#[derive(Deserialize)]
struct DocKey {
    key_identifier: String,
    key: String,
    #[serde(default)]
    #[allow(dead_code)]
    is_current: bool,
}

impl KeySet {
    /// Parses a key document. A key that is not a P-256 public key fails the whole document (a
    /// document that half parses is a sign of the wrong file).
    pub fn parse(text: &[u8]) -> Result<KeySet, String> {
        let doc: Document = serde_json::from_slice(text)
            .map_err(|e| format!("not a key document ({{\"public_keys\":[...]}}): {e}"))?;
        if doc.public_keys.is_empty() {
            return Err("the document holds no keys".into());
        }
        let mut keys = Vec::with_capacity(doc.public_keys.len());
        for k in doc.public_keys {
            let point =
                p256_point(&k.key).map_err(|p| format!("key {:?}: {p}", k.key_identifier))?;
            keys.push((k.key_identifier, point));
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the document has a key with this identifier.
    pub fn knows(&self, key_id: &[u8]) -> bool {
        self.keys.iter().any(|(id, _)| id.as_bytes() == key_id)
    }

    /// Whether `signature` (base64 of DER) over `body` verifies with the key `key_id` names.
    pub fn verify(&self, key_id: &[u8], signature: &[u8], body: &[u8]) -> Verdict {
        let Some((_, point)) = self.keys.iter().find(|(id, _)| id.as_bytes() == key_id) else {
            return Verdict::UnknownKey;
        };
        if signature.len() > MAX_SIGNATURE {
            return Verdict::Bad;
        }
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim_ascii())
        else {
            return Verdict::Bad;
        };
        match UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point).verify(body, &der) {
            Ok(()) => Verdict::Good,
            Err(_) => Verdict::Bad,
        }
    }
}

/// How a signature check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Good,
    Bad,
    /// No key with that identifier (a refresh of a fetched document may find it).
    UnknownKey,
}

/// The uncompressed point of a PEM `PUBLIC KEY` on P-256.
fn p256_point(pem: &str) -> Result<Vec<u8>, String> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|r| r.trim_end().strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or("is not a PEM PUBLIC KEY")?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the PEM body is not base64")?;
    if der.len() != P256_SPKI_PREFIX.len() + 65 || der[..P256_SPKI_PREFIX.len()] != P256_SPKI_PREFIX
    {
        return Err("is not an ECDSA P-256 public key".into());
    }
    Ok(der[P256_SPKI_PREFIX.len()..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    fn pem_of(pair: &EcdsaKeyPair) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    fn pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    #[test]
    fn verifies_only_the_signed_body_with_the_named_key() {
        let (a, b) = (pair(), pair());
        let doc = serde_json::json!({"public_keys": [
            {"key_identifier": "a", "key": pem_of(&a), "is_current": true},
            {"key_identifier": "b", "key": pem_of(&b), "is_current": false},
        ]});
        let keys = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let body = b"[{\"token\":\"x\"}]";
        let sig = a.sign(&SystemRandom::new(), body).unwrap();
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.as_ref());
        assert_eq!(keys.verify(b"a", sig.as_bytes(), body), Verdict::Good);
        assert_eq!(keys.verify(b"b", sig.as_bytes(), body), Verdict::Bad);
        assert_eq!(keys.verify(b"c", sig.as_bytes(), body), Verdict::UnknownKey);
        assert_eq!(
            keys.verify(b"a", sig.as_bytes(), b"[{\"token\":\"y\"}]"),
            Verdict::Bad
        );
        assert_eq!(keys.verify(b"a", b"%%%", body), Verdict::Bad);
    }

    #[test]
    fn refuses_documents_with_other_keys() {
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(br#"{"public_keys":[]}"#).is_err());
        let rsa_ish = r#"{"public_keys":[{"key_identifier":"x","key":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----","is_current":true}]}"#;
        assert!(KeySet::parse(rsa_ish.as_bytes()).is_err());
    }
}

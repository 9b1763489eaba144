//! A JSON Web Key Set as verification keys (pure): the RS256 and ES256 signing keys of the set,
//! each under its `kid`; keys of other kinds, curves, algorithms or uses are skipped (and
//! reported), so one odd key in an identity provider's set does not take the others down.

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

/// The algorithms the edge accepts: asymmetric only, so the keys it holds can verify but
/// never sign.
pub const ACCEPTED: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// One key a token may be verified with.
pub struct VerificationKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The usable keys of one fetched set.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("not a JWKS document ({{\"keys\": [...]}}): {0}")]
    NotJwks(String),
    #[error("no usable RS256/ES256 signing key ({skipped} skipped)")]
    NoUsableKeys { skipped: usize },
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// Why a key of the set is not used.
fn usable(jwk: &Jwk) -> Result<Algorithm, String> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("its `use` is not `sig`".into());
    }
    let by_kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            return Err(format!("curve {:?} is not P-256", ec.curve));
        }
        _ => return Err("its kty is neither RSA nor EC".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(by_kind),
        Some(KeyAlgorithm::RS256) if by_kind == Algorithm::RS256 => Ok(by_kind),
        Some(KeyAlgorithm::ES256) if by_kind == Algorithm::ES256 => Ok(by_kind),
        Some(other) => Err(format!("its alg {other:?} is not accepted (RS256, ES256)")),
    }
}

impl KeySet {
    /// The set's usable keys and, for the log, why each other key was skipped. A document
    /// without any usable key is an error: the previous keys stay in use.
    pub fn parse(document: &[u8]) -> Result<(Self, Vec<String>), JwksError> {
        let document: Document =
            serde_json::from_slice(document).map_err(|e| JwksError::NotJwks(e.to_string()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, value) in document.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    skipped.push(format!("keys[{index}]: {error}"));
                    continue;
                }
            };
            let kid = jwk.common.key_id.clone();
            let named = || format!("keys[{index}] (kid {kid:?})");
            let key = usable(&jwk).and_then(|algorithm| {
                DecodingKey::from_jwk(&jwk)
                    .map(|key| (algorithm, key))
                    .map_err(|e| format!("unreadable key material: {e}"))
            });
            match key {
                Ok((algorithm, key)) => keys.push(VerificationKey {
                    kid: kid.clone(),
                    algorithm,
                    key,
                }),
                Err(why) => skipped.push(format!("{}: {why}", named())),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys {
                skipped: skipped.len(),
            });
        }
        Ok((Self { keys }, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys a token with this `kid` and algorithm may have been signed with: the key of
    /// that id (when it fits the algorithm), or without an id every key of the algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        algorithm: Algorithm,
    ) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys.iter().filter(move |key| {
            key.algorithm == algorithm && (kid.is_none() || key.kid.as_deref() == kid)
        })
    }

    /// Whether the set has a key of this id (whatever its algorithm).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    // Placeholder numbers, not keys: the set is read here, nothing is verified with it.
    const EC_X: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
    const EC_Y: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI";
    const RSA_N: &str = "zMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMw";

    fn ec(kid: &str) -> serde_json::Value {
        json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": kid, "use": "sig"})
    }

    fn rsa(kid: &str) -> serde_json::Value {
        json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": kid, "alg": "RS256"})
    }

    fn parse(value: serde_json::Value) -> Result<(KeySet, Vec<String>), JwksError> {
        KeySet::parse(value.to_string().as_bytes())
    }

    #[test]
    fn rsa_and_p256_keys_are_taken_under_their_ids() {
        let (set, skipped) = parse(json!({"keys": [rsa("r1"), ec("e1")]})).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(set.len(), 2);
        assert_eq!(set.candidates(Some("r1"), Algorithm::RS256).count(), 1);
        // The id of an EC key does not verify an RS256 token.
        assert_eq!(set.candidates(Some("e1"), Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 1);
        assert!(set.has_kid("e1") && !set.has_kid("e2"));
    }

    #[test]
    fn odd_keys_are_skipped_and_named() {
        let (set, skipped) = parse(json!({"keys": [
            rsa("good"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-384", "x": EC_X, "y": EC_Y, "kid": "p384"},
            {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "enc", "use": "enc"},
            {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "ps", "alg": "PS256"},
            {"kty": "RSA", "kid": "no-modulus"},
        ]}))
        .unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 5, "{skipped:#?}");
        for name in ["hmac", "p384", "enc", "ps"] {
            assert!(
                skipped.iter().any(|s| s.contains(name)),
                "{name}: {skipped:#?}"
            );
        }
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(matches!(
            KeySet::parse(b"<html>down</html>"),
            Err(JwksError::NotJwks(_))
        ));
        assert!(matches!(
            parse(json!({"key": []})),
            Err(JwksError::NotJwks(_))
        ));
        assert_eq!(
            parse(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})).err(),
            Some(JwksError::NoUsableKeys { skipped: 1 })
        );
        assert_eq!(
            parse(json!({"keys": []})).err(),
            Some(JwksError::NoUsableKeys { skipped: 0 })
        );
    }
}

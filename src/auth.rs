//! JWT verification at the upgrade, and minting for development (`floodgate token`).
//!
//! The user a connection belongs to is the token's `sub`; the client never names it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::config::JwtKey;
use crate::error::Error;
use crate::jwks::KeySet;

/// The claims floodgate reads. `exp` and `sub` are required; `nbf` is checked when present.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Optional here only so that a token without it is answered "missing claim sub" rather
    /// than "malformed" (the spec-claim check below requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Why a token was refused. The text is sent to the client in the 401 challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    MissingSub,
    MissingExp,
    BadAudience,
    BadIssuer,
    BadSubject,
    UnknownKey,
}

impl AuthError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Malformed => "malformed token",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::MissingSub => "missing required claim: sub (the user id)",
            AuthError::MissingExp => "missing required claim: exp (expiry, unix seconds)",
            AuthError::BadAudience => "aud is missing or not the audience this gateway accepts",
            AuthError::BadIssuer => "iss is missing or not the issuer this gateway accepts",
            AuthError::BadSubject => "sub must be 1 to 255 bytes",
            AuthError::UnknownKey => {
                "unknown key: the token's kid is not in the gateway's key set (it reads the set \
                 again; retry in a few seconds)"
            }
        }
    }
}

/// The DER encoding of the OID of the P-256 curve (prime256v1, 1.2.840.10045.3.1.7), which an
/// ES256 key's SubjectPublicKeyInfo names.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Checks at start what the key parsers would only reveal by rejecting every token: that the
/// PEM holds a public key (not a private key or a certificate), and for ES256 one on P-256.
fn check_public_pem(text: &[u8], alg: &str, curve: Option<&[u8]>) -> Result<(), String> {
    let pem = pem::parse(text).map_err(|e| format!("not a PEM file: {e}"))?;
    let tag = pem.tag();
    if tag != "PUBLIC KEY" && !(curve.is_none() && tag == "RSA PUBLIC KEY") {
        return Err(format!(
            "this PEM holds a `{tag}`; {alg} needs the public key (`-----BEGIN PUBLIC KEY-----`)"
        ));
    }
    if let Some(oid) = curve {
        if !pem.contents().windows(oid.len()).any(|w| w == oid) {
            return Err(format!(
                "not a P-256 (prime256v1) key, which {alg} requires (P-384 is ES384, P-521 ES512)"
            ));
        }
    }
    Ok(())
}

/// What signatures are checked against.
enum Keys {
    /// One configured key (its algorithm is the validation's).
    One(DecodingKey),
    /// A JWKS: the key is the one the token's `kid` names, with the algorithm it was given.
    Set(Arc<KeySet>),
}

/// Checks tokens against the configured key or key set.
pub(crate) struct Verifier {
    keys: Keys,
    /// For `Keys::One`; for a set, the RS256 rules (the ES256 ones are `es256`).
    validation: Validation,
    /// For a set: the same rules for ES256 keys.
    es256: Validation,
}

impl Verifier {
    pub(crate) fn new(key: &JwtKey, leeway: Duration) -> Result<Verifier, Error> {
        let read = |path: &std::path::Path| {
            crate::config::read_small_file(path, crate::config::MAX_KEY_FILE).map_err(|e| {
                Error::Key {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })
        };
        let bad_pem = |path: &std::path::Path, e: jsonwebtoken::errors::Error| Error::Key {
            path: path.display().to_string(),
            reason: format!("not a usable PEM public key: {e}"),
        };
        let (key, alg) = match key {
            JwtKey::Jwks(source) => {
                // Without a refresher (the gateway starts one with `with_key_set`).
                let (set, _) = KeySet::open(source.clone()).map_err(|reason| Error::Key {
                    path: source.to_string(),
                    reason,
                })?;
                return Ok(Verifier::with_key_set(set, leeway));
            }
            JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::Rs256(path) => {
                let pem = read(path)?;
                check_public_pem(&pem, "RS256", None).map_err(|reason| Error::Key {
                    path: path.display().to_string(),
                    reason,
                })?;
                (
                    DecodingKey::from_rsa_pem(&pem).map_err(|e| bad_pem(path, e))?,
                    Algorithm::RS256,
                )
            }
            JwtKey::Es256(path) => {
                let pem = read(path)?;
                check_public_pem(&pem, "ES256", Some(P256_OID)).map_err(|reason| Error::Key {
                    path: path.display().to_string(),
                    reason,
                })?;
                (
                    DecodingKey::from_ec_pem(&pem).map_err(|e| bad_pem(path, e))?,
                    Algorithm::ES256,
                )
            }
        };
        Ok(Verifier {
            keys: Keys::One(key),
            validation: rules(alg, leeway),
            es256: rules(Algorithm::ES256, leeway),
        })
    }

    /// Checks tokens against the keys of `set`, by `kid`.
    pub(crate) fn with_key_set(set: Arc<KeySet>, leeway: Duration) -> Verifier {
        Verifier {
            keys: Keys::Set(set),
            validation: rules(Algorithm::RS256, leeway),
            es256: rules(Algorithm::ES256, leeway),
        }
    }

    /// Also requires `aud` and `iss`, where configured.
    pub(crate) fn with_claims(mut self, audience: Option<&str>, issuer: Option<&str>) -> Self {
        let mut required = vec!["exp", "sub"];
        for v in [&mut self.validation, &mut self.es256] {
            if let Some(aud) = audience {
                v.set_audience(&[aud]);
                v.validate_aud = true;
            }
            if let Some(iss) = issuer {
                v.set_issuer(&[iss]);
            }
        }
        if audience.is_some() {
            required.push("aud");
        }
        if issuer.is_some() {
            required.push("iss");
        }
        self.validation.set_required_spec_claims(&required);
        self.es256.set_required_spec_claims(&required);
        self
    }

    /// Returns the user id (`sub`) of a valid token (for the bench's raw-TCP floor and tests;
    /// the gateway uses [`verify_until`](Self::verify_until)).
    #[cfg(any(test, feature = "cli"))]
    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Box<[u8]>, AuthError> {
        self.verify_until(token).map(|(user, _)| user)
    }

    /// Returns the user id (`sub`) of a valid token and the unix second from which it is no
    /// longer accepted (its `exp` plus the leeway).
    pub(crate) fn verify_until(&self, token: Option<&str>) -> Result<(Box<[u8]>, u64), AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let from_set;
        let (key, validation) = match &self.keys {
            Keys::One(key) => (key, &self.validation),
            Keys::Set(set) => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
                let Some(key) = set.keys().find(header.kid.as_deref()) else {
                    if header.kid.is_some() {
                        set.unknown_kid();
                    }
                    return Err(AuthError::UnknownKey);
                };
                if header.alg != key.alg {
                    return Err(AuthError::BadSignature);
                }
                from_set = key;
                let validation = match from_set.alg {
                    Algorithm::ES256 => &self.es256,
                    _ => &self.validation,
                };
                (&from_set.key, validation)
            }
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    AuthError::BadSignature
                }
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::MissingRequiredClaim(c) if c == "sub" => AuthError::MissingSub,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::BadAudience,
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::BadIssuer,
                ErrorKind::MissingRequiredClaim(_) => AuthError::MissingExp,
                ErrorKind::InvalidAudience => AuthError::BadAudience,
                ErrorKind::InvalidIssuer => AuthError::BadIssuer,
                _ => AuthError::Malformed,
            })?;
        let sub = data.claims.sub.ok_or(AuthError::MissingSub)?;
        if data.claims.exp.is_none() {
            return Err(AuthError::MissingExp);
        }
        if sub.is_empty() || sub.len() > 255 {
            return Err(AuthError::BadSubject);
        }
        let until = data
            .claims
            .exp
            .unwrap_or(0)
            .saturating_add(validation.leeway);
        Ok((sub.into_bytes().into_boxed_slice(), until))
    }
}

/// The rules every token is held to, for keys of algorithm `alg`.
fn rules(alg: Algorithm, leeway: Duration) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

/// Mints an HS256 token for `user`, valid from now for `ttl`.
pub fn mint_hs256(secret: &[u8], user: &str, ttl: Duration) -> Result<String, Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: Some(user.to_owned()),
        exp: Some(now + ttl.as_secs()),
        nbf: None,
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::Key {
        path: "<secret>".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(&JwtKey::Hs256(SECRET.to_vec()), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn minted_tokens_verify_to_their_subject() {
        let t = mint_hs256(SECRET, "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(&*verifier().verify(Some(&t)).unwrap(), b"alice");
    }

    #[test]
    fn wrong_secret_missing_and_garbage_are_refused() {
        let t = mint_hs256(
            b"another-secret-another-secret-xx",
            "alice",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(verifier().verify(Some(&t)), Err(AuthError::BadSignature));
        assert_eq!(verifier().verify(None), Err(AuthError::Missing));
        assert_eq!(
            verifier().verify(Some("not-a-jwt")),
            Err(AuthError::Malformed)
        );
    }
}

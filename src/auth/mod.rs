//! JWT verification for private channels (contract §2), with `jsonwebtoken`. Only the one
//! configured algorithm is accepted, which refuses `none` and algorithm confusion. Expiry and
//! not-before are checked here against the time passed in, so the rest of the protocol logic
//! stays free of the clock.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use thiserror::Error;

/// Where the key comes from.
pub enum KeySource {
    /// HS256 shared secret.
    Secret(String),
    /// RS256 or ES256 public key, PEM.
    PublicKeyPem(Vec<u8>),
}

#[derive(Debug, Error)]
pub enum AuthConfigError {
    #[error("the public key is neither an RSA nor an EC (P-256) PEM key: {0}")]
    BadKey(String),
    #[error("the HS256 secret is empty")]
    EmptySecret,
}

/// Why a token was refused. The client only ever sees "Invalid token"; the reason is for logs
/// and metrics.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed or badly signed token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token has no 'exp' claim")]
    MissingExpiry,
    #[error("token has no usable '{0}' claim for the user id")]
    MissingUser(String),
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Invalid(_) => "invalid",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingExpiry => "missing_exp",
            TokenError::MissingUser(_) => "missing_user",
        }
    }
}

/// Who a valid token names, and until when (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Arc<str>,
    pub expires_at: u64,
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
    user_claim: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(
        source: KeySource,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway_secs: u64,
        user_claim: &str,
    ) -> Result<Authenticator, AuthConfigError> {
        let (key, alg) = match source {
            KeySource::Secret(s) if s.is_empty() => return Err(AuthConfigError::EmptySecret),
            KeySource::Secret(s) => (DecodingKey::from_secret(s.as_bytes()), Algorithm::HS256),
            KeySource::PublicKeyPem(pem) => match DecodingKey::from_rsa_pem(&pem) {
                Ok(k) => (k, Algorithm::RS256),
                Err(rsa) => match DecodingKey::from_ec_pem(&pem) {
                    Ok(k) => (k, Algorithm::ES256),
                    Err(ec) => return Err(AuthConfigError::BadKey(format!("{rsa}; {ec}"))),
                },
            },
        };
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // A configured issuer or audience must be present, not just right when present.
        let mut required = HashSet::new();
        validation.leeway = 0;
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.insert("iss".to_owned());
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required;
        Ok(Authenticator {
            key,
            validation,
            leeway: leeway_secs,
            user_claim: user_claim.to_owned(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Verifies a token at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Invalid("token longer than 8 KiB".into()));
        }
        let data = decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenError::MissingExpiry)?;
        if now > exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_u64()
                .ok_or_else(|| TokenError::Invalid("'nbf' is not a number".into()))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(TokenError::NotYetValid);
            }
        }
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 && !s.contains(':') => {
                s.clone()
            }
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(TokenError::MissingUser(self.user_claim.clone())),
        };
        Ok(Identity {
            user_id: Arc::from(user),
            expires_at: exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn hs(claims: Value, secret: &str, alg: Algorithm) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn auth() -> Authenticator {
        Authenticator::new(
            KeySource::Secret("s3cret".into()),
            Some("exchange"),
            None,
            5,
            "sub",
        )
        .unwrap()
    }

    #[test]
    fn accepts_a_valid_token() {
        let t = hs(
            json!({"sub":"u-1","exp":1000,"iss":"exchange"}),
            "s3cret",
            Algorithm::HS256,
        );
        assert_eq!(
            auth().verify(&t, 900).unwrap(),
            Identity {
                user_id: Arc::from("u-1"),
                expires_at: 1000
            }
        );
        // Within the leeway after expiry.
        assert!(auth().verify(&t, 1004).is_ok());
    }

    #[test]
    fn refuses_what_an_attacker_tries() {
        let a = auth();
        let ok = json!({"sub":"u-1","exp":1000,"iss":"exchange"});
        assert_eq!(
            a.verify(&hs(ok.clone(), "s3cret", Algorithm::HS256), 2000),
            Err(TokenError::Expired)
        );
        let nbf = json!({"sub":"u-1","exp":5000,"nbf":3000,"iss":"exchange"});
        assert_eq!(
            a.verify(&hs(nbf, "s3cret", Algorithm::HS256), 2000),
            Err(TokenError::NotYetValid)
        );
        assert!(matches!(
            a.verify(&hs(ok.clone(), "wrong", Algorithm::HS256), 900),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            a.verify(&hs(ok.clone(), "s3cret", Algorithm::HS512), 900),
            Err(TokenError::Invalid(_))
        ));
        let wrong_iss = json!({"sub":"u-1","exp":1000,"iss":"evil"});
        assert!(matches!(
            a.verify(&hs(wrong_iss, "s3cret", Algorithm::HS256), 900),
            Err(TokenError::Invalid(_))
        ));
        let no_iss = json!({"sub":"u-1","exp":1000});
        assert!(matches!(
            a.verify(&hs(no_iss, "s3cret", Algorithm::HS256), 900),
            Err(TokenError::Invalid(_))
        ));
        let no_exp = json!({"sub":"u-1","iss":"exchange"});
        assert_eq!(
            a.verify(&hs(no_exp, "s3cret", Algorithm::HS256), 900),
            Err(TokenError::MissingExpiry)
        );
        // alg "none": header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1LTEiLCJleHAiOjEwMDAsImlzcyI6ImV4Y2hhbmdlIn0.";
        assert!(matches!(a.verify(none, 900), Err(TokenError::Invalid(_))));
        // Tampered payload keeps the old signature.
        let t = hs(ok, "s3cret", Algorithm::HS256);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = "eyJzdWIiOiJ1LTIiLCJleHAiOjEwMDAsImlzcyI6ImV4Y2hhbmdlIn0";
        parts[1] = forged;
        assert!(matches!(
            a.verify(&parts.join("."), 900),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            a.verify("garbage", 900),
            Err(TokenError::Invalid(_))
        ));
    }
}

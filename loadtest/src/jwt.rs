//! HS256 JSON Web Tokens for the authenticated users of the `mixed` scenario.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A token for `sub`, valid for one hour.
pub fn hs256(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "sub": sub, "userId": sub, "iat": now, "exp": now + 3600 });
    let payload = B64.encode(claims.to_string());
    let signing = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(signing.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{signing}.{sig}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape() {
        let t = super::hs256("s", "u1");
        assert_eq!(t.split('.').count(), 3);
    }
}

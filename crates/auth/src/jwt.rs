//! JWT auth: tokens signed by an identity server whose public keys are published as a JWKS.
//!
//! The JWKS is fetched on first use and cached; it is fetched again after an hour, when a
//! token names a key id (`kid`) the cache does not have (at most once every 5 s, so that
//! made-up kids cannot make us hammer the identity server), and on `POST
//! /v3/auth/jwks/refresh`. A token must verify with its key, be within `nbf`/`exp` (no
//! leeway: a session ends at `exp`, so it must not start after it), match `authJWTIssuer` and
//! `authJWTAudience` when they are set, and carry the permissions claim
//! (`authJWTClaimKey`, default `mediamtx_permissions`: a list of `{action, path}`, or that list
//! as a JSON string, as some identity servers can only write strings).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use tidegate_core::Action;

use crate::fetch;
use crate::users::Permission;
use crate::AccessError;

const REFRESH_EVERY: Duration = Duration::from_secs(3600);
const UNKNOWN_KID_BACKOFF: Duration = Duration::from_secs(5);

/// What the JWT settings say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JwtConfig {
    pub jwks: String,
    pub jwks_fingerprint: String,
    pub claim_key: String,
    pub issuer: String,
    pub audience: String,
}

/// A verified token: its subject, its permissions and when it expires.
#[derive(Debug)]
pub struct Verified {
    pub subject: String,
    pub permissions: Vec<Permission>,
    pub expires: Option<SystemTime>,
}

struct Cache {
    keys: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
}

pub struct Jwt {
    config: JwtConfig,
    timeout: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

impl Jwt {
    pub fn new(config: JwtConfig, timeout: Duration) -> Jwt {
        Jwt {
            config,
            timeout,
            cache: tokio::sync::Mutex::new(Cache {
                keys: None,
                fetched: None,
            }),
        }
    }

    /// Forgets the cached keys: the next token fetches them again.
    pub async fn refresh(&self) {
        let mut c = self.cache.lock().await;
        c.fetched = None;
    }

    /// The key set, fetched when missing, stale, or when `kid` is unknown to it.
    async fn keys(&self, kid: Option<&str>) -> Result<Arc<JwkSet>, String> {
        let mut c = self.cache.lock().await;
        let now = Instant::now();
        let stale = c
            .fetched
            .is_none_or(|t| now.duration_since(t) >= REFRESH_EVERY);
        let unknown = match (&c.keys, kid) {
            (Some(k), Some(kid)) => k.find(kid).is_none(),
            _ => false,
        };
        let may_retry = c
            .fetched
            .is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_BACKOFF);
        if c.keys.is_none() || stale || (unknown && may_retry) {
            let answer = fetch::request(
                "GET",
                &self.config.jwks,
                Vec::new(),
                &self.config.jwks_fingerprint,
                self.timeout,
            )
            .await
            .map_err(|e| format!("JWKS {}: {e}", self.config.jwks))?;
            if !(200..300).contains(&answer.status) {
                return Err(format!(
                    "JWKS {}: answered {}",
                    self.config.jwks, answer.status
                ));
            }
            let set: JwkSet = serde_json::from_slice(&answer.body)
                .map_err(|e| format!("JWKS {}: not a key set: {e}", self.config.jwks))?;
            tracing::info!(
                "[auth] JWKS fetched from {}: {} key(s)",
                self.config.jwks,
                set.keys.len()
            );
            c.keys = Some(Arc::new(set));
            c.fetched = Some(now);
        }
        c.keys.clone().ok_or_else(|| "no JWKS".to_string())
    }

    /// Verifies `token`; the error says why it is refused (never the token itself).
    pub async fn verify(&self, token: &str) -> Result<Verified, AccessError> {
        let header = decode_header(token)
            .map_err(|e| AccessError::TokenRefused(format!("invalid JWT: {e}")))?;
        let set = self
            .keys(header.kid.as_deref())
            .await
            .map_err(AccessError::JwksUnavailable)?;
        self.check(&set, &header, token)
            .map_err(AccessError::TokenRefused)
    }

    fn check(
        &self,
        set: &JwkSet,
        header: &jsonwebtoken::Header,
        token: &str,
    ) -> Result<Verified, String> {
        let jwk = match &header.kid {
            Some(kid) => set
                .find(kid)
                .ok_or_else(|| format!("JWT key id '{kid}' is not in the JWKS"))?,
            None if set.keys.len() == 1 => &set.keys[0],
            None => return Err("the JWT names no key id and the JWKS has several keys".into()),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key: {e}"))?;
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        v.required_spec_claims = HashSet::new();
        v.validate_exp = true;
        v.validate_nbf = true;
        if self.config.issuer.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&[&self.config.issuer]);
            v.required_spec_claims.insert("iss".into());
        }
        if self.config.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.config.audience]);
            v.required_spec_claims.insert("aud".into());
        }
        let data = decode::<serde_json::Value>(token, &key, &v)
            .map_err(|e| format!("JWT refused: {e}"))?;
        let claims = data.claims;
        let raw = claims
            .get(&self.config.claim_key)
            .ok_or_else(|| format!("claim '{}' not found inside JWT", self.config.claim_key))?;
        let list = match raw {
            serde_json::Value::String(s) => serde_json::from_str(s)
                .map_err(|e| format!("claim '{}': {e}", self.config.claim_key))?,
            other => other.clone(),
        };
        let permissions = parse_permissions(&list)
            .map_err(|e| format!("claim '{}': {e}", self.config.claim_key))?;
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok(Verified {
            subject,
            permissions,
            expires,
        })
    }
}

/// For the fuzz target: a token (as a client sends it) checked against a fixed one-key JWKS,
/// and the same bytes read as a permissions claim.
#[doc(hidden)]
pub fn verify_for_fuzzing(token: &str) -> usize {
    const JWKS: &str = r#"{"keys":[{"kty":"EC","kid":"k","alg":"ES256","crv":"P-256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    let Ok(set) = serde_json::from_str::<JwkSet>(JWKS) else {
        return 0;
    };
    let jwt = Jwt::new(
        JwtConfig {
            claim_key: "mediamtx_permissions".into(),
            audience: "tidegate".into(),
            ..JwtConfig::default()
        },
        Duration::from_secs(1),
    );
    let mut n = 0;
    if let Ok(header) = decode_header(token) {
        n += jwt
            .check(&set, &header, token)
            .map_or(1, |v| v.permissions.len());
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(token) {
        n += parse_permissions(&v).map_or(0, |p| p.len());
    }
    n
}

/// `[{action, path}]` as JSON.
pub fn parse_permissions(v: &serde_json::Value) -> Result<Vec<Permission>, AccessError> {
    permissions(v).map_err(AccessError::Permission)
}

fn permissions(v: &serde_json::Value) -> Result<Vec<Permission>, String> {
    let list = v.as_array().ok_or("expected a list of permissions")?;
    list.iter()
        .map(|p| {
            let action = p
                .get("action")
                .and_then(serde_json::Value::as_str)
                .ok_or("a permission has no action")?;
            let action =
                Action::parse(action).ok_or_else(|| format!("unknown action '{action}'"))?;
            let path = p
                .get("path")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            Permission::new(action, path).map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_as_a_list_or_a_string() {
        let v = serde_json::json!([{"action": "publish", "path": "cam"}, {"action": "api"}]);
        let p = parse_permissions(&v).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p[0].covers(Action::Publish, "cam"));
        assert!(p[1].covers(Action::Api, ""));
        assert!(parse_permissions(&serde_json::json!([{"action": "fly"}])).is_err());
        assert!(parse_permissions(&serde_json::json!({"action": "read"})).is_err());
    }
}

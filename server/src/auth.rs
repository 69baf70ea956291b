//! Who is calling and what they may do: API keys with roles, and a token
//! bucket per key.
//!
//! Keys are configured as SHA-256 hashes, so the config file holds no
//! secret. A presented key is hashed and compared with every configured hash
//! in constant time. With no keys configured the server is open (every
//! caller is admin) and `config` only lets it listen on loopback, as Redis's
//! protected mode does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, Role};
use crate::problem::Problem;

/// The caller of a request, put in its extensions by `authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// 403 unless the caller's role includes `role`.
    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs the {role:?} role; key {:?} has {:?}", self.name, self.role).to_lowercase(),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "no caller"))
    }
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// Keys, roles and rate limits.
pub struct Auth {
    keys: Vec<([u8; 32], Principal)>,
    anonymous_read: bool,
    rate_per_second: f64,
    burst: f64,
    /// One bucket per key name: bounded by the configured keys (plus one
    /// for anonymous callers).
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// The hex SHA-256 of a key, as `auth.keys[].sha256` wants it.
pub fn hash_key(key: &str) -> String {
    crate::hex(&Sha256::digest(key.as_bytes()))
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Self {
        let keys = config
            .keys
            .iter()
            .filter_map(|key| {
                decode_hex32(&key.sha256).map(|hash| (hash, Principal { name: key.name.clone(), role: key.role }))
            })
            .collect();
        Self {
            keys,
            anonymous_read: config.anonymous_read,
            rate_per_second: f64::from(config.rate_per_second),
            burst: f64::from(config.rate_burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller named by an `Authorization` header value, if any.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Principal, Problem> {
        if self.keys.is_empty() {
            return Ok(Principal { name: "open".into(), role: Role::Admin });
        }
        let unauthorized = |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail.to_owned());
        let Some(value) = authorization else {
            if self.anonymous_read {
                return Ok(Principal { name: "anonymous".into(), role: Role::Read });
            }
            return Err(unauthorized("send an API key as `Authorization: Bearer <key>`"));
        };
        let Some(key) = value.strip_prefix("Bearer ").map(str::trim) else {
            return Err(unauthorized("the Authorization header must be `Bearer <key>`"));
        };
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare with every key, whatever matches, so timing says nothing.
        let mut found: Option<&Principal> = None;
        for (hash, principal) in &self.keys {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found.cloned().ok_or_else(|| unauthorized("unknown API key"))
    }

    /// Takes one token from the caller's bucket; the seconds to wait if empty.
    pub fn take_token(&self, principal: &Principal) -> Result<(), u64> {
        if self.rate_per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(principal.name.clone()).or_insert(Bucket { tokens: self.burst, refilled_at: now });
        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_second).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_s = ((1.0 - bucket.tokens) / self.rate_per_second).ceil();
            // A wait in whole seconds, from a positive finite float.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err((wait_s as u64).max(1))
        }
    }
}

/// Middleware: identifies the caller and spends a token, or answers 401/429.
pub async fn authenticate(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(AUTHORIZATION).and_then(|value| value.to_str().ok());
    let principal = match auth.identify(header) {
        Ok(principal) => principal,
        Err(problem) => return problem.into_response(),
    };
    if let Err(wait_s) = auth.take_token(&principal) {
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("key {:?} is over its rate limit", principal.name),
        );
        problem.retry_after_s = Some(wait_s);
        return problem.into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn config(keys: &[(&str, Role, &str)]) -> AuthConfig {
        AuthConfig {
            keys: keys
                .iter()
                .map(|(name, role, key)| ApiKey { name: (*name).into(), role: *role, sha256: hash_key(key) })
                .collect(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn keys_map_to_their_roles_and_others_are_refused() {
        let auth = Auth::new(&config(&[("ops", Role::Admin, "k-admin"), ("shop", Role::Reserve, "k-shop")]));
        assert_eq!(auth.identify(Some("Bearer k-admin")).map(|p| p.role), Ok(Role::Admin));
        assert_eq!(auth.identify(Some("Bearer k-shop")).map(|p| p.name), Ok("shop".into()));
        for bad in [None, Some("Bearer nope"), Some("k-admin"), Some("Basic k-admin")] {
            let error = auth.identify(bad).err();
            assert_eq!(error.map(|p| p.status), Some(StatusCode::UNAUTHORIZED), "{bad:?}");
        }
    }

    #[test]
    fn a_role_covers_the_roles_below_it() {
        let reserve = Principal { name: "shop".into(), role: Role::Reserve };
        assert!(reserve.require(Role::Read).is_ok());
        assert!(reserve.require(Role::Reserve).is_ok());
        assert_eq!(reserve.require(Role::Admin).err().map(|p| p.status), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn anonymous_callers_only_read_when_allowed() {
        let mut settings = config(&[("ops", Role::Admin, "k")]);
        settings.anonymous_read = true;
        let auth = Auth::new(&settings);
        assert_eq!(auth.identify(None).map(|p| p.role), Ok(Role::Read));
        assert!(Auth::new(&AuthConfig::default()).identify(None).is_ok_and(|p| p.role == Role::Admin));
    }

    #[test]
    fn the_bucket_allows_its_burst_then_says_when_to_retry() {
        let mut settings = config(&[("ops", Role::Admin, "k")]);
        settings.rate_per_second = 1;
        settings.rate_burst = 3;
        let auth = Auth::new(&settings);
        let caller = Principal { name: "ops".into(), role: Role::Admin };
        for _ in 0..3 {
            assert_eq!(auth.take_token(&caller), Ok(()));
        }
        assert_eq!(auth.take_token(&caller), Err(1));
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

//! Who is calling and what they may do: API keys with roles, a token bucket
//! per key, and one per client address for failed authentications.
//!
//! Keys are configured as SHA-256 hashes, so the config file holds no
//! secret. A presented key is hashed and compared with every configured hash
//! in constant time. With no keys configured the server is open (every
//! caller is admin) and `config` only lets it listen on loopback, as Redis's
//! protected mode does.
//!
//! Rate limits: a request costs one token of its key's bucket (the key's
//! own `rate_per_second`/`rate_burst`, or `auth`'s); a batch of holds costs
//! one per hold, the rest charged once its body is read
//! (`Auth::take_tokens`). A cost larger than the burst passes from a full
//! bucket and leaves it in debt, so a big batch is possible and paid for.
//! Every failed authentication takes a token from its client address's
//! bucket (`auth.failure_rate_*`); an address with none left gets 429 on
//! every keyed route, whatever key it sends, so it cannot tell a right key
//! from a wrong one faster than the bucket refills.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
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

/// A token bucket's settings: tokens per second (0: unlimited) and size.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second: f64::from(per_second), burst: f64::from(burst.max(1)) }
    }
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, refilled_at: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.refilled_at = now;
    }

    /// Takes `cost` tokens, of which the same request took `taken` before:
    /// allowed when the bucket holds the rest of `min(cost + taken, burst)`;
    /// the tokens may then fall below zero (debt). The whole seconds to wait
    /// otherwise.
    fn take(&mut self, rate: Rate, now: Instant, cost: f64, taken: f64) -> Result<(), u64> {
        self.refill(rate, now);
        let needed = ((cost + taken).min(rate.burst) - taken).max(0.0);
        if self.tokens >= needed {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(wait_s(needed - self.tokens, rate))
        }
    }

    /// Takes `cost` tokens whatever the bucket holds. A failure is charged
    /// so; the address is refused once the bucket is below one, so the debt
    /// stays under one token.
    fn spend(&mut self, rate: Rate, now: Instant, cost: f64) {
        self.refill(rate, now);
        self.tokens -= cost;
    }

    /// Whether one token is there, taking none; the seconds to wait if not.
    fn check(&mut self, rate: Rate, now: Instant) -> Result<(), u64> {
        self.refill(rate, now);
        if self.tokens >= 1.0 { Ok(()) } else { Err(wait_s(1.0 - self.tokens, rate)) }
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        self.tokens + now.duration_since(self.refilled_at).as_secs_f64() * rate.per_second >= rate.burst
    }
}

/// Whole seconds (at least 1) until `missing` tokens have refilled.
fn wait_s(missing: f64, rate: Rate) -> u64 {
    let wait_s = (missing / rate.per_second).ceil();
    if wait_s.is_finite() && wait_s >= 1.0 {
        // A positive finite float, below 2^64 for any configured rate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = wait_s.min(u64::MAX as f64) as u64;
        whole
    } else {
        1
    }
}

/// Failed authentications per client address, bounded by `ips_max`
/// addresses; past it, new addresses share the overflow bucket.
struct Failures {
    rate: Rate,
    ips_max: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

impl Failures {
    /// The bucket `ip`'s failures went to, if any: its own, or the overflow
    /// bucket when the table is full without it. Adds nothing: callers
    /// that never fail take no room.
    fn charged(&mut self, ip: IpAddr) -> Option<&mut Bucket> {
        if self.buckets.contains_key(&ip) {
            self.buckets.get_mut(&ip)
        } else if self.buckets.len() >= self.ips_max {
            Some(&mut self.overflow)
        } else {
            None
        }
    }

    /// The bucket of `ip`: its own, a new one if there is room (after
    /// forgetting the addresses whose bucket is full again), or the
    /// overflow bucket.
    fn bucket(&mut self, ip: IpAddr, now: Instant) -> &mut Bucket {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.ips_max {
            let rate = self.rate;
            self.buckets.retain(|_, bucket| !bucket.is_full(rate, now));
        }
        if self.buckets.contains_key(&ip) || self.buckets.len() < self.ips_max {
            self.buckets.entry(ip).or_insert_with(|| Bucket::full(self.rate, now))
        } else {
            &mut self.overflow
        }
    }
}

/// Keys, roles and rate limits.
pub struct Auth {
    keys: Vec<([u8; 32], Principal)>,
    anonymous_read: bool,
    /// The rate of callers whose key sets none, and of anonymous callers.
    rate: Rate,
    /// Keys' own rates, by key name.
    key_rates: HashMap<String, Rate>,
    /// One bucket per key name: bounded by the configured keys (plus one
    /// for anonymous callers).
    buckets: Mutex<HashMap<String, Bucket>>,
    /// `None` when failures are not limited.
    failures: Option<Mutex<Failures>>,
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
        let key_rates = config
            .keys
            .iter()
            .map(|key| {
                let rate = Rate::new(
                    key.rate_per_second.unwrap_or(config.rate_per_second),
                    key.rate_burst.unwrap_or(config.rate_burst),
                );
                (key.name.clone(), rate)
            })
            .collect();
        // Open (no keys), nothing can fail.
        let failures = (config.failure_rate_per_second > 0 && !config.keys.is_empty()).then(|| {
            let rate = Rate::new(config.failure_rate_per_second, config.failure_rate_burst);
            Mutex::new(Failures {
                rate,
                ips_max: config.failure_ips_max.max(1),
                buckets: HashMap::new(),
                overflow: Bucket::full(rate, Instant::now()),
            })
        });
        Self {
            keys,
            anonymous_read: config.anonymous_read,
            rate: Rate::new(config.rate_per_second, config.rate_burst),
            key_rates,
            buckets: Mutex::new(HashMap::new()),
            failures,
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

    fn rate_of(&self, principal: &Principal) -> Rate {
        self.key_rates.get(&principal.name).copied().unwrap_or(self.rate)
    }

    /// Takes one token from the caller's bucket; the seconds to wait if empty.
    pub fn take_token(&self, principal: &Principal) -> Result<(), u64> {
        self.take_tokens(principal, 1, 0)
    }

    /// Takes `cost` more tokens for a request that took `taken` already
    /// (a batch: one when it arrived, one per further hold once its body is
    /// read); the seconds to wait if the bucket cannot pay.
    pub fn take_tokens(&self, principal: &Principal, cost: u64, taken: u64) -> Result<(), u64> {
        let rate = self.rate_of(principal);
        if rate.per_second <= 0.0 || cost == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(principal.name.clone()).or_insert_with(|| Bucket::full(rate, now));
        // Counts of holds are far below 2^52: exact as floats.
        #[allow(clippy::cast_precision_loss)]
        bucket.take(rate, now, cost as f64, taken as f64)
    }

    /// 429 when `ip` has no failed authentication left; takes nothing.
    fn check_failures(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(failures) = &self.failures else { return Ok(()) };
        let mut failures = failures.lock();
        let (rate, now) = (failures.rate, Instant::now());
        failures.charged(ip).map_or(Ok(()), |bucket| bucket.check(rate, now))
    }

    /// Counts a failed authentication from `ip`.
    fn charge_failure(&self, ip: IpAddr) {
        let Some(failures) = &self.failures else { return };
        let mut failures = failures.lock();
        let rate = failures.rate;
        let now = Instant::now();
        failures.bucket(ip, now).spend(rate, now, 1.0);
    }
}

/// Middleware: refuses an address that failed authentication too often,
/// identifies the caller (charging the address a failure if it cannot) and
/// spends a token, or answers 401/429. A batch pays for its holds in its
/// handler, once their count is known.
pub async fn authenticate(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    if let Some(ip) = ip
        && let Err(wait_s) = auth.check_failures(ip)
    {
        return Problem::rate_limited(format!("too many failed authentications from {ip}"), wait_s).into_response();
    }
    let header = request.headers().get(AUTHORIZATION).and_then(|value| value.to_str().ok());
    let principal = match auth.identify(header) {
        Ok(principal) => principal,
        Err(problem) => {
            if let Some(ip) = ip {
                auth.charge_failure(ip);
            }
            return problem.into_response();
        }
    };
    if let Err(wait_s) = auth.take_token(&principal) {
        return Problem::rate_limited(format!("key {:?} is over its rate limit", principal.name), wait_s)
            .into_response();
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
                .map(|(name, role, key)| ApiKey {
                    name: (*name).into(),
                    role: *role,
                    sha256: hash_key(key),
                    rate_per_second: None,
                    rate_burst: None,
                })
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
    fn a_key_with_a_quota_of_its_own_uses_it_and_the_others_the_default() {
        let mut settings = config(&[("small", Role::Read, "k1"), ("big", Role::Read, "k2")]);
        settings.rate_per_second = 1;
        settings.rate_burst = 100;
        settings.keys[0].rate_burst = Some(2);
        let auth = Auth::new(&settings);
        let small = Principal { name: "small".into(), role: Role::Read };
        let big = Principal { name: "big".into(), role: Role::Read };
        assert_eq!(auth.take_token(&small), Ok(()));
        assert_eq!(auth.take_token(&small), Ok(()));
        assert_eq!(auth.take_token(&small), Err(1));
        for _ in 0..50 {
            assert_eq!(auth.take_token(&big), Ok(()));
        }
        // A key's rate of 0 is no limit, whatever the default.
        settings.keys[0].rate_per_second = Some(0);
        let auth = Auth::new(&settings);
        for _ in 0..500 {
            assert_eq!(auth.take_token(&small), Ok(()));
        }
    }

    #[test]
    fn a_batch_costs_one_token_per_hold_and_may_leave_the_bucket_in_debt() {
        let mut settings = config(&[("shop", Role::Reserve, "k")]);
        settings.rate_per_second = 1;
        settings.rate_burst = 10;
        let auth = Auth::new(&settings);
        let shop = Principal { name: "shop".into(), role: Role::Reserve };
        // A batch of 8: one token on arrival, seven once its body is read.
        assert_eq!(auth.take_token(&shop), Ok(()));
        assert_eq!(auth.take_tokens(&shop, 7, 1), Ok(()));
        // Two left: another batch of 8 is refused (after its arrival token).
        assert_eq!(auth.take_token(&shop), Ok(()));
        assert!(auth.take_tokens(&shop, 7, 1).is_err());
        // A batch larger than the burst passes from a full bucket, into debt.
        let auth = Auth::new(&settings);
        assert_eq!(auth.take_token(&shop), Ok(()));
        assert_eq!(auth.take_tokens(&shop, 1023, 1), Ok(()));
        let wait_s = auth.take_token(&shop).err();
        assert!(wait_s.is_some_and(|s| s >= 1000), "1024 holds at 1/s: {wait_s:?}");
    }

    #[test]
    fn an_address_that_fails_too_often_is_refused_whatever_it_sends_then_others_are_not() {
        let mut settings = config(&[("ops", Role::Admin, "k")]);
        settings.failure_rate_per_second = 1;
        settings.failure_rate_burst = 3;
        settings.failure_ips_max = 2;
        let auth = Auth::new(&settings);
        let (a, b, c, d): (IpAddr, IpAddr, IpAddr, IpAddr) =
            ([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), [10, 0, 0, 3].into(), [10, 0, 0, 4].into());
        for _ in 0..3 {
            assert_eq!(auth.check_failures(a), Ok(()));
            auth.charge_failure(a);
        }
        assert_eq!(auth.check_failures(a), Err(1), "three failures, no fourth guess now");
        assert_eq!(auth.check_failures(b), Ok(()), "another address is not refused");
        // Past failure_ips_max addresses, new ones share one bucket: bounded.
        auth.charge_failure(b);
        for _ in 0..3 {
            auth.charge_failure(c);
        }
        assert_eq!(auth.check_failures(d), Err(1), "c and d share the overflow bucket");
        let open = Auth::new(&AuthConfig { failure_rate_per_second: 0, ..config(&[("ops", Role::Admin, "k")]) });
        for _ in 0..100 {
            open.charge_failure(a);
        }
        assert_eq!(open.check_failures(a), Ok(()), "0 turns it off");
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

//! Every failure a client can see, as `application/problem+json` (RFC 9457)
//! with a stable machine-readable `code`.
//!
//! One place maps each engine refusal and cluster error to one status, so
//! the same condition answers the same way on every route. Nothing here is
//! a 500: a condition the server did not foresee is a bug, and the handlers
//! are written so that none reaches a client as one.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cluster::{ReadError, SubmitError};
use engine::{InputError, Refusal};
use serde_json::{Value, json};

fn over_remaining(over: &engine::customer::OverLimit) -> u64 {
    over.remaining()
}

/// A client-visible failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Extra members of the problem object (e.g. the short lines).
    pub extra: Option<Value>,
    pub retry_after_s: Option<u64>,
}

pub type ApiResult<T> = Result<T, Problem>;

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), extra: None, retry_after_s: None }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// 429 `rate_limited`, retry after `wait_s` seconds.
    pub fn rate_limited(detail: impl Into<String>, wait_s: u64) -> Self {
        let mut problem = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
        problem.retry_after_s = Some(wait_s);
        problem
    }

    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_s = Some(ms.div_ceil(1000).max(1));
        self
    }

    /// A refusal decided by the engine at apply time.
    pub fn refusal(refusal: &Refusal) -> Self {
        let code = refusal.code();
        match refusal {
            Refusal::Invalid(error) => Self::input(error),
            Refusal::ItemNotFound => Self::not_found(code, "no such item"),
            Refusal::ItemExists { version } => {
                Self::new(StatusCode::PRECONDITION_FAILED, code, format!("the item exists (version {version})"))
                    .with_extra(json!({ "version": version }))
            }
            Refusal::VersionMismatch { expected, actual } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                code,
                match actual {
                    Some(actual) => format!("the item is at version {actual}, not {expected}"),
                    None => format!("the item does not exist (expected version {expected})"),
                },
            )
            .with_extra(json!({ "expected_version": expected, "version": actual })),
            Refusal::BelowReserved { on_hand, reserved } => Self::new(
                StatusCode::CONFLICT,
                code,
                format!("on_hand may not go below the {reserved} units reserved (it is {on_hand} now)"),
            )
            .with_extra(json!({ "on_hand": on_hand, "reserved": reserved })),
            Refusal::QuantityOverflow { max } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("a level would exceed {max}"))
            }
            Refusal::InsufficientStock { lines } => {
                Self::new(StatusCode::CONFLICT, code, format!("{} line(s) short", lines.len()))
            }
            Refusal::ReservationNotFound => Self::not_found(code, "no such reservation"),
            Refusal::ReservationIdInUse => Self::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this idempotency key or order was used for a different reservation",
            ),
            Refusal::AlreadyConfirmed => Self::new(StatusCode::CONFLICT, code, "the reservation is confirmed"),
            Refusal::AlreadyReleased => Self::new(StatusCode::CONFLICT, code, "the reservation is released"),
            Refusal::AlreadyExpired => Self::new(StatusCode::CONFLICT, code, "the reservation has expired"),
            Refusal::DeadlineInPast { now_ms, deadline_ms } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                format!("deadline {deadline_ms} is not after now ({now_ms})"),
            ),
            Refusal::DeadlineTooFar { deadline_ms, latest_ms } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                format!("deadline {deadline_ms} is past the latest allowed ({latest_ms})"),
            ),
            Refusal::DeadlineEarlier { current_ms, requested_ms } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                format!("the deadline is {current_ms}; {requested_ms} would shorten it"),
            ),
            Refusal::ShardFull { bound, max } => {
                Self::new(StatusCode::CONFLICT, code, format!("the shard is full ({bound:?}: {max})"))
            }
            Refusal::CustomerLimit { skus } => Self::customer_limit(code, skus),
            Refusal::InvalidWarehousePriority { reason } => Self::bad_request(code, reason.clone()),
            Refusal::ConfirmOverHeld { line, held } => Self::new(
                StatusCode::CONFLICT,
                code,
                format!("confirm line {line} asks for more than the reservation holds there ({held})"),
            )
            .with_extra(json!({ "line": line, "held": held })),
            Refusal::CustomerRequired { sku } => Self::new(
                StatusCode::BAD_REQUEST,
                code,
                format!("{sku} has a limit per customer: the reservation must name its customer_id"),
            )
            .with_extra(json!({ "sku": sku })),
            Refusal::BundleLines { .. }
            | Refusal::SkuIsBundle
            | Refusal::SkuHasItems { .. }
            | Refusal::BundleNotFound
            | Refusal::ItemHasHolds { .. }
            | Refusal::StateShort { .. }
            | Refusal::BelowUnsellable { .. }
            | Refusal::BackorderUnfilled { .. } => Self::catalog_refusal(refusal),
        }
    }

    /// A hold over some SKU's limit per customer: what is left of each.
    fn customer_limit(code: &'static str, skus: &[engine::customer::OverLimit]) -> Self {
        let over: Vec<_> = skus
            .iter()
            .map(|over| {
                json!({
                    "sku": over.sku,
                    "limit_per_customer": over.limit,
                    "used": over.used,
                    "requested": over.requested,
                    "remaining": over.remaining(),
                })
            })
            .collect();
        let detail = match skus {
            [one] => format!(
                "the customer may hold or buy {} more of {} (limit {} per customer), not {}",
                one.remaining(),
                one.sku,
                one.limit,
                one.requested
            ),
            _ => format!("{} SKUs are over their limit per customer", skus.len()),
        };
        let remaining = skus.first().map_or(0, crate::problem::over_remaining);
        Self::new(StatusCode::CONFLICT, code, detail).with_extra(json!({ "skus": over, "remaining": remaining }))
    }

    /// The refusals of bundles, quantity states, deletes and backorders.
    fn catalog_refusal(refusal: &Refusal) -> Self {
        let code = refusal.code();
        match refusal {
            // The reservation routes expand bundle lines; this shows only if
            // a component turned out to be a bundle itself.
            Refusal::BundleLines { lines } => Self::new(
                StatusCode::CONFLICT,
                "bundle_nested",
                "a bundle's component is itself a bundle; bundles do not nest",
            )
            .with_extra(json!({ "lines": lines.iter().map(|line| line.line).collect::<Vec<_>>() })),
            Refusal::SkuIsBundle => Self::new(
                StatusCode::CONFLICT,
                code,
                "the SKU is a bundle: it has no stock of its own (hold it, or stock its components)",
            ),
            Refusal::SkuHasItems { items } => Self::new(
                StatusCode::CONFLICT,
                code,
                format!("the SKU has {items} item(s) with stock of its own; a bundle has none"),
            )
            .with_extra(json!({ "items": items })),
            Refusal::BundleNotFound => Self::not_found(code, "the SKU is not a bundle"),
            Refusal::ItemHasHolds { holds, reserved } => Self::new(
                StatusCode::CONFLICT,
                code,
                format!("{holds} live holds reserve {reserved} units; release or confirm them before deleting"),
            )
            .with_extra(json!({ "holds": holds, "reserved": reserved })),
            Refusal::StateShort { state, requested, has } => {
                Self::new(StatusCode::CONFLICT, code, format!("{state} has {has} units; the move asks for {requested}"))
                    .with_extra(json!({ "state": state.as_str(), "requested": requested, "has": has }))
            }
            Refusal::BelowUnsellable { on_hand, reserved, unsellable } => Self::new(
                StatusCode::CONFLICT,
                code,
                format!(
                    "on_hand may not go below the {reserved} units reserved plus the {unsellable} kept back \
                 (safety stock, damaged, quality control); it is {on_hand} now"
                ),
            )
            .with_extra(json!({ "on_hand": on_hand, "reserved": reserved, "unsellable": unsellable })),
            Refusal::BackorderUnfilled { backordered } => Self::new(
                StatusCode::CONFLICT,
                code,
                format!("{backordered} units of the reservation wait for stock; confirm it once they are filled"),
            )
            .with_extra(json!({ "backordered": backordered })),
            // `refusal` sends only the variants above here.
            other => Self::new(StatusCode::CONFLICT, code, format!("{other:?}")),
        }
    }

    /// A field that breaks an input rule.
    pub fn input(error: &InputError) -> Self {
        let mut problem = Self::bad_request(error.code(), error.to_string());
        if let Some(field) = error.field() {
            problem.extra = Some(json!({ "field": field.to_string() }));
        }
        problem
    }

    pub fn submit(error: &SubmitError) -> Self {
        let code = error.code();
        match error {
            SubmitError::Unavailable { retry_after_ms, .. } | SubmitError::Overloaded { retry_after_ms, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after_ms(*retry_after_ms)
            }
            SubmitError::Unknown { .. } => {
                // Retrying with the same Idempotency-Key is safe: it never applies twice.
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after_ms(1000)
            }
            SubmitError::Invalid(_) => Self::bad_request(code, error.to_string()),
            SubmitError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after_ms(1000)
            }
            SubmitError::ShardStopped { shard, cause, .. } => Self::stopped(code, error.to_string(), *shard, *cause),
        }
    }

    /// The shard stopped on this node (storage failure or broken invariant):
    /// nothing was applied through it; another node may serve the shard.
    fn stopped(code: &'static str, detail: String, shard: u32, cause: cluster::FailureCause) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            .with_extra(json!({ "shard": shard, "cause": cause.code() }))
            .retry_after_ms(1000)
    }

    pub fn read(error: &ReadError) -> Self {
        let code = error.code();
        match error {
            ReadError::Unavailable { retry_after_ms, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after_ms(*retry_after_ms)
            }
            ReadError::Invalid(_) => Self::bad_request(code, error.to_string()),
            ReadError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string()).retry_after_ms(1000)
            }
            ReadError::ShardStopped { shard, cause, .. } => Self::stopped(code, error.to_string(), *shard, *cause),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("https://tally.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (&self.extra, &mut body) {
            for (key, value) in extra {
                map.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        body
    }
}

impl From<SubmitError> for Problem {
    fn from(error: SubmitError) -> Self {
        Self::submit(&error)
    }
}

impl From<ReadError> for Problem {
    fn from(error: ReadError) -> Self {
        Self::read(&error)
    }
}

impl From<InputError> for Problem {
    fn from(error: InputError) -> Self {
        Self::input(&error)
    }
}

/// The code a response carries, for metrics: set by `Problem` responses.
#[derive(Clone, Copy, Debug)]
pub struct ProblemCode(pub &'static str);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(ProblemCode(self.code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_a_4xx_with_its_code() {
        let refusals = [
            Refusal::ItemNotFound,
            Refusal::ItemExists { version: 3 },
            Refusal::VersionMismatch { expected: 1, actual: Some(2) },
            Refusal::BelowReserved { on_hand: 1, reserved: 2 },
            Refusal::QuantityOverflow { max: 9 },
            Refusal::InsufficientStock { lines: Vec::new() },
            Refusal::ReservationNotFound,
            Refusal::AlreadyConfirmed,
            Refusal::AlreadyReleased,
            Refusal::AlreadyExpired,
            Refusal::DeadlineInPast { now_ms: 2, deadline_ms: 1 },
            Refusal::DeadlineTooFar { deadline_ms: 2, latest_ms: 1 },
            Refusal::DeadlineEarlier { current_ms: 2, requested_ms: 1 },
            Refusal::ItemHasHolds { holds: 1, reserved: 2 },
        ];
        for refusal in &refusals {
            let problem = Problem::refusal(refusal);
            assert!(problem.status.is_client_error(), "{refusal:?} -> {}", problem.status);
            assert_eq!(problem.code, refusal.code());
            assert_eq!(problem.body()["code"], refusal.code());
        }
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let problem = Problem::submit(&SubmitError::Unavailable { shard: 1, retry_after_ms: 800 });
        assert_eq!(problem.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem.retry_after_s, Some(1));
        let response = problem.into_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
    }
}

//! HTTP handlers, one module per resource (and `ui`, the admin page and
//! widget, which are pages, not API), and what they share: extractors
//! that turn every malformed request into a problem, reads with a chosen
//! consistency, and JSON shapes of engine views.
//!
//! Handlers are thin (STYLE.md): extract, validate, build a `Command`,
//! submit, map the outcome. Business rules live in the engine.

pub mod admin;
pub mod allocation;
pub mod bulk;
pub mod bundles;
pub mod items;
pub mod ledger;
pub mod ops;
pub mod products;
pub mod reservations;
pub mod states;
pub mod stream;
pub mod ui;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use engine::outcome::{ItemView, ReservationSummary};
use engine::read::{FromAnswer, Query};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::problem::{ApiResult, Problem};

/// A JSON body; bad JSON, wrong types, unknown fields and oversize bodies
/// answer 4xx problems.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        require_json(request.headers())?;
        let bytes = body_bytes(request, state).await?;
        json_object(&bytes).map(JsonBody)
    }
}

/// A JSON body that may be absent: an empty body is `None`; anything else
/// is read as `JsonBody` reads it (content type, size, object, fields).
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let headers = request.headers().clone();
        let bytes = body_bytes(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        require_json(&headers)?;
        json_object(&bytes).map(|value| OptionalJsonBody(Some(value)))
    }
}

/// 415 unless the content type is JSON (`application/json`, `*+json`).
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), Problem> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    if is_json {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ))
    }
}

/// The whole body, within `server.body_bytes_max` (413 `body_too_large`).
async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<bytes::Bytes, Problem> {
    match bytes::Bytes::from_request(request, state).await {
        Ok(bytes) => Ok(bytes),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", rejection.body_text()))
        }
        Err(rejection) => Err(Problem::bad_request("invalid_body", rejection.body_text())),
    }
}

/// A JSON object read into `T`. Every body is an object: serde would
/// otherwise read an array as the struct's fields in order and apply it.
fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    match bytes.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[' | b'"' | b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => {
            return Err(Problem::bad_request("invalid_body", "the body must be a JSON object"));
        }
        _ => return Err(Problem::bad_request("invalid_json", "the body is not JSON")),
    }
    match axum::Json::<T>::from_bytes(bytes) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => Err(json_problem(&rejection)),
    }
}

/// What `Json::from_bytes` refuses: the content type and size are checked
/// before it runs.
fn json_problem(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonSyntaxError(error) => Problem::bad_request("invalid_json", error.body_text()),
        other => Problem::bad_request("invalid_body", other.body_text()),
    }
}

/// Query parameters; unknown or malformed ones answer 400.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(query_problem(&rejection)),
        }
    }
}

fn query_problem(rejection: &QueryRejection) -> Problem {
    Problem::bad_request("invalid_query", rejection.body_text())
}

/// Path segments; bad percent-encoding answers 400.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(path_problem(&rejection)),
        }
    }
}

fn path_problem(rejection: &PathRejection) -> Problem {
    Problem::bad_request("invalid_path", rejection.body_text())
}

/// A `limit` query parameter: `default` when absent, else within `1..=max`
/// (400 `invalid_limit`).
pub fn limit_within<T>(limit: Option<T>, default: T, max: T) -> ApiResult<T>
where
    T: Copy + Default + PartialOrd + std::fmt::Display,
{
    let limit = limit.unwrap_or(default);
    if limit == T::default() || limit > max {
        return Err(Problem::bad_request("invalid_limit", format!("limit must be in 1..={max}")));
    }
    Ok(limit)
}

/// `?consistency=`: linearizable (default) or stale (DESIGN §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(description = "How a read is served: `linearizable` (the default) through the shard's leader, \
    or `stale` from this node's replica, which may lag.")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

impl From<Consistency> for cluster::Consistency {
    fn from(consistency: Consistency) -> Self {
        match consistency {
            Consistency::Linearizable => cluster::Consistency::Linearizable,
            Consistency::Stale => cluster::Consistency::Stale,
        }
    }
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        }
    }
}

/// Asks `shard` a query with the asked consistency and takes the answer
/// of the kind `T`. A query that finds the shard's state corrupt stops the
/// shard on this node (`cluster::Node::query`) and answers 503
/// `shard_stopped`: never a guessed answer.
pub async fn read_shard<T: FromAnswer>(
    state: &AppState,
    shard: u32,
    consistency: Consistency,
    query: Query,
) -> ApiResult<T> {
    let answer = state.node.query(shard, query, consistency.into()).await?;
    T::from_answer(answer).map_err(|mismatch| {
        tracing::error!(shard, %mismatch, "a query answered another kind");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected answer; this is a bug")
    })
}

/// `answers` of a query that answers one per thing asked (`asked` of
/// them), checked before the caller zips them with what it asked.
pub fn one_each<T>(asked: usize, answers: Vec<T>) -> ApiResult<Vec<T>> {
    if answers.len() == asked {
        return Ok(answers);
    }
    tracing::error!(asked, answered = answers.len(), "a query answered another number of items");
    Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected answer; this is a bug"))
}

pub fn item_json(item: &ItemView) -> Value {
    json!({
        "sku": item.sku,
        "warehouse": item.warehouse,
        "on_hand": item.on_hand,
        "reserved": item.reserved,
        "available": item.available,
        "low_stock_threshold": item.low_stock_threshold,
        "status": item.status.as_str(),
        "version": item.version,
        "updated_at_ms": item.updated_at_ms,
        "name": item.name,
        "unit_price_minor": item.unit_price_minor,
        "safety_stock": item.states.safety_stock,
        "damaged": item.states.damaged,
        "quality_control": item.states.quality_control,
        "incoming": item.states.incoming,
        "incoming_expected_at": item.states.incoming_expected_at_ms.map(rfc3339_ms),
        "incoming_expected_at_ms": item.states.incoming_expected_at_ms,
        "backorder_limit": item.states.backorder_limit,
        "backordered": item.states.backordered,
    })
}

pub fn reservation_state(summary: &ReservationSummary) -> &'static str {
    summary.state.as_str()
}

/// The wall clock as Unix milliseconds (for reports, never for log time).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_part = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_part + 2) / 5 + 1;
    let month = if month_part < 10 { month_part + 3 } else { month_part - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_795_219_200_000), "2026-11-21T00:00:00.000Z");
    }
}

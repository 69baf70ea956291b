//! Live events (`GET /v1/events`, Server-Sent Events, resumable with
//! `Last-Event-ID`) and recent alerts (`GET /v1/alerts`).
//!
//! Any node serves every shard's events: each replica applies the same
//! events with the same ids, so a client may reconnect to another node and
//! resume; ids it has seen may repeat there (at-least-once; dedupe by id).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::ids::Sku;
use serde::Deserialize;
use serde_json::json;

use super::{QueryParams, limit_within};
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::events::{SubscribeError, sse_response};
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events of this SKU (reservation expiries name no SKU and are left out).
    #[param(value_type = Option<crate::openapi::Sku>)]
    pub sku: Option<String>,
    /// For clients that cannot set headers (EventSource on first connect).
    pub last_event_id: Option<String>,
}

/// `GET /v1/events?sku=`: stock changes, threshold crossings and expiries.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Follow stock changes, threshold crossings and expiries live",
    description = "A Server-Sent Events stream. Each message has `id:` the event id, `event:` its type and \
        `data:` the event as JSON (schema `Event`); a comment line keeps the connection alive. A subscriber \
        that falls behind gets a last `event: lagged` (data: `LaggedNotice`) and the stream ends. To resume, \
        reconnect (to any node) with `Last-Event-ID`: retained events after it are sent first. Delivery is \
        at least once; deduplicate by id.",
    extensions(("x-tally-role" = json!("read"))),
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, nullable = false,
            description = "Resume after this event id; wins over the `last_event_id` query parameter."),
    ),
    responses(
        (status = 200, description = "The event stream.", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_query`, `invalid_event_id`, `field_empty`, `field_too_long`, \
            `field_bad_character` (sku)."),
        (status = 410, description = "`event_id_not_retained`: the event is older than the resume buffer; \
            read current state, then subscribe afresh."),
        (status = 503, description = "`too_many_subscribers`: retry after `Retry-After`; `timeout`."),
    ),
)]
pub async fn events(
    State(state): Shared,
    principal: Principal,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    if let Some(sku) = &query.sku {
        Sku::new(sku.clone())?;
    }
    let header_id = headers.get("last-event-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let last_event_id = header_id.or(query.last_event_id);
    let subscription = state.hub.subscribe(query.sku, last_event_id.as_deref()).map_err(|error| match error {
        SubscribeError::TooManySubscribers { .. } => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_subscribers", error.to_string())
                .retry_after_ms(5_000)
        }
        SubscribeError::NotRetained(_) => Problem::new(StatusCode::GONE, "event_id_not_retained", error.to_string()),
        SubscribeError::BadEventId(_) => Problem::bad_request("invalid_event_id", error.to_string()),
    })?;
    let keepalive = Duration::from_secs(state.config.events.keepalive_seconds);
    Ok(sse_response(subscription, keepalive))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// Only alerts of this SKU.
    pub sku: Option<String>,
    /// Alerts to return: 1 to `events.alerts_retained_max` (10000 by default); 100 if absent.
    #[param(minimum = 1)]
    pub limit: Option<usize>,
}

/// `GET /v1/alerts?sku=&limit=`: recent threshold crossings, newest first.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    tag = "events",
    summary = "Read recent threshold crossings, newest first",
    description = "The alerts this node has kept (at most `events.alerts_retained_max`).",
    extensions(("x-tally-role" = json!("read"))),
    params(AlertsQuery),
    responses(
        (status = 200, description = "Recent alerts.", body = crate::openapi::AlertList),
        (status = 400, description = "`invalid_query`, `invalid_limit`."),
        (status = 503, description = "`timeout`."),
    ),
)]
pub async fn alerts(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<AlertsQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let limit = limit_within(query.limit, 100, state.config.events.alerts_retained_max)?;
    let alerts = state.hub.recent_alerts(query.sku.as_deref(), limit);
    Ok(axum::Json(json!({ "alerts": alerts })).into_response())
}

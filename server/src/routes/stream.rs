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

use super::QueryParams;
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::events::{SubscribeError, sse_response};
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub sku: Option<String>,
    /// For clients that cannot set headers (EventSource on first connect).
    pub last_event_id: Option<String>,
}

/// `GET /v1/events?sku=`: stock changes, threshold crossings and expiries.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    pub sku: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /v1/alerts?sku=&limit=`: recent threshold crossings, newest first.
pub async fn alerts(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<AlertsQuery>,
) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let max = state.config.events.alerts_retained_max;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(Problem::bad_request("invalid_limit", format!("limit must be in 1..={max}")));
    }
    let alerts = state.hub.recent_alerts(query.sku.as_deref(), limit);
    Ok(axum::Json(json!({ "alerts": alerts })).into_response())
}

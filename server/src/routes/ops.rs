//! Operations: liveness, readiness, cluster status, metrics, OpenAPI.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::auth::Principal;
use crate::config::Role;
use crate::problem::{ApiResult, Problem};

type Shared = State<Arc<AppState>>;

/// `GET /healthz`: the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process runs",
    description = "Needs no key.",
    security(),
    responses((status = 200, description = "The process runs.", body = crate::openapi::Health)),
)]
pub async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: every shard has a leader this node knows, so requests
/// can be served or forwarded.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: every shard has a leader this node knows",
    description = "Needs no key. Ready means requests can be served here or forwarded.",
    security(),
    responses(
        (status = 200, description = "Ready.", body = crate::openapi::Ready),
        (status = 503, description = "`not_ready`: some shards have no known leader (retry after \
            `Retry-After`); `timeout`."),
    ),
)]
pub async fn readyz(State(state): Shared) -> Response {
    let status = state.node.status();
    let leaderless: Vec<u32> = status.shards.iter().filter(|s| s.leader.is_none()).map(|s| s.shard).collect();
    if leaderless.is_empty() {
        axum::Json(json!({ "status": "ready", "node_id": status.node_id })).into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("shards without a leader: {leaderless:?}"))
            .retry_after_ms(1000)
            .into_response()
    }
}

/// `GET /v1/cluster`: nodes, and per shard leader, term, indexes and lag.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "operations",
    summary = "Cluster status: nodes, and per shard leader, term, indexes and lag",
    extensions(("x-tally-role" = json!("read"))),
    responses(
        (status = 200, description = "The cluster as this node sees it.", body = crate::openapi::ClusterStatus),
        (status = 503, description = "`timeout`."),
    ),
)]
pub async fn cluster(State(state): Shared, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let status = state.node.status();
    let shards: Vec<serde_json::Value> = status
        .shards
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard,
                "leader": s.leader,
                "role": s.role,
                "term": s.term,
                "last_log_index": s.last_log_index,
                "committed_index": s.committed_index,
                "applied_index": s.applied_index,
                "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "lag": s.lag,
                "voters": s.voters,
                "learners": s.learners,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "node_id": status.node_id, "nodes": status.nodes, "shards": shards })).into_response())
}

/// `GET /v1/cluster/digests`: each shard's state digest on this node.
#[utoipa::path(
    get,
    path = "/v1/cluster/digests",
    tag = "operations",
    summary = "This node's state digest of each shard, at its applied index",
    description = "A hash of the shard's whole state (items, reservations, indexes) as this node has applied it. \
        Replicas that have applied the same index must have the same digest: compare nodes once they have \
        caught up to check that they converged.",
    extensions(("x-tally-role" = json!("read"))),
    responses(
        (status = 200, description = "One entry per shard.", body = crate::openapi::Digests),
        (status = 503, description = "`unavailable` (a shard did not answer), `timeout`."),
    ),
)]
pub async fn digests(State(state): Shared, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let digests = state.node.digests().await.map_err(|e| Problem::read(&e))?;
    let shards: Vec<serde_json::Value> = digests
        .iter()
        .enumerate()
        .map(|(shard, (applied, digest))| {
            json!({ "shard": shard, "applied_index": applied, "digest": format!("{digest:032x}") })
        })
        .collect();
    Ok(axum::Json(json!({ "node_id": state.node.id(), "shards": shards })).into_response())
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Metrics in the Prometheus text format",
    extensions(("x-tally-role" = json!("read"))),
    responses(
        (status = 200, description = "Prometheus text exposition.", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 503, description = "`timeout`."),
    ),
)]
pub async fn metrics(State(state): Shared, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let hub = state.hub.stats();
    let alerts = state.alerts.stats();
    let extra = [
        ("tally_event_subscribers", "Live /v1/events connections.", hub.subscribers as u64),
        ("tally_events_retained", "Events kept for Last-Event-ID resume.", hub.retained as u64),
        ("tally_events_missed", "Events the hub missed because it fell behind.", hub.lagged_missed),
        ("tally_alerts_delivered", "Alerts delivered to webhooks.", alerts.delivered),
        ("tally_alerts_failed_attempts", "Webhook delivery attempts that failed.", alerts.failed_attempts),
        ("tally_alerts_dropped", "Alerts dropped: queue full or attempts exhausted.", alerts.dropped),
        ("tally_alerts_queued", "Alerts waiting for delivery.", alerts.queued as u64),
    ];
    let text = state.metrics.render(&state.node, &extra).await;
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    Ok(response)
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI document",
    extensions(("x-tally-role" = json!("read"))),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Object),
        (status = 503, description = "`timeout`."),
    ),
)]
pub async fn openapi(principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    Ok(axum::Json(crate::openapi::document()).into_response())
}

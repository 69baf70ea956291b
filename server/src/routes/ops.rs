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

/// `GET /readyz`: every shard runs on this node and has a leader it knows,
/// so requests can be served or forwarded.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: every shard runs here and has a leader this node knows",
    description = "Needs no key. Ready means requests can be served here or forwarded. A shard whose storage failed \
        (fsync error, no space, too many open files) or whose state broke an invariant stops on this node until a \
        restart; while any has, this answers 503 `shard_stopped` naming each one and its cause, so a load \
        balancer sends clients to the other nodes, which serve the shard.",
    security(),
    responses(
        (status = 200, description = "Ready.", body = crate::openapi::Ready),
        (status = 503, description = "`shard_stopped`: shards stopped on this node, each with its cause \
            (`stopped_shards`); `not_ready`: some shards have no known leader (retry after `Retry-After`); \
            `timeout`.", body = crate::openapi::NotReady, content_type = "application/problem+json"),
    ),
)]
pub async fn readyz(State(state): Shared) -> Response {
    let status = state.node.status();
    let leaderless: Vec<u32> =
        status.shards.iter().filter(|s| s.leader.is_none() && s.failure.is_none()).map(|s| s.shard).collect();
    let stopped: Vec<&cluster::ShardFailure> = status.shards.iter().filter_map(|s| s.failure.as_ref()).collect();
    if !stopped.is_empty() {
        let named: Vec<String> =
            stopped.iter().map(|f| format!("shard {} ({}: {})", f.shard, f.cause.code(), f.detail)).collect();
        let shards: Vec<serde_json::Value> = stopped
            .iter()
            .map(|f| json!({ "shard": f.shard, "cause": f.cause.code(), "detail": f.detail, "at_unix_ms": f.at_unix_ms }))
            .collect();
        let detail = format!("stopped on this node until a restart (other nodes may serve them): {}", named.join("; "));
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shard_stopped", detail)
            .with_extra(json!({ "node_id": status.node_id, "stopped_shards": shards, "leaderless_shards": leaderless }))
            .into_response();
    }
    if leaderless.is_empty() {
        axum::Json(json!({ "status": "ready", "node_id": status.node_id })).into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("shards without a leader: {leaderless:?}"))
            .with_extra(json!({ "node_id": status.node_id, "stopped_shards": [], "leaderless_shards": leaderless }))
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
                "membership_term": s.membership_term,
                "stopped": s.failure.as_ref().map(|f| json!({
                    "cause": f.cause.code(),
                    "detail": f.detail,
                    "at_unix_ms": f.at_unix_ms,
                })),
            })
        })
        .collect();
    let change = state.node.membership_change().as_ref().map(super::admin::MembershipChangeStatus::of);
    let placement: Vec<serde_json::Value> = state
        .node
        .placement()
        .iter()
        .map(|p| {
            json!({
                "shard": p.shard,
                "voters": p.voters,
                "preferred_leader": p.preferred_leader,
                "hosted": p.hosted,
                "leader_hint": p.leader_hint,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "node_id": status.node_id,
        "nodes": status.nodes,
        "shards": shards,
        "replication_factor": state.node.config().replicas(),
        "placement": placement,
        "membership_change": change,
    }))
    .into_response())
}

/// `GET /v1/cluster/digests`: the state digest of each shard this node hosts.
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
        (status = 200, description = "One entry per shard this node hosts.", body = crate::openapi::Digests),
        (status = 503, description = "`unavailable` (a shard did not answer), `timeout`."),
    ),
)]
pub async fn digests(State(state): Shared, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Read)?;
    let digests = state.node.digests().await.map_err(|e| Problem::read(&e))?;
    let shards: Vec<serde_json::Value> = digests
        .iter()
        .map(|(shard, applied, digest)| {
            json!({ "shard": shard, "applied_index": applied, "digest": format!("{digest:032x}") })
        })
        .collect();
    Ok(axum::Json(json!({ "node_id": state.node.id(), "shards": shards })).into_response())
}

/// Body of `POST /v1/debug/clock`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockOffset {
    /// Milliseconds added to this node's wall clock where it stamps log
    /// time as a leader (negative: back in time). 0 puts it back.
    pub offset_ms: i64,
}

/// Largest clock offset `POST /v1/debug/clock` takes: a year either way.
const CLOCK_OFFSET_MAX_MS: i64 = 366 * 24 * 3_600 * 1_000;

/// `POST /v1/debug/clock`: moves this node's clock, to test clock jumps.
#[utoipa::path(
    post,
    path = "/v1/debug/clock",
    tag = "operations",
    summary = "Move this node's clock (chaos tests only; off unless `server.debug_clock`)",
    description = "Sets the offset this node adds to its wall clock. Each shard's log time is carried on the \
        monotonic clock from its log, so the offset only shows where the wall clock is still read (a shard with \
        no entry yet, and the one catch-up of an idle shard under a leader that restarted). Chaos runs use it to inject a clock jump on one node. Answers 404 `debug_disabled` unless the node's \
        config sets `server.debug_clock = true`, which no production config should.",
    extensions(("x-tally-role" = json!("admin"))),
    request_body = ClockOffset,
    responses(
        (status = 200, description = "The offset is set: `node_id`, `offset_ms`, `wall_ms` (the moved wall clock) \
            and `log_time_ms` (the latest log time among this node's shards, which a moved wall clock does not \
            move once they have entries)."),
        (status = 400, description = "`invalid_body`, `invalid_json`, `offset_out_of_range`."),
        (status = 404, description = "`debug_disabled`."),
    ),
)]
pub async fn set_clock(
    State(state): Shared,
    principal: Principal,
    crate::routes::JsonBody(body): crate::routes::JsonBody<ClockOffset>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    if !state.config.server.debug_clock {
        return Err(Problem::not_found("debug_disabled", "debug routes are off (server.debug_clock = false)"));
    }
    if body.offset_ms.unsigned_abs() > CLOCK_OFFSET_MAX_MS.unsigned_abs() {
        return Err(Problem::bad_request(
            "offset_out_of_range",
            format!("offset_ms must be within ±{CLOCK_OFFSET_MAX_MS}"),
        ));
    }
    state.node.clock().set_offset_ms(body.offset_ms);
    tracing::warn!(offset_ms = body.offset_ms, "clock offset set through /v1/debug/clock");
    let clock = state.node.clock();
    Ok(axum::Json(json!({
        "node_id": state.node.id(),
        "offset_ms": body.offset_ms,
        "wall_ms": clock.wall_ms(),
        "log_time_ms": clock.latest_ms(),
    }))
    .into_response())
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
    let archive = crate::routes::admin::archive_status(&state.node);
    let archived: u64 = archive.iter().map(|a| a.segments_archived).sum();
    let pending: u64 = archive.iter().map(|a| a.segments_pending).sum();
    let failures: u64 = archive.iter().map(|a| a.copy_failures).sum();
    let backups_done = state.backups.done.load(std::sync::atomic::Ordering::Relaxed);
    let backups_failed = state.backups.failed.load(std::sync::atomic::Ordering::Relaxed);
    let extra = [
        ("tally_event_subscribers", "Live /v1/events connections.", hub.subscribers as u64),
        ("tally_events_retained", "Events kept for Last-Event-ID resume.", hub.retained as u64),
        ("tally_events_missed", "Events the hub missed because it fell behind.", hub.lagged_missed),
        ("tally_alerts_delivered", "Alerts delivered to webhooks.", alerts.delivered),
        ("tally_alerts_failed_attempts", "Webhook delivery attempts that failed.", alerts.failed_attempts),
        ("tally_alerts_dropped", "Alerts dropped: queue full or attempts exhausted.", alerts.dropped),
        ("tally_alerts_queued", "Alerts waiting for delivery.", alerts.queued as u64),
        ("tally_backups_done", "Online backups written since start.", backups_done),
        ("tally_backups_failed", "Online backups that failed since start.", backups_failed),
        ("tally_wal_archive_segments_archived", "WAL segments copied to backup.archive_dir since start.", archived),
        (
            "tally_wal_archive_segments_pending",
            "Sealed WAL segments waiting to be archived (kept in the WAL until they are).",
            pending,
        ),
        (
            "tally_wal_archive_copy_failures",
            "Failed archive copies since start (each retried after backup.archive_retry_ms).",
            failures,
        ),
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

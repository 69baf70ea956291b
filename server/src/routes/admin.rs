//! `/v1/admin/*`: online backups and membership changes (learners and
//! voters of every group at once; adding and removing a node shard by
//! shard, `/v1/admin/nodes`). Admin keys only.
//!
//! Each handler has the usual shape: check the caller, validate the body,
//! hand the work to the node (or the backup writer), map the outcome.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cluster::AdminError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::auth::Principal;
use crate::backup::take::write_backup;
use crate::backup::{BackupError, Manifest};
use crate::config::Role;
use crate::problem::{ApiResult, Problem};
use crate::routes::{JsonBody, PathParams};

type Shared = State<Arc<AppState>>;

/// Voters `PUT /v1/admin/voters` takes at once.
pub const VOTERS_MAX: usize = 64;
/// Longest backup path and peer address a request may name, in bytes.
pub const PATH_BYTES_MAX: usize = 4096;

/// Body of `POST /v1/admin/backup`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// The backup's directory on the node's machine: absolute, inside
    /// `backup.root` when that is set, and new or empty.
    pub to: String,
}

/// One shard of a finished backup.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ShardSummary {
    pub shard: u32,
    pub snapshot_index: Option<u64>,
    pub last_index: Option<u64>,
    pub digest: String,
    pub files: u64,
    pub bytes: u64,
}

/// The last or ongoing backup of this node.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct BackupStatus {
    /// `idle` (none since start), `running`, `done` or `failed`.
    pub state: String,
    pub to: Option<String>,
    pub started_unix_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub shards: Vec<ShardSummary>,
    /// The continuous log archive, per shard (empty without `backup.archive_dir`).
    pub archive: Vec<ArchiveShardStatus>,
}

/// One shard's log archive.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ArchiveShardStatus {
    pub shard: u32,
    pub segments_archived: u64,
    /// Sealed segments waiting to be copied (kept in the WAL meanwhile).
    pub segments_pending: u64,
    pub copy_failures: u64,
    /// The last copy's error, until a copy succeeds.
    pub last_error: Option<String>,
}

/// This node's backups: one at a time.
#[derive(Debug, Default)]
pub struct BackupJobs {
    status: Mutex<BackupStatus>,
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

impl BackupJobs {
    pub fn status(&self) -> BackupStatus {
        let status = self.status.lock().clone();
        if status.state.is_empty() { BackupStatus { state: "idle".into(), ..status } } else { status }
    }
}

/// Each shard's archive counters; empty without an archive.
pub fn archive_status(node: &cluster::Node) -> Vec<ArchiveShardStatus> {
    node.archive_stats()
        .iter()
        .filter_map(|(shard, stats)| {
            let stats = stats.as_ref()?;
            Some(ArchiveShardStatus {
                shard: *shard,
                segments_archived: stats.archived(),
                segments_pending: stats.pending(),
                copy_failures: stats.failures(),
                last_error: stats.last_error(),
            })
        })
        .collect()
}

fn summary(manifest: &Manifest) -> Vec<ShardSummary> {
    manifest
        .shards
        .iter()
        .map(|shard| ShardSummary {
            shard: shard.shard,
            snapshot_index: shard.snapshot_index,
            last_index: shard.last_index,
            digest: shard.digest.clone(),
            files: shard.segments.len() as u64 + u64::from(shard.snapshot.is_some()),
            bytes: shard.segments.iter().map(|f| f.bytes).sum::<u64>() + shard.snapshot.as_ref().map_or(0, |f| f.bytes),
        })
        .collect()
}

/// Checks a backup path: absolute, no `..`, inside `root` when there is one.
fn backup_path(to: &str, root: Option<&Path>) -> Result<PathBuf, Problem> {
    if to.is_empty() || to.len() > PATH_BYTES_MAX {
        return Err(Problem::bad_request("backup_path_invalid", format!("to must be 1 to {PATH_BYTES_MAX} bytes")));
    }
    let path = PathBuf::from(to);
    if !path.is_absolute() || path.components().any(|part| matches!(part, Component::ParentDir | Component::CurDir)) {
        return Err(Problem::bad_request(
            "backup_path_invalid",
            "to must be an absolute path without `.` or `..` (a directory on the node's machine)",
        ));
    }
    if let Some(root) = root
        && !path.starts_with(root)
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "backup_outside_root",
            format!("backups may only be written inside backup.root ({})", root.display()),
        ));
    }
    Ok(path)
}

/// `POST /v1/admin/backup`: an online backup of this node.
#[utoipa::path(
    post,
    path = "/v1/admin/backup",
    tag = "operations",
    summary = "Take an online backup of this node into a directory on its machine",
    description = "Per shard, the newest snapshot and the WAL segments after it (hard links where the backup is \
        on the same file system, copies otherwise), up to the last entry the shard had applied, and \
        `manifest.json` with every file's size and CRC-32C and each shard's state digest at that index. Writes \
        go on meanwhile. Answers when the backup is written; if the request times out first the backup goes \
        on, and `GET /v1/admin/backup` shows when it is done. Check it with `tally backup verify DIR`. A node \
        of a placed cluster (`cluster.replication_factor` below the node count) backs up the shards it hosts: \
        back up nodes that together host every shard (`placement` in `GET /v1/cluster`) and restore with one \
        `--from` per backup.",
    extensions(("x-tally-role" = json!("admin"))),
    request_body = BackupRequest,
    responses(
        (status = 200, description = "The backup is written and replays to its digests.", body = BackupStatus),
        (status = 400, description = "`invalid_body`, `invalid_json`, `backup_path_invalid`."),
        (status = 403, description = "`forbidden`, `backup_outside_root`."),
        (status = 409, description = "`backup_in_progress`, `backup_dir_not_empty`, `backup_needs_a_shard` \
            (this node hosts no shard: a node waiting to be added)."),
        (status = 500, description = "`backup_failed` (the detail says why; the directory may hold part of a \
            backup, without a manifest)."),
    ),
)]
pub async fn start_backup(
    State(state): Shared,
    principal: Principal,
    JsonBody(body): JsonBody<BackupRequest>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let to = backup_path(&body.to, state.config.backup.root.as_deref())?;
    if state.node.hosted_shards().is_empty() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "backup_needs_a_shard",
            "this node hosts no shard (it waits to be added): back up a node that hosts some",
        ));
    }
    {
        let mut status = state.backups.status.lock();
        if status.state == "running" {
            return Err(Problem::new(StatusCode::CONFLICT, "backup_in_progress", "a backup of this node is running"));
        }
        *status = BackupStatus {
            state: "running".into(),
            to: Some(to.display().to_string()),
            started_unix_ms: Some(super::unix_ms()),
            ..BackupStatus::default()
        };
    }
    let started = Instant::now();
    let views = match state.node.backup_views().await {
        Ok(views) => views,
        Err(error) => {
            *state.backups.status.lock() =
                BackupStatus { state: "failed".into(), error: Some(error.to_string()), ..state.backups.status() };
            return Err(Problem::read(&error));
        }
    };
    let (node_id, shard_count, files_max) = (state.node.id(), state.node.shard_count(), state.config.backup.files_max);
    let jobs_state = Arc::clone(&state);
    // Its own task: a request that times out does not cut the backup short.
    let task = tokio::spawn(async move {
        // A thread of its own, below the shard threads' priority (as the
        // snapshot thread is): the replay that checks the backup is CPU
        // work that must not delay writes.
        let (answer, written) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("tally-backup".into()).spawn(move || {
            cluster::shadow::lower_priority();
            let _ = answer.send(write_backup(node_id, shard_count, &views, &to, files_max));
        });
        let result = match spawned {
            Ok(_) => written.await.unwrap_or_else(|_| Err(BackupError::Invalid("the backup thread stopped".into()))),
            Err(error) => Err(BackupError::Invalid(format!("cannot start the backup thread: {error}"))),
        };
        let mut status = jobs_state.backups.status.lock();
        status.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        match &result {
            Ok(manifest) => {
                status.state = "done".into();
                status.files = Some(manifest.files);
                status.bytes = Some(manifest.bytes);
                status.shards = summary(manifest);
                jobs_state.backups.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                status.state = "failed".into();
                status.error = Some(error.to_string());
                jobs_state.backups.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result.map(|_| status.clone())
    });
    match task.await {
        Ok(Ok(status)) => Ok(axum::Json(status).into_response()),
        Ok(Err(error @ BackupError::NotEmpty(_))) => {
            Err(Problem::new(StatusCode::CONFLICT, "backup_dir_not_empty", error.to_string()))
        }
        Ok(Err(error)) => Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", error.to_string())),
        Err(error) => Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", error.to_string())),
    }
}

/// `GET /v1/admin/backup`: the last or ongoing backup.
#[utoipa::path(
    get,
    path = "/v1/admin/backup",
    tag = "operations",
    summary = "The last or ongoing backup of this node",
    extensions(("x-tally-role" = json!("admin"))),
    responses(
        (status = 200, description = "`state` is `idle`, `running`, `done` or `failed`.", body = BackupStatus),
        (status = 403, description = "`forbidden`."),
    ),
)]
pub async fn backup_status(State(state): Shared, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let status = BackupStatus { archive: archive_status(&state.node), ..state.backups.status() };
    Ok(axum::Json(status).into_response())
}

/// Body of `POST /v1/admin/learners`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LearnerRequest {
    pub node_id: u64,
    /// The new node's peer address (`cluster.listen`), `host:port`.
    pub addr: String,
}

/// Body of `PUT /v1/admin/voters`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VotersRequest {
    pub voters: Vec<u64>,
    /// Removed voters stay as learners.
    #[serde(default)]
    pub retain: bool,
}

fn admin_problem(error: &AdminError) -> Problem {
    match error {
        AdminError::Invalid(detail) => Problem::bad_request("invalid_membership", detail.clone()),
        AdminError::Unavailable { .. } => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", error.to_string()).retry_after_ms(1000)
        }
        AdminError::Failed { .. } => Problem::new(StatusCode::CONFLICT, "membership_change_failed", error.to_string()),
        AdminError::AlreadyMember { .. } => {
            Problem::new(StatusCode::CONFLICT, "node_already_member", error.to_string())
        }
        AdminError::NotMember { .. } => Problem::not_found("node_not_member", error.to_string()),
        AdminError::InProgress { .. } => {
            Problem::new(StatusCode::CONFLICT, "membership_change_in_progress", error.to_string())
        }
        AdminError::Placed { .. } => Problem::new(StatusCode::CONFLICT, "cluster_is_placed", error.to_string()),
    }
}

/// `POST /v1/admin/learners`: adds a node to every group as a learner.
#[utoipa::path(
    post,
    path = "/v1/admin/learners",
    tag = "operations",
    summary = "Add a node to every shard's group as a learner, and wait until it caught up",
    description = "The first step of growing a cluster (a restored node starts alone): start the new node with \
        `cluster.members` naming this cluster's nodes (not itself), add it here, then make it a voter with \
        `PUT /v1/admin/voters`.",
    extensions(("x-tally-role" = json!("admin"))),
    request_body = LearnerRequest,
    responses(
        (status = 200, description = "Every group has the learner and it caught up."),
        (status = 400, description = "`invalid_body`, `invalid_json`, `invalid_membership`."),
        (status = 403, description = "`forbidden`."),
        (status = 409, description = "`membership_change_failed`, `cluster_is_placed` (shards live on fewer \
            nodes than there are: `cluster.replication_factor`)."),
        (status = 503, description = "`unavailable` (a shard has no reachable leader)."),
    ),
)]
pub async fn add_learner(
    State(state): Shared,
    principal: Principal,
    JsonBody(body): JsonBody<LearnerRequest>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    if body.addr.is_empty() || body.addr.len() > PATH_BYTES_MAX || !body.addr.contains(':') {
        return Err(Problem::bad_request("invalid_membership", "addr must be host:port"));
    }
    state.node.add_learner(body.node_id, body.addr.clone()).await.map_err(|e| admin_problem(&e))?;
    Ok(axum::Json(json!({ "node_id": body.node_id, "addr": body.addr })).into_response())
}

/// `PUT /v1/admin/voters`: makes a set of nodes every group's voters.
#[utoipa::path(
    put,
    path = "/v1/admin/voters",
    tag = "operations",
    summary = "Make these nodes the voters of every shard's group",
    description = "Joint consensus inside each group. Nodes must be members (learners) already.",
    extensions(("x-tally-role" = json!("admin"))),
    request_body = VotersRequest,
    responses(
        (status = 200, description = "Every group has the voters."),
        (status = 400, description = "`invalid_body`, `invalid_json`, `invalid_membership`."),
        (status = 403, description = "`forbidden`."),
        (status = 409, description = "`membership_change_failed`, `cluster_is_placed` (shards live on fewer \
            nodes than there are: `cluster.replication_factor`)."),
        (status = 503, description = "`unavailable` (a shard has no reachable leader)."),
    ),
)]
pub async fn change_voters(
    State(state): Shared,
    principal: Principal,
    JsonBody(body): JsonBody<VotersRequest>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    if body.voters.is_empty() || body.voters.len() > VOTERS_MAX {
        return Err(Problem::bad_request("invalid_membership", format!("voters must hold 1 to {VOTERS_MAX} node ids")));
    }
    state.node.change_voters(body.voters.clone(), body.retain).await.map_err(|e| admin_problem(&e))?;
    Ok(axum::Json(json!({ "voters": body.voters })).into_response())
}

/// Body of `POST /v1/admin/nodes`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    /// The new node's id (`cluster.node_id`), 1 or more.
    pub id: u64,
    /// The new node's peer address (`cluster.listen`), `host:port`.
    pub addr: String,
}

/// A node addition or removal: the last one this node ran, or the one
/// running.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MembershipChangeStatus {
    /// `add` or `remove`.
    pub operation: String,
    pub node: u64,
    /// The added node's peer address.
    pub addr: Option<String>,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// The shard being moved now.
    pub shard: Option<u32>,
    /// Shards finished (moved, or found already moved).
    pub shards_done: u32,
    pub shards_total: u32,
    /// Why it failed.
    pub error: Option<String>,
}

impl MembershipChangeStatus {
    pub fn of(change: &cluster::node::MembershipChange) -> Self {
        Self {
            operation: change.operation.name().to_owned(),
            node: change.node,
            addr: change.addr.clone(),
            state: change.state.name().to_owned(),
            shard: change.shard,
            shards_done: change.shards_done,
            shards_total: change.shards_total,
            error: change.error.clone(),
        }
    }
}

/// One node of the cluster, as this node's groups see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NodeMembership {
    pub id: u64,
    /// Its peer address.
    pub addr: String,
    /// Shards it is a voter of.
    pub voter_of: u32,
    /// Shards it is a learner of (catching up, or left by an addition that
    /// stopped midway).
    pub learner_of: u32,
}

/// Answer of `GET /v1/admin/nodes` (and of the calls that start a change).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NodesStatus {
    pub shards: u32,
    pub nodes: Vec<NodeMembership>,
    /// The last or running addition or removal started on this node.
    pub change: Option<MembershipChangeStatus>,
}

fn nodes_status(node: &cluster::Node) -> NodesStatus {
    let status = node.status();
    let nodes = status
        .nodes
        .iter()
        .map(|(id, addr)| {
            let voter_of = status.shards.iter().filter(|shard| shard.voters.contains(id)).count();
            let learner_of = status.shards.iter().filter(|shard| shard.learners.contains(id)).count();
            NodeMembership {
                id: *id,
                addr: addr.clone(),
                voter_of: u32::try_from(voter_of).unwrap_or(u32::MAX),
                learner_of: u32::try_from(learner_of).unwrap_or(u32::MAX),
            }
        })
        .collect();
    NodesStatus {
        shards: node.shard_count(),
        nodes,
        change: node.membership_change().as_ref().map(MembershipChangeStatus::of),
    }
}

fn membership_pause(state: &AppState) -> std::time::Duration {
    std::time::Duration::from_millis(state.config.cluster.membership_shard_pause_ms)
}

/// `POST /v1/admin/nodes`: adds a node to every shard, one at a time.
#[utoipa::path(
    post,
    path = "/v1/admin/nodes",
    tag = "operations",
    summary = "Add a node: to every shard's group, or to the shards the placement moves to it",
    description = "Start the new node first, with a fresh data directory, the cluster's \
        `cluster.replication_factor`, and `cluster.members` naming this cluster's members (not itself). \
        With `replication_factor` 0 the node joins every shard; with it set, the placement rule plans \
        each shard's voters over the members plus the node, starting from the voters they have, and only \
        the difference moves (the new node's share, a few more to keep the counts within one). Per shard \
        that changes, in order: each joining node starts the shard's group, joins as a learner and catches \
        up (a snapshot, then the log), the voters change by joint consensus (a leaving leader hands over \
        first), nodes that left drop their copy, and the change pauses `cluster.membership_shard_pause_ms` \
        before the next shard. Last, every member takes the new placement (`GET /v1/cluster`). Writes go \
        on meanwhile. Answers at once (202) with the change running; follow it with `GET /v1/admin/nodes`. \
        Running it again after a failure resumes it. One change at a time per node.",
    extensions(("x-tally-role" = json!("admin"))),
    request_body = NodeRequest,
    responses(
        (status = 202, description = "The change started; `change` shows its progress.", body = NodesStatus),
        (status = 400, description = "`invalid_body`, `invalid_json`, `invalid_membership` (id 0, a bad address, \
            or the id is a member at another address)."),
        (status = 403, description = "`forbidden`."),
        (status = 409, description = "`node_already_member` (a voter of every shard; with \
            `replication_factor` set, a node of the placement), `membership_change_in_progress`."),
    ),
)]
pub async fn add_node(
    State(state): Shared,
    principal: Principal,
    JsonBody(body): JsonBody<NodeRequest>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    if body.addr.is_empty() || body.addr.len() > PATH_BYTES_MAX || !body.addr.contains(':') {
        return Err(Problem::bad_request("invalid_membership", "addr must be host:port"));
    }
    state.node.begin_add_node(body.id, body.addr, membership_pause(&state)).map_err(|e| admin_problem(&e))?;
    Ok((StatusCode::ACCEPTED, axum::Json(nodes_status(&state.node))).into_response())
}

/// `DELETE /v1/admin/nodes/{id}`: removes a node from every shard, one at a time.
#[utoipa::path(
    delete,
    path = "/v1/admin/nodes/{id}",
    tag = "operations",
    summary = "Remove a node from every shard's group, one shard at a time",
    description = "Per shard, in order: the voters become the old ones without the node (joint consensus), \
        which drops it from the group; a shard's leader on that node hands over to the others. With \
        `cluster.replication_factor` set, the placement rule first gives the node's replicas to the \
        nodes that stay (each joins as a learner and catches up before the voter change), the node drops \
        each copy once out, and every member takes the new placement at the end. The change pauses \
        `cluster.membership_shard_pause_ms` between shards. Writes go on meanwhile. Answers at once \
        (202); follow it with `GET /v1/admin/nodes`, then stop the removed node. Send it to a node that \
        stays (a node does not remove itself).",
    extensions(("x-tally-role" = json!("admin"))),
    params(("id" = u64, Path, description = "The node to remove.")),
    responses(
        (status = 202, description = "The change started; `change` shows its progress.", body = NodesStatus),
        (status = 400, description = "`invalid_path`, `invalid_membership` (it is the last voter of a shard, or \
            the node asked)."),
        (status = 403, description = "`forbidden`."),
        (status = 404, description = "`node_not_member`."),
        (status = 409, description = "`membership_change_in_progress`."),
    ),
)]
pub async fn remove_node(
    State(state): Shared,
    principal: Principal,
    PathParams(id): PathParams<u64>,
) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    state.node.begin_remove_node(id, membership_pause(&state)).map_err(|e| admin_problem(&e))?;
    Ok((StatusCode::ACCEPTED, axum::Json(nodes_status(&state.node))).into_response())
}

/// `GET /v1/admin/nodes`: the nodes and the last or running change.
#[utoipa::path(
    get,
    path = "/v1/admin/nodes",
    tag = "operations",
    summary = "The cluster's nodes and the progress of the last node addition or removal",
    description = "Each node with the number of shards it is a voter and a learner of (as this node's groups \
        see them: on a node that does not host every shard, only those it hosts; `placement` in \
        `GET /v1/cluster` has every shard's voters), and the addition or removal started on this node: which \
        shard it is moving and how many are done.",
    extensions(("x-tally-role" = json!("admin"))),
    responses(
        (status = 200, description = "The nodes and the last change.", body = NodesStatus),
        (status = 403, description = "`forbidden`."),
    ),
)]
pub async fn nodes(State(state): Shared, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    Ok(axum::Json(nodes_status(&state.node)).into_response())
}

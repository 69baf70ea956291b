//! `tally node add` / `tally node remove`: ask a running node to add a node
//! to, or remove one from, every shard (`POST /v1/admin/nodes`, `DELETE
//! /v1/admin/nodes/{id}`), then follow the change (`GET /v1/admin/nodes`)
//! and print each shard as it is done, until the change ends. Plain HTTP,
//! through the same small client as `tally backup`.

use std::time::Duration;

use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::backup::client::{HttpClient, call};

/// Pause between two polls of a change still running.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Polls before the command stops following (the change goes on; `GET
/// /v1/admin/nodes` shows it): six hours.
const POLLS_MAX: u32 = 86_400;

/// What to ask for.
#[derive(Debug, Clone)]
pub enum NodeChange {
    Add { id: u64, addr: String },
    Remove { id: u64 },
}

/// Starts `change` on the node at `base` and follows it to its end; prints
/// progress through `progress`. Returns the ended change (`state` `done`).
pub async fn run_change(
    base: &str,
    key: Option<&str>,
    change: &NodeChange,
    mut progress: impl FnMut(&str),
) -> Result<Value, String> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let (status, body) = match change {
        NodeChange::Add { id, addr } => {
            call(&client, base, Method::POST, "/v1/admin/nodes", key, Some(&json!({ "id": id, "addr": addr }))).await?
        }
        NodeChange::Remove { id } => {
            call(&client, base, Method::DELETE, &format!("/v1/admin/nodes/{id}"), key, None).await?
        }
    };
    if status != 202 {
        return Err(format!("{status}: {body}"));
    }
    let mut done_seen = None;
    for _ in 0..POLLS_MAX {
        let (status, body) = call(&client, base, Method::GET, "/v1/admin/nodes", key, None).await?;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        let change = body.get("change").cloned().unwrap_or(Value::Null);
        let done = change.get("shards_done").and_then(Value::as_u64);
        if done != done_seen {
            done_seen = done;
            progress(&format!(
                "{} of {} shards done",
                done.unwrap_or(0),
                change.get("shards_total").and_then(Value::as_u64).unwrap_or(0)
            ));
        }
        match change.get("state").and_then(Value::as_str) {
            Some("running") => tokio::time::sleep(POLL_INTERVAL).await,
            Some("done") => return Ok(body),
            _ => {
                let error = change.get("error").and_then(Value::as_str).unwrap_or("no reason given");
                return Err(format!("the change failed: {error} (run it again to resume)"));
            }
        }
    }
    Err("the change is still running; see GET /v1/admin/nodes".into())
}

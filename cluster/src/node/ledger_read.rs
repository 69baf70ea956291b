//! A page of the movement ledger over every shard, from any node
//! (docs/SCALE-OUT.md §6).
//!
//! Each node's ledger records the shards it applies. For the shards a node
//! serves itself (`route`), a page reads its own files; for each other
//! shard it asks a node that serves it for that shard's part
//! (`Request::LedgerScan`: the leader it knows first, then the map's
//! voters, then every peer), and merges the parts as its own ledger merges
//! its shards (`ledger::merge_page`). A shard's part is the answering
//! host's ledger: a replica that joined by snapshot has a `gap` where its
//! history starts, as reading that node directly shows.

use std::sync::Arc;

use super::Node;
use super::route::{Asked, Route};
use crate::ledger::{Ledger, LedgerEntry, LedgerFilter, LedgerKey, LedgerPage, Scan, merge_page};
use crate::wire::{Request, Response};

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerReadError {
    #[error("the ledger is off on this node (ledger.enabled)")]
    Disabled,
    #[error("the ledger of shard {shard} cannot be read: {reason}")]
    Unavailable { shard: u32, reason: String },
}

/// One shard's part read from this node's files, off the async runtime.
async fn scan_here(
    ledger: &Arc<Ledger>,
    shard: u32,
    filter: &LedgerFilter,
    after: Option<LedgerKey>,
    limit: usize,
) -> Result<Scan, String> {
    let (ledger, filter) = (Arc::clone(ledger), filter.clone());
    tokio::task::spawn_blocking(move || ledger.scan(shard, &filter, after, limit))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

/// A peer's answer to `Request::LedgerScan`: this node's part of the shard,
/// when it serves the shard and keeps a ledger.
pub(super) async fn answer_scan(
    node: &Node,
    shard: u32,
    filter: &LedgerFilter,
    after: Option<LedgerKey>,
    limit: u32,
) -> Response {
    let Some(ledger) = node.inner.ledger.clone() else {
        return Response::Refused("the ledger is off on this node (ledger.enabled)".into());
    };
    let limit = ledger.limit(limit as usize);
    match scan_here(&ledger, shard, filter, after, limit).await {
        Ok(scan) => {
            let entries: Result<Vec<String>, _> = scan.entries.iter().map(serde_json::to_string).collect();
            match entries {
                Ok(entries) => Response::LedgerScanned { entries, stopped_at: scan.stopped_at },
                Err(error) => Response::Refused(error.to_string()),
            }
        }
        Err(reason) => Response::Unavailable(reason),
    }
}

impl Node {
    /// Up to `limit` ledger entries after `after` that `filter` keeps, every
    /// shard merged: this node's own part for the shards it serves, a
    /// host's for the others (see the module doc).
    pub async fn ledger_page(
        &self,
        filter: &LedgerFilter,
        after: Option<LedgerKey>,
        limit: usize,
    ) -> Result<LedgerPage, LedgerReadError> {
        let ledger = self.inner.ledger.clone().ok_or(LedgerReadError::Disabled)?;
        let limit = ledger.limit(limit);
        let mut scans = Vec::with_capacity(self.inner.config.shards as usize);
        for shard in 0..self.inner.config.shards {
            let scan = match self.inner.route(shard) {
                Some(Route::Remote(_)) => self.scan_remote(shard, filter, after, limit).await?,
                _ => scan_here(&ledger, shard, filter, after, limit)
                    .await
                    .map_err(|reason| LedgerReadError::Unavailable { shard, reason })?,
            };
            scans.push(scan);
        }
        Ok(merge_page(scans, limit))
    }

    /// `shard`'s part from a node that serves it, within the retry window.
    async fn scan_remote(
        &self,
        shard: u32,
        filter: &LedgerFilter,
        after: Option<LedgerKey>,
        limit: usize,
    ) -> Result<Scan, LedgerReadError> {
        let inner = &self.inner;
        let unavailable = |reason: String| LedgerReadError::Unavailable { shard, reason };
        let route = inner.routes.get(shard as usize).ok_or_else(|| unavailable("no such shard".into()))?;
        let request = Request::LedgerScan {
            group: shard,
            filter: filter.clone(),
            after,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        };
        let take = |answer| match answer {
            Response::LedgerScanned { entries, stopped_at } => Ok((entries, stopped_at)),
            other => Err(other),
        };
        match inner.ask_serving(route, &request, take).await {
            Asked::Answered { node, value: (entries, stopped_at) } => {
                let entries: Result<Vec<LedgerEntry>, _> =
                    entries.iter().map(|entry| serde_json::from_str(entry)).collect();
                let entries = entries.map_err(|error| unavailable(format!("node {node}: {error}")))?;
                Ok(Scan { entries, stopped_at })
            }
            Asked::Refused { node, reason } => Err(unavailable(format!("node {node}: {reason}"))),
            Asked::ShuttingDown => Err(unavailable("this node is shutting down".into())),
            Asked::Unavailable { last } => Err(unavailable(last)),
        }
    }
}

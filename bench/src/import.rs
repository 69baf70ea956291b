//! `tally-bench import`: how long `POST /v1/items:import` takes to create N
//! items on a fresh single node, and how long `GET /v1/items:export` takes
//! to stream them back (issue goal: 1M items imported in under 20 s).
//!
//! Each run starts its own node on a fresh data folder, so every row is a
//! create. The body is generated before the clock starts and sent whole;
//! the time is from the request's first byte to the report's last. A run
//! whose report does not say every row was created counts as failed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;
use testkit::{Connection, Program};

use crate::tally::{NodeSettings, TallyTarget, Topology};

/// One import and export of `rows` items.
#[derive(Clone, Debug)]
pub struct ImportRun {
    pub rows: u64,
    pub import: Duration,
    pub export: Duration,
    pub exported_bytes: usize,
}

/// NDJSON rows for `rows` items over `warehouses` warehouses.
pub fn ndjson_rows(rows: u64, warehouses: u64) -> Bytes {
    let mut body = String::with_capacity(usize::try_from(rows).unwrap_or(0) * 80);
    for i in 0..rows {
        body.push_str(&format!(
            "{{\"sku\":\"sku-{:07}\",\"warehouse\":\"wh-{}\",\"on_hand\":{},\"low_stock_threshold\":5}}\n",
            i / warehouses,
            i % warehouses,
            100 + i % 900
        ));
    }
    Bytes::from(body)
}

/// One request on a connection of its own.
async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    Ok(Connection::new(addr).send(method, path, content_type, body).await?)
}

/// Starts a node under `dir`, imports `rows` items, exports them, stops it.
pub async fn run_once(program: &Program, dir: &Path, rows: u64, body: Bytes) -> Result<ImportRun, String> {
    let target = TallyTarget::start(program, Topology::Single, dir, NodeSettings::default())
        .await
        .map_err(|e| format!("starting tally: {e:?}"))?;
    let addr = target.address(0);
    let started = Instant::now();
    let answer = exchange(addr, Method::POST, "/v1/items:import", Some("application/x-ndjson"), body).await;
    let import = started.elapsed();
    let checked = answer.and_then(|(status, bytes)| {
        let report: Value = serde_json::from_slice(&bytes).map_err(|e| format!("import report: {e}"))?;
        let created = report["created"].as_u64().unwrap_or(0);
        if status != StatusCode::OK || created != rows || report["failed"].as_u64() != Some(0) {
            return Err(format!("import answered {status}, created {created} of {rows}: {report}"));
        }
        Ok(())
    });
    let exported = match checked {
        Ok(()) => {
            let started = Instant::now();
            exchange(addr, Method::GET, "/v1/items:export", None, Bytes::new()).await.and_then(|(status, bytes)| {
                let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
                if status != StatusCode::OK || lines != rows {
                    return Err(format!("export answered {status} with {lines} of {rows} lines"));
                }
                Ok((started.elapsed(), bytes.len()))
            })
        }
        Err(error) => Err(error),
    };
    target.stop().await;
    let (export, exported_bytes) = exported?;
    Ok(ImportRun { rows, import, export, exported_bytes })
}

/// The median of `values` (the lower middle one for an even count).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len().saturating_sub(1) / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_one_line_each_and_name_distinct_items() {
        let body = ndjson_rows(10, 3);
        let text = std::str::from_utf8(&body).unwrap_or_default();
        let items: std::collections::BTreeSet<(String, String)> = text
            .lines()
            .map(|line| {
                let row: Value = serde_json::from_str(line).unwrap_or_default();
                (
                    row["sku"].as_str().unwrap_or_default().to_owned(),
                    row["warehouse"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert_eq!((text.lines().count(), items.len()), (10, 10));
    }

    #[test]
    fn the_median_is_the_middle_run() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(median(vec![ms(4), ms(1), ms(3), ms(2)]), ms(2));
    }
}

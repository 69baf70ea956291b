//! The `tally` server: Tally's HTTP API over the cluster layer.
//!
//! `config` reads settings; `app` builds the router and runs the node;
//! `http` serves it on the HTTP port with its bounds (connections,
//! header and keep-alive timeouts) and graceful shutdown;
//! `routes` hold the handlers, one module per resource; `problem` turns every
//! failure into `application/problem+json` with a stable code; `auth` checks
//! keys, roles and rate limits; `idempotency` scopes callers' idempotency
//! keys and order ids to their API key; `events` keeps the live stream and its resume
//! buffer; `alerts` delivers threshold crossings to sinks; `metrics` renders
//! Prometheus text.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod events;
pub mod export;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod problem;
pub mod routes;

/// Lowercase hex of `bytes`: key hashes and webhook signatures.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

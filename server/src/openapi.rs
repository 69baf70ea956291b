//! The OpenAPI document served at `/openapi.json`.

use serde_json::{Value, json};

/// The API description.
pub fn document() -> Value {
    json!({ "openapi": "3.1.0", "info": { "title": "Tally", "version": env!("CARGO_PKG_VERSION") }, "paths": {} })
}

//! Structure-aware mutations of JSON bodies.
//!
//! Byte flips of JSON mostly make syntax errors, which the first line of a
//! body parser refuses; the rules behind it (types, bounds, unknown fields,
//! lengths, business checks) need inputs that still parse. So a seed body is
//! parsed and changed as a tree: a value replaced by an edge case (numbers
//! at and past each bound, huge and malformed numbers as raw text, empty,
//! long and control-character strings, wrong types), keys removed, added
//! (known ones from other seeds, unknown ones) or renamed, arrays emptied or
//! grown past their limits, values wrapped. Some results are then
//! byte-mutated too, for the parser itself.

use serde_json::{Map, Value};

use crate::{Mutator, Rng, Seed};

/// A string no real input contains: stands for a raw token that `Value`
/// cannot hold (a number out of range, `-0`), swapped in after serialising.
const RAW_MARK: &str = "\u{1}raw:";

/// Raw number tokens `Value` cannot represent as written.
const RAW_NUMBERS: [&str; 9] = [
    "18446744073709551616",
    "-9223372036854775809",
    "1e400",
    "-0",
    "1.0",
    "1e2",
    "0.5e-400",
    "123456789012345678901234567890",
    "1000000000000001",
];

/// Array lengths past the API's bounds (64 lines a hold, 1000 availability
/// lines, 1024 batch requests by default).
const LONG_ARRAYS: [usize; 5] = [0, 65, 1001, 1025, 2048];

fn interesting(rng: &mut Rng, known_keys: &[String]) -> Value {
    match rng.below(22) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => Value::from(0),
        3 => Value::from(-1),
        4 => Value::from(1),
        5 => Value::from(u64::MAX),
        6 => Value::from(i64::MIN),
        7 => Value::from(1_000_000_000_000_000u64),
        8 => Value::from(1_000_000_000_000_001u64),
        9 => Value::from(-1_000_000_000_000_001i64),
        10 => Value::from(1.5),
        11 => Value::from(86_401),
        12 => Value::String(format!("{RAW_MARK}{}", RAW_NUMBERS[rng.below(RAW_NUMBERS.len())])),
        13 => Value::String(String::new()),
        14 => Value::String("x".repeat([64, 65, 122, 123, 200, 201, 256, 257, 4096][rng.below(9)])),
        15 => Value::String(["\u{0}", "a\nb", "\u{7f}", " ", "\u{202e}", "é", "💥"][rng.below(7)].to_string()),
        16 => Value::String(["../x", "%2F", "a/b", "SKU 1", "*", "-", "~"][rng.below(7)].to_string()),
        17 => Value::Array(Vec::new()),
        18 => Value::Object(Map::new()),
        19 => {
            let key = rng.pick(known_keys).cloned().unwrap_or_else(|| "x".into());
            let mut object = Map::new();
            object.insert(key, Value::from(1));
            Value::Object(object)
        }
        20 => Value::String(["linearizable", "stale", "receive", "sale", "count", "STALE"][rng.below(6)].to_string()),
        _ => Value::from(rng.next_u64() >> rng.below(64)),
    }
}

/// Every key of every object in `value`.
fn keys_of(value: &Value, keys: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
                keys_of(child, keys);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| keys_of(item, keys)),
        _ => {}
    }
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Object(object) => object.values().map(count_nodes).sum(),
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `index`-th node in pre-order.
fn node_mut<'v>(value: &'v mut Value, index: &mut usize) -> Option<&'v mut Value> {
    if *index == 0 {
        return Some(value);
    }
    *index -= 1;
    match value {
        Value::Object(object) => object.values_mut().find_map(|child| node_mut(child, index)),
        Value::Array(items) => items.iter_mut().find_map(|child| node_mut(child, index)),
        _ => None,
    }
}

fn random_node<'v>(value: &'v mut Value, rng: &mut Rng) -> Option<&'v mut Value> {
    let mut index = rng.below(count_nodes(value));
    node_mut(value, &mut index)
}

fn mutate_tree(value: &mut Value, rng: &mut Rng, known_keys: &[String], donors: &[Value]) {
    let Some(node) = random_node(value, rng) else { return };
    match rng.below(8) {
        0 | 1 => *node = interesting(rng, known_keys),
        2 => {
            // A value from another seed: right type, wrong place.
            if let Some(donor) = rng.pick(donors) {
                let mut donor = donor.clone();
                if let Some(part) = random_node(&mut donor, rng) {
                    *node = part.clone();
                }
            }
        }
        3 => match node {
            Value::Object(object) if !object.is_empty() => {
                let key = object.keys().nth(rng.below(object.len())).cloned().unwrap_or_default();
                let removed = object.remove(&key);
                if rng.chance(1, 2)
                    && let Some(removed) = removed
                {
                    // Renamed: a near miss or another known field.
                    let renamed = match rng.below(3) {
                        0 => key.to_uppercase(),
                        1 => format!("{key}_"),
                        _ => rng.pick(known_keys).cloned().unwrap_or_default(),
                    };
                    object.insert(renamed, removed);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                let at = rng.below(items.len());
                items.remove(at);
            }
            other => *other = interesting(rng, known_keys),
        },
        4 => match node {
            Value::Object(object) => {
                let key = if rng.chance(3, 4) {
                    rng.pick(known_keys).cloned().unwrap_or_default()
                } else {
                    "unknown_field".to_string()
                };
                object.insert(key, interesting(rng, known_keys));
            }
            Value::Array(items) => {
                // Grow past a bound, or empty.
                let target = LONG_ARRAYS[rng.below(LONG_ARRAYS.len())];
                match items.first().cloned() {
                    Some(first) if target > 0 => items.resize(target, first),
                    _ => items.clear(),
                }
            }
            other => *other = interesting(rng, known_keys),
        },
        5 => {
            let inner = std::mem::take(node);
            *node = if rng.chance(1, 2) { Value::Array(vec![inner]) } else { Value::String(inner.to_string()) };
        }
        6 => {
            if let Value::Array(items) = node
                && let Some(item) = rng.pick(items).cloned()
            {
                // Duplicates: the same line twice, the same request twice.
                items.push(item);
            } else {
                *node = interesting(rng, known_keys);
            }
        }
        _ => {
            if let Value::Number(number) = node {
                // One past the edge either way: u64 up, i64 down.
                *node = match (number.as_u64(), number.as_i64()) {
                    (Some(n), _) => Value::from(n.wrapping_add(1)),
                    (None, Some(n)) => Value::from(n.wrapping_sub(1)),
                    (None, None) => Value::Null,
                };
            } else {
                *node = interesting(rng, known_keys);
            }
        }
    }
}

fn serialise(value: &Value) -> Vec<u8> {
    let text = value.to_string();
    if !text.contains("\\u0001raw:") {
        return text.into_bytes();
    }
    // Swap each marked string for its raw token.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("\"\\u0001raw:") {
        out.push_str(&rest[..start]);
        let token_start = start + "\"\\u0001raw:".len();
        let Some(end) = rest[token_start..].find('"') else { break };
        out.push_str(&rest[token_start..token_start + end]);
        rest = &rest[token_start + end + 1..];
    }
    out.push_str(rest);
    out.into_bytes()
}

/// A mutated body from one of `seeds` (JSON texts).
pub fn mutate(seeds: &[Seed], rng: &mut Rng) -> Vec<u8> {
    let parsed: Vec<Value> = seeds.iter().filter_map(|seed| serde_json::from_slice(&seed.bytes).ok()).collect();
    mutate_parsed(seeds, &parsed, rng)
}

/// As `mutate`, with the seeds already parsed (`parsed` may be any subset).
pub fn mutate_parsed(seeds: &[Seed], parsed: &[Value], rng: &mut Rng) -> Vec<u8> {
    match rng.pick(parsed) {
        Some(body) => mutate_body(body, parsed, seeds, rng),
        None => Mutator::new(seeds).mutate(rng),
    }
}

/// `body` mutated, with values and keys taken from `donors` (other bodies)
/// and, for byte-level damage, runs of `seeds`.
pub fn mutate_body(body: &Value, donors: &[Value], seeds: &[Seed], rng: &mut Rng) -> Vec<u8> {
    let mut known_keys = Vec::new();
    donors.iter().for_each(|value| keys_of(value, &mut known_keys));
    let mut value = body.clone();
    for _ in 0..=rng.below(3) {
        mutate_tree(&mut value, rng, &known_keys, donors);
    }
    let mut bytes = serialise(&value);
    if rng.chance(1, 5) {
        Mutator { seeds, header_len: 8 }.mutate_bytes(&mut bytes, rng);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_tokens_replace_their_marks() {
        let value = serde_json::json!({"a": format!("{RAW_MARK}1e400"), "b": [format!("{RAW_MARK}-0")], "c": "ok"});
        assert_eq!(String::from_utf8_lossy(&serialise(&value)), r#"{"a":1e400,"b":[-0],"c":"ok"}"#);
    }

    #[test]
    fn mutations_mostly_stay_json() {
        let seeds =
            vec![Seed { name: "s".into(), bytes: br#"{"lines":[{"sku":"A","quantity":2}],"ttl_seconds":5}"#.to_vec() }];
        let mut rng = Rng::new(11);
        let parsed = (0..400).filter(|_| serde_json::from_slice::<Value>(&mutate(&seeds, &mut rng)).is_ok()).count();
        assert!(parsed > 200, "only {parsed} of 400 mutated bodies parse");
    }
}

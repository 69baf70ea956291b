//! Idempotency keys as the engine stores them: scoped to the caller's API
//! key and to their kind, so that an `Idempotency-Key` or `order_id` of one
//! API key never answers another key's reservation, and an
//! `Idempotency-Key` never answers an order (nor the other way round).
//!
//! The engine key is `<kind>␟<principal>␟<caller's key>`: ␟ is the ASCII
//! unit separator (`engine::ids::IDEMPOTENCY_KEY_SEPARATOR`), kind is `k`
//! for an `Idempotency-Key` and `o` for an `order_id`, principal is the
//! API key's name (`open` when no keys are configured). A caller's key is
//! printable ASCII and a key name has no control character (`config.rs`),
//! so neither holds the separator and the encoding is unambiguous: the
//! first two separators end the kind and the principal.
//!
//! Reservation ids derived from a key (`reservations.rs`) hash the same
//! three parts, so two API keys' retries of the same key never meet on an
//! id either. Nothing the API answers shows the engine key: a reservation
//! shows its `order_id`, decoded here.

use engine::ids::{IDEMPOTENCY_KEY_LEN_MAX, IDEMPOTENCY_KEY_SEPARATOR, IdempotencyKey};
use engine::{Field, InputError};
use serde_json::json;

use crate::auth::Principal;
use crate::config::API_KEY_NAME_LEN_MAX;
use crate::problem::{ApiResult, Problem};

/// Longest `Idempotency-Key` or `order_id` a caller may send, in bytes.
pub const CALLER_KEY_LEN_MAX: usize = 128;

/// The engine key has room for the longest caller's key under the longest
/// key name: kind, separator, name, separator, key.
const _: () = assert!(1 + 1 + API_KEY_NAME_LEN_MAX + 1 + CALLER_KEY_LEN_MAX <= IDEMPOTENCY_KEY_LEN_MAX);

const SEPARATOR: char = IDEMPOTENCY_KEY_SEPARATOR as char;

/// What a caller's key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An `Idempotency-Key` (header, or a batch request's member).
    Key,
    /// An `order_id`.
    Order,
}

impl Kind {
    fn tag(self) -> char {
        match self {
            Kind::Key => 'k',
            Kind::Order => 'o',
        }
    }

    /// The field a bad key is reported in.
    fn field(self) -> &'static str {
        match self {
            Kind::Key => "idempotency_key",
            Kind::Order => "order_id",
        }
    }
}

/// Checks a caller's key: 1 to [`CALLER_KEY_LEN_MAX`] bytes of printable
/// ASCII (`!` to `~`). A bad one is a 400 naming its field.
pub fn check(kind: Kind, value: &str) -> ApiResult<()> {
    let field = Field::IdempotencyKey;
    let bytes = value.as_bytes();
    let error = if bytes.is_empty() {
        Some(InputError::Empty { field })
    } else if bytes.len() > CALLER_KEY_LEN_MAX {
        Some(InputError::TooLong { field, len: bytes.len(), max: CALLER_KEY_LEN_MAX })
    } else {
        bytes
            .iter()
            .position(|byte| !(b'!'..=b'~').contains(byte))
            .map(|position| InputError::BadCharacter { field, position })
    };
    match error {
        None => Ok(()),
        Some(error) => {
            let detail = error.to_string().replacen(field.as_str(), kind.field(), 1);
            Err(Problem::bad_request(error.code(), detail).with_extra(json!({ "field": kind.field() })))
        }
    }
}

/// The engine key of a caller's key: checked, then scoped to `principal`
/// and `kind`.
pub fn engine_key(kind: Kind, principal: &Principal, value: &str) -> ApiResult<IdempotencyKey> {
    check(kind, value)?;
    let scoped = format!("{}{SEPARATOR}{}{SEPARATOR}{value}", kind.tag(), principal.name);
    IdempotencyKey::new(scoped).map_err(Problem::from)
}

/// What a reservation id derived from a caller's key hashes: the same three
/// parts as the engine key (NUL-separated; neither part holds a NUL).
pub fn id_seed(kind: Kind, principal: &Principal, value: &str) -> String {
    format!("{}\0{}\0{value}", kind.tag(), principal.name)
}

/// The caller's key of an engine key of `kind`, whatever its principal;
/// `None` for another kind or a key not built here.
pub fn caller_key(kind: Kind, engine_key: &str) -> Option<&str> {
    let mut parts = engine_key.splitn(3, SEPARATOR);
    let tag = parts.next()?;
    let _principal = parts.next()?;
    let value = parts.next()?;
    (tag.len() == 1 && tag.starts_with(kind.tag())).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn caller(name: &str) -> Principal {
        Principal { name: name.into(), role: Role::Reserve }
    }

    fn key(kind: Kind, name: &str, value: &str) -> String {
        engine_key(kind, &caller(name), value).map(IdempotencyKey::into_string).unwrap_or_else(|p| panic!("{p:?}"))
    }

    #[test]
    fn keys_of_two_principals_or_two_kinds_never_meet() {
        let keys = [
            key(Kind::Key, "shop", "X"),
            key(Kind::Key, "web", "X"),
            key(Kind::Order, "shop", "X"),
            key(Kind::Order, "web", "X"),
            // The collision this module exists for: a header `order:X` and order `X`.
            key(Kind::Key, "shop", "order:X"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let seeds = [id_seed(Kind::Key, &caller("shop"), "X"), id_seed(Kind::Key, &caller("web"), "X")];
        assert_ne!(seeds[0], seeds[1]);
    }

    #[test]
    fn a_caller_key_reads_back_from_its_engine_key_and_kind() {
        let order = key(Kind::Order, "shop", "order-7");
        assert_eq!(caller_key(Kind::Order, &order), Some("order-7"));
        assert_eq!(caller_key(Kind::Key, &order), None);
        assert_eq!(caller_key(Kind::Order, &key(Kind::Key, "shop", "order-7")), None);
        assert_eq!(caller_key(Kind::Order, "order:7"), None, "a key not built here is no order");
    }

    #[test]
    fn callers_keep_128_printable_bytes_and_nothing_else() {
        let longest_name = "n".repeat(API_KEY_NAME_LEN_MAX);
        let longest = "x".repeat(CALLER_KEY_LEN_MAX);
        assert!(engine_key(Kind::Key, &caller(&longest_name), &longest).is_ok());
        let too_long = engine_key(Kind::Order, &caller("shop"), &"x".repeat(CALLER_KEY_LEN_MAX + 1));
        assert_eq!(too_long.as_ref().err().map(|p| p.code), Some("field_too_long"));
        assert_eq!(too_long.err().and_then(|p| p.extra).map(|e| e["field"].clone()), Some(json!("order_id")));
        for bad in ["has space", "sep\u{1f}arated", "tab\t", "é"] {
            let refused = engine_key(Kind::Key, &caller("shop"), bad).err().map(|p| p.code);
            assert_eq!(refused, Some("field_bad_character"), "{bad:?}");
        }
        assert_eq!(engine_key(Kind::Key, &caller("shop"), "").err().map(|p| p.code), Some("field_empty"));
    }
}

//! Validated identifiers and quantities: the vocabulary every command is written in.
//!
//! Every value that can come from a caller is checked once, where it is built
//! (`Sku::new`, `Quantity::new`, ...), and again by `Command::validate` when a
//! command arrives from the log or a peer, because deserialisation bypasses the
//! constructors. Both paths share the functions below, so the rules live once.
//!
//! Identifier rule (SKU, warehouse, principal): 1 to N bytes of ASCII, the first
//! a letter or digit, the rest letters, digits or one of `. _ : -`. No `/`, so an
//! identifier is always one URL path segment.

use std::fmt;
use std::str::FromStr;

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Field, InputError};

/// Longest SKU, in bytes.
pub const SKU_LEN_MAX: usize = 64;
/// Longest warehouse id, in bytes.
pub const WAREHOUSE_LEN_MAX: usize = 32;
/// Longest principal (the "who" of a movement), in bytes.
pub const PRINCIPAL_LEN_MAX: usize = 64;
/// Longest idempotency key, in bytes (printable ASCII, no spaces, and the
/// separator). Room for a caller's key of 128 bytes inside the namespace
/// the HTTP layer puts around it (`server/src/idempotency.rs`).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 256;
/// The one byte besides printable ASCII an idempotency key may hold: the
/// ASCII unit separator. A layer above builds namespaced keys with it
/// (`k␟<API key name>␟<caller's key>`) that no printable key can imitate.
pub const IDEMPOTENCY_KEY_SEPARATOR: u8 = 0x1f;
/// Longest customer id, in bytes of printable ASCII.
pub const CUSTOMER_ID_LEN_MAX: usize = 128;
/// Longest item name, in bytes of UTF-8 (no control characters).
pub const NAME_LEN_MAX: usize = 200;
/// Longest free-text note on a movement, in bytes of UTF-8 (no control
/// characters). The HTTP layer may set a smaller bound (`api.note_bytes_max`).
pub const NOTE_LEN_MAX: usize = 1024;
/// Longest caller-supplied reference on a movement (an order id, a delivery
/// note, a count sheet), in bytes of UTF-8 (no control characters).
pub const REFERENCE_LEN_MAX: usize = 128;
/// Largest quantity of anything: on hand, reserved, a line, a delta, a threshold.
/// 10^15 stays exact in an IEEE double, so JavaScript clients never round it.
pub const QUANTITY_MAX: u64 = 1_000_000_000_000_000;
/// Largest unit price, in minor units (cents).
pub const PRICE_MINOR_MAX: u64 = QUANTITY_MAX;

/// Checks an identifier against the rule in the module docs.
pub(crate) fn check_ident(field: Field, value: &str, len_max: usize) -> Result<(), InputError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(InputError::Empty { field });
    }
    if bytes.len() > len_max {
        return Err(InputError::TooLong { field, len: bytes.len(), max: len_max });
    }
    for (position, &byte) in bytes.iter().enumerate() {
        let allowed = byte.is_ascii_alphanumeric() || (position > 0 && matches!(byte, b'.' | b'_' | b':' | b'-'));
        if !allowed {
            return Err(InputError::BadCharacter { field, position });
        }
    }
    Ok(())
}

/// Checks a quantity that must be positive: a line, a transfer.
pub(crate) fn check_quantity(field: Field, value: u64) -> Result<(), InputError> {
    if value == 0 {
        return Err(InputError::Zero { field });
    }
    check_level(field, value)
}

/// Checks a level that may be zero: on hand, a threshold.
pub(crate) fn check_level(field: Field, value: u64) -> Result<(), InputError> {
    if value > QUANTITY_MAX {
        return Err(InputError::TooLarge { field, value, max: QUANTITY_MAX });
    }
    Ok(())
}

macro_rules! ident_type {
    ($(#[$doc:meta])* $name:ident, $field:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
        #[rkyv(derive(Debug))]
        pub struct $name(String);

        impl $name {
            /// Builds the identifier, or says which rule it breaks.
            pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
                let value = value.into();
                check_ident($field, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub(crate) fn check(&self) -> Result<(), InputError> {
                check_ident($field, &self.0, $max)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = InputError;
            fn from_str(value: &str) -> Result<Self, InputError> {
                Self::new(value)
            }
        }
    };
}

ident_type!(
    /// A stock-keeping unit. Every warehouse of one SKU lives on one shard.
    Sku,
    Field::Sku,
    SKU_LEN_MAX
);
ident_type!(
    /// A warehouse (or store, or fulfilment centre) that holds stock.
    Warehouse,
    Field::Warehouse,
    WAREHOUSE_LEN_MAX
);
ident_type!(
    /// Who made an administrative change: the name of an API token, a service.
    Principal,
    Field::Principal,
    PRINCIPAL_LEN_MAX
);

/// A key that makes a hold safe to retry: the same key answers the first
/// reservation and never holds twice. 1 to [`IDEMPOTENCY_KEY_LEN_MAX`] bytes
/// of printable ASCII (`!` to `~`) and [`IDEMPOTENCY_KEY_SEPARATOR`]. The
/// engine gives the bytes no meaning: the HTTP layer stores a caller's key
/// scoped to its API key and kind, and checks the caller's part itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
        let value = value.into();
        check_idempotency_key(&value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub(crate) fn check(&self) -> Result<(), InputError> {
        check_idempotency_key(&self.0)
    }
}

fn check_idempotency_key(value: &str) -> Result<(), InputError> {
    let field = Field::IdempotencyKey;
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(InputError::Empty { field });
    }
    if bytes.len() > IDEMPOTENCY_KEY_LEN_MAX {
        return Err(InputError::TooLong { field, len: bytes.len(), max: IDEMPOTENCY_KEY_LEN_MAX });
    }
    match bytes.iter().position(|byte| !(b'!'..=b'~').contains(byte) && *byte != IDEMPOTENCY_KEY_SEPARATOR) {
        Some(position) => Err(InputError::BadCharacter { field, position }),
        None => Ok(()),
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The shopper a hold is for, as the caller's system names them (an account
/// id, an e-mail address): 1 to [`CUSTOMER_ID_LEN_MAX`] bytes of printable
/// ASCII (`!` to `~`). Per-customer limits count units by it. Not scoped to
/// the API key: every storefront of a shop sees the same customer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct CustomerId(String);

impl CustomerId {
    pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
        let value = value.into();
        check_customer_id(&value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn check(&self) -> Result<(), InputError> {
        check_customer_id(&self.0)
    }
}

fn check_customer_id(value: &str) -> Result<(), InputError> {
    let field = Field::CustomerId;
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(InputError::Empty { field });
    }
    if bytes.len() > CUSTOMER_ID_LEN_MAX {
        return Err(InputError::TooLong { field, len: bytes.len(), max: CUSTOMER_ID_LEN_MAX });
    }
    match bytes.iter().position(|byte| !(b'!'..=b'~').contains(byte)) {
        Some(position) => Err(InputError::BadCharacter { field, position }),
        None => Ok(()),
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A display name for an item: 1 to 200 bytes of UTF-8 without control characters.
#[derive(Clone, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ItemName(String);

impl ItemName {
    pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
        let value = value.into();
        check_name(&value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn check(&self) -> Result<(), InputError> {
        check_name(&self.0)
    }
}

fn check_name(value: &str) -> Result<(), InputError> {
    check_text(Field::Name, value, NAME_LEN_MAX)
}

/// 1 to `max` bytes of UTF-8 without control characters.
fn check_text(field: Field, value: &str, max: usize) -> Result<(), InputError> {
    if value.is_empty() {
        return Err(InputError::Empty { field });
    }
    if value.len() > max {
        return Err(InputError::TooLong { field, len: value.len(), max });
    }
    match value.char_indices().find(|(_, c)| c.is_control()) {
        Some((position, _)) => Err(InputError::BadCharacter { field, position }),
        None => Ok(()),
    }
}

impl fmt::Debug for ItemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Free text, bounded, without control characters: a movement's note and
/// reference. Carried in the log so every replica records the same ledger.
macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $field:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
        #[rkyv(derive(Debug))]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
                let value = value.into();
                check_text($field, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub(crate) fn check(&self) -> Result<(), InputError> {
                check_text($field, &self.0, $max)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

text_type!(
    /// Why a movement was made, in the caller's words: 1 to [`NOTE_LEN_MAX`] bytes.
    Note,
    Field::Note,
    NOTE_LEN_MAX
);
text_type!(
    /// The caller's document for a movement (an order id, a delivery note, a
    /// count sheet): 1 to [`REFERENCE_LEN_MAX`] bytes.
    Reference,
    Field::Reference,
    REFERENCE_LEN_MAX
);

/// A positive number of units, at most [`QUANTITY_MAX`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Quantity(u64);

impl Quantity {
    pub fn new(value: u64) -> Result<Self, InputError> {
        check_quantity(Field::Quantity, value)?;
        Ok(Self(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    pub(crate) fn check(self, field: Field) -> Result<(), InputError> {
        check_quantity(field, self.0)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A reservation's id: 16 bytes, written as 32 lowercase hex digits.
///
/// The first two bytes name the reservation's home shard, so a confirm or a
/// release routes without a lookup; the other fourteen are chosen by the caller
/// (random, in the server) to make the id unique.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
pub struct ReservationId([u8; 16]);

impl ReservationId {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// An id whose home is `shard`, made unique by `unique`.
    pub fn from_parts(shard: u16, unique: [u8; 14]) -> Self {
        let mut bytes = [0; 16];
        bytes[..2].copy_from_slice(&shard.to_be_bytes());
        bytes[2..].copy_from_slice(&unique);
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The shard that coordinates this reservation.
    pub fn home_shard(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ReservationId {
    type Err = InputError;

    fn from_str(text: &str) -> Result<Self, InputError> {
        parse_hex(Field::ReservationId, text).map(Self)
    }
}

/// The id a client or the cluster layer gives one command so that a retry
/// of it is recognised: 16 opaque bytes, written as 32 lowercase hex digits.
///
/// The engine never looks inside. A batch that carries request ids has one
/// per command, and `apply` remembers each id with the command's outcome in
/// a bounded window (`Limits::dedup_window_max`, `dedup_retention_ms`): a
/// command whose id is still remembered is not applied again and answers
/// the first outcome. So ids must be unique per command (random, in the
/// proposer): a reused id gets another command's answer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash))]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for RequestId {
    type Err = InputError;

    fn from_str(text: &str) -> Result<Self, InputError> {
        parse_hex(Field::RequestId, text).map(Self)
    }
}

/// Writes 16 bytes as 32 lowercase hex digits.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 16]) -> fmt::Result {
    let digits = hex_digits(bytes);
    // Lowercase hex digits are ASCII: always valid UTF-8.
    f.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// 32 lowercase hex digits of 16 bytes, without a formatter per byte (ids
/// are printed on every hold's answer).
fn hex_digits(bytes: &[u8; 16]) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// Reads 32 hex digits (either case) as 16 bytes.
fn parse_hex(field: Field, text: &str) -> Result<[u8; 16], InputError> {
    let digits = text.as_bytes();
    if digits.len() != 32 {
        return Err(InputError::BadLength { field, len: digits.len(), expected: 32 });
    }
    let mut bytes = [0u8; 16];
    for (index, pair) in digits.chunks_exact(2).enumerate() {
        let high = hex_value(pair[0]).ok_or(InputError::BadCharacter { field, position: index * 2 })?;
        let low = hex_value(pair[1]).ok_or(InputError::BadCharacter { field, position: index * 2 + 1 })?;
        bytes[index] = (high << 4) | low;
    }
    Ok(bytes)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_the_documented_character_set() {
        assert!(Sku::new("SKU-1.blue:XL_2").is_ok());
        assert!(Warehouse::new("berlin-1").is_ok());
        assert_eq!(Sku::new("a".repeat(SKU_LEN_MAX)).map(|s| s.as_str().len()), Ok(SKU_LEN_MAX));
    }

    #[test]
    fn identifiers_refuse_empty_long_and_foreign_characters() {
        assert_eq!(Sku::new(""), Err(InputError::Empty { field: Field::Sku }));
        assert_eq!(
            Sku::new("a".repeat(SKU_LEN_MAX + 1)),
            Err(InputError::TooLong { field: Field::Sku, len: SKU_LEN_MAX + 1, max: SKU_LEN_MAX })
        );
        assert_eq!(Sku::new("a/b"), Err(InputError::BadCharacter { field: Field::Sku, position: 1 }));
        assert_eq!(Sku::new("-lead"), Err(InputError::BadCharacter { field: Field::Sku, position: 0 }));
        assert_eq!(Warehouse::new("wh 1"), Err(InputError::BadCharacter { field: Field::Warehouse, position: 2 }));
        assert_eq!(Sku::new("é"), Err(InputError::BadCharacter { field: Field::Sku, position: 0 }));
    }

    #[test]
    fn quantities_are_positive_and_bounded() {
        assert_eq!(Quantity::new(0), Err(InputError::Zero { field: Field::Quantity }));
        assert!(Quantity::new(QUANTITY_MAX).is_ok());
        assert_eq!(
            Quantity::new(QUANTITY_MAX + 1),
            Err(InputError::TooLarge { field: Field::Quantity, value: QUANTITY_MAX + 1, max: QUANTITY_MAX })
        );
    }

    #[test]
    fn idempotency_keys_are_printable_ascii_and_the_separator() {
        assert!(IdempotencyKey::new("order-7/retry#1").is_ok());
        assert!(IdempotencyKey::new("k\u{1f}shop\u{1f}order-7").is_ok());
        assert_eq!(
            IdempotencyKey::new("has space"),
            Err(InputError::BadCharacter { field: Field::IdempotencyKey, position: 3 })
        );
        assert_eq!(
            IdempotencyKey::new("tab\tkey"),
            Err(InputError::BadCharacter { field: Field::IdempotencyKey, position: 3 })
        );
        assert!(IdempotencyKey::new("x".repeat(IDEMPOTENCY_KEY_LEN_MAX)).is_ok());
        assert!(matches!(
            IdempotencyKey::new("x".repeat(IDEMPOTENCY_KEY_LEN_MAX + 1)),
            Err(InputError::TooLong { .. })
        ));
    }

    #[test]
    fn names_refuse_control_characters() {
        assert!(ItemName::new("Trainers, blue — size 44").is_ok());
        assert_eq!(ItemName::new("a\nb"), Err(InputError::BadCharacter { field: Field::Name, position: 1 }));
    }

    #[test]
    fn reservation_ids_round_trip_through_hex_and_name_their_home_shard() {
        let id = ReservationId::from_parts(513, [7; 14]);
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<ReservationId>(), Ok(id));
        assert_eq!(id.home_shard(), 513);
        assert_eq!(
            "zz".parse::<ReservationId>(),
            Err(InputError::BadLength { field: Field::ReservationId, len: 2, expected: 32 })
        );
        assert!(format!("{}x", &text[..31]).parse::<ReservationId>().is_err());
    }

    #[test]
    fn request_ids_print_as_32_lowercase_hex_digits_and_parse_back() {
        let id = RequestId([0xAB; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(format!("{id:?}"), "ab".repeat(16));
        assert_eq!("AB".repeat(16).parse::<RequestId>(), Ok(id));
        assert_eq!(
            "ab".parse::<RequestId>(),
            Err(InputError::BadLength { field: Field::RequestId, len: 2, expected: 32 })
        );
    }
}

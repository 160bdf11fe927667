//! The `Idempotency-Key` a client sends to make a retry safe.

use crate::Invalid;

pub const MAX_KEY_LEN: usize = 200;

/// 1 to 200 printable ASCII characters: it becomes part of a Redis key and a Postgres row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok = !raw.is_empty() && raw.len() <= MAX_KEY_LEN && raw.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(Invalid::new("Idempotency-Key", "must be 1 to 200 printable ASCII characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_to_two_hundred_printable_characters() {
        assert_eq!(IdempotencyKey::parse("order-42").unwrap().as_str(), "order-42");
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_KEY_LEN)).is_ok());
        for bad in ["", "with space", "tab\there", "ünïcode"] {
            assert_eq!(IdempotencyKey::parse(bad).unwrap_err().field, "Idempotency-Key", "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }
}

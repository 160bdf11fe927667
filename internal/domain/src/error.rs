//! The validation error shared by every parser in this crate.

use std::fmt;

/// Input that breaks a rule. `field` names the offending input as the client spelled it
/// (`price`, `items[1].quantity`), so the API can answer with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error seen from one level up, e.g. `quantity` inside `items[2]`.
    pub fn within(self, parent: &str) -> Self {
        Self { field: format!("{parent}.{}", self.field), message: self.message }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

//! Every Redis key and channel name, in one place.

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A cached product (JSON), or the marker of an id that does not exist.
    pub fn product(&self, id: Uuid) -> String {
        format!("{}:product:{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_prefix() {
        let keys = Keys::new("test:abc");
        assert_eq!(keys.product(Uuid::nil()), "test:abc:product:00000000-0000-0000-0000-000000000000");
    }
}

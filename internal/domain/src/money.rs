//! Money: a decimal with at most two places, never a float.
//!
//! JSON carries money as a string (`"199.00"`), Postgres as `NUMERIC(12,2)`, and the Redis
//! scripts as an integer number of cents, because Lua numbers are doubles and a script
//! must never round a price.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::Invalid;

/// The largest amount Spike accepts: the largest `NUMERIC(12,2)`, the column type of every
/// price. Amounts above 1e12 are absurd anyway; this bound is stricter, so no accepted
/// amount can overflow its column, and as cents it is exact in a Lua double (< 2^53).
pub const MAX_CENTS: i64 = 999_999_999_999;

/// What [`Money::parse_positive`] accepts, as the regular expression the API spec shows:
/// up to ten digits without a leading zero, up to two decimals, above zero.
pub const MONEY_PATTERN: &str = r"^([1-9][0-9]{0,9}(\.[0-9]{1,2})?|0\.(0[1-9]|[1-9][0-9]?))$";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Parses a client's amount: a plain decimal string, at most two decimals, above zero
    /// and not above [`MAX_CENTS`] cents. `field` names the input in the error.
    pub fn parse_positive(field: &str, raw: &str) -> Result<Self, Invalid> {
        let money = Self::parse(field, raw)?;
        if money.0.is_zero() {
            return Err(Invalid::new(field, "must be greater than 0"));
        }
        Ok(money)
    }

    /// Like [`Money::parse_positive`] but zero is allowed. The text must match
    /// [`MONEY_PATTERN`] exactly (no sign, spaces, exponent or leading zeros), so the API
    /// spec's pattern and this parser accept the same strings.
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        const FORMAT: &str = "must be a decimal string such as \"199.00\"";
        if raw.starts_with('-') {
            return Err(Invalid::new(field, "must not be negative"));
        }
        let (whole, fraction) = match raw.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (raw, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
            return Err(Invalid::new(field, FORMAT));
        }
        if whole.len() > 1 && whole.starts_with('0') {
            return Err(Invalid::new(field, "must not start with a zero"));
        }
        if fraction.is_some_and(|f| f.len() > 2) {
            return Err(Invalid::new(field, "must have at most 2 decimals"));
        }
        if whole.len() > 10 {
            return Err(Invalid::new(field, "must not exceed 9999999999.99"));
        }
        let value = Decimal::from_str(raw).map_err(|_| Invalid::new(field, FORMAT))?;
        Ok(Self::from_decimal(value))
    }

    /// Wraps a decimal read from the database (already `NUMERIC(_,2)`).
    pub fn from_decimal(value: Decimal) -> Self {
        let mut value = value.round_dp(2);
        value.rescale(2);
        Self(value)
    }

    pub fn from_cents(cents: i64) -> Self {
        Self(Decimal::new(cents, 2))
    }

    /// The amount as integer cents, the form the Lua scripts compare.
    pub fn cents(self) -> i64 {
        let scaled = self.0 * Decimal::ONE_HUNDRED;
        i64::try_from(scaled.trunc()).expect("accepted money is bounded by MAX_CENTS")
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    pub fn times(self, quantity: u32) -> Self {
        Self::from_decimal(self.0 * Decimal::from(quantity))
    }

    pub fn plus(self, other: Money) -> Self {
        Self::from_decimal(self.0 + other.0)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        Money::parse_positive("price", raw).unwrap().to_string()
    }

    fn err(raw: &str) -> String {
        Money::parse_positive("price", raw).unwrap_err().message
    }

    #[test]
    fn whole_and_fractional_amounts_are_shown_with_two_decimals() {
        assert_eq!(ok("199"), "199.00");
        assert_eq!(ok("199.5"), "199.50");
        assert_eq!(ok("0.01"), "0.01");
        assert_eq!(ok("9999999999.99"), "9999999999.99");
    }

    #[test]
    fn only_the_plain_form_is_accepted() {
        assert_eq!(err("1.500"), "must have at most 2 decimals");
        assert_eq!(err("007"), "must not start with a zero");
        assert!(err(" 1.00").starts_with("must be a decimal string"));
        assert!(err("+1").starts_with("must be a decimal string"));
        assert_eq!(ok("0.10"), "0.10");
    }

    #[test]
    fn three_decimals_negative_zero_and_absurd_amounts_are_refused() {
        assert_eq!(err("1.005"), "must have at most 2 decimals");
        assert_eq!(err("-1.00"), "must not be negative");
        assert_eq!(err("0"), "must be greater than 0");
        assert_eq!(err("0.00"), "must be greater than 0");
        assert_eq!(err("10000000000"), "must not exceed 9999999999.99");
        assert_eq!(err("1000000000000000"), "must not exceed 9999999999.99");
        assert!(err("1e3").starts_with("must be a decimal string"));
        assert!(err("").starts_with("must be a decimal string"));
        assert!(err("12.").starts_with("must be a decimal string"));
        assert!(err("NaN").starts_with("must be a decimal string"));
    }

    #[test]
    fn cents_round_trip_exactly() {
        let money = Money::parse_positive("price", "123456789.99").unwrap();
        assert_eq!(money.cents(), 12_345_678_999);
        assert_eq!(Money::from_cents(money.cents()), money);
    }

    #[test]
    fn totals_are_exact() {
        let price = Money::parse_positive("price", "0.10").unwrap();
        assert_eq!(price.times(3).to_string(), "0.30");
        assert_eq!(price.plus(price.times(2)).to_string(), "0.30");
    }
}

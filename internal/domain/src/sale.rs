//! Flash sales: what an admin may create and the status a buyer sees.

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::names::named;
use crate::{Invalid, Money};

pub const MAX_SALE_STOCK: i64 = 10_000_000;
pub const MAX_PAYMENT_TIMEOUT_SECS: i64 = 7 * 24 * 3600;
pub const MAX_PER_USER_LIMIT: i64 = 1000;
/// At most this many stock buckets per sale (`repo::cache::buckets`).
pub const MAX_STOCK_BUCKETS: i64 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSale {
    pub product_id: Uuid,
    pub price: Money,
    pub stock: u32,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub per_user_limit: u32,
    pub payment_timeout_secs: u32,
    /// Buckets the stock is split into, each on its own Redis hash tag (1: one set of keys).
    pub stock_buckets: u16,
}

/// The raw fields of `POST /sales`, before any rule was checked.
#[derive(Debug, Clone)]
pub struct SaleFields<'a> {
    pub product_id: Uuid,
    pub price: &'a str,
    pub stock: i64,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub per_user_limit: i64,
    pub payment_timeout_secs: i64,
    pub stock_buckets: i64,
}

impl NewSale {
    pub fn parse(fields: SaleFields<'_>) -> Result<Self, Invalid> {
        let price = Money::parse_positive("price", fields.price)?;
        if !(1..=MAX_SALE_STOCK).contains(&fields.stock) {
            return Err(Invalid::new("stock", format!("must be between 1 and {MAX_SALE_STOCK}")));
        }
        if fields.end_at.trunc_subsecs(3) <= fields.start_at.trunc_subsecs(3) {
            return Err(Invalid::new("end_at", "must be after start_at"));
        }
        if !(1..=MAX_PER_USER_LIMIT).contains(&fields.per_user_limit) {
            return Err(Invalid::new("per_user_limit", format!("must be between 1 and {MAX_PER_USER_LIMIT}")));
        }
        if !(1..=MAX_PAYMENT_TIMEOUT_SECS).contains(&fields.payment_timeout_secs) {
            return Err(Invalid::new(
                "payment_timeout_secs",
                format!("must be between 1 and {MAX_PAYMENT_TIMEOUT_SECS}"),
            ));
        }
        if !(1..=MAX_STOCK_BUCKETS).contains(&fields.stock_buckets) {
            return Err(Invalid::new("stock_buckets", format!("must be between 1 and {MAX_STOCK_BUCKETS}")));
        }
        if fields.stock_buckets > fields.stock {
            return Err(Invalid::new("stock_buckets", "must not exceed stock (every bucket starts with a unit)"));
        }
        Ok(Self {
            product_id: fields.product_id,
            price,
            stock: fields.stock as u32,
            // Redis keeps times in milliseconds; so does everything else, so they compare equal.
            start_at: fields.start_at.trunc_subsecs(3),
            end_at: fields.end_at.trunc_subsecs(3),
            per_user_limit: fields.per_user_limit as u32,
            payment_timeout_secs: fields.payment_timeout_secs as u32,
            stock_buckets: fields.stock_buckets as u16,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleStatus {
    Scheduled,
    Active,
    SoldOut,
    Ended,
}

impl SaleStatus {
    /// The window decides first: a sale that has ended is `ended` even with units left.
    pub fn at(now: DateTime<Utc>, start_at: DateTime<Utc>, end_at: DateTime<Utc>, remaining: i64) -> Self {
        if now < start_at {
            SaleStatus::Scheduled
        } else if now >= end_at {
            SaleStatus::Ended
        } else if remaining <= 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Active
        }
    }
}

named!(SaleStatus, "status", "sale status", {
    Scheduled => "scheduled",
    Active => "active",
    SoldOut => "sold_out",
    Ended => "ended",
});

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn fields(now: DateTime<Utc>) -> SaleFields<'static> {
        SaleFields {
            product_id: Uuid::nil(),
            price: "9.99",
            stock: 100,
            start_at: now,
            end_at: now + Duration::minutes(10),
            per_user_limit: 1,
            payment_timeout_secs: 900,
            stock_buckets: 1,
        }
    }

    #[test]
    fn a_well_formed_sale_parses() {
        let sale = NewSale::parse(fields(Utc::now())).unwrap();
        assert_eq!(sale.price.to_string(), "9.99");
        assert_eq!(sale.stock, 100);
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let now = Utc::now();
        let cases: Vec<(&str, SaleFields)> = vec![
            ("price", SaleFields { price: "0", ..fields(now) }),
            ("stock", SaleFields { stock: 0, ..fields(now) }),
            ("end_at", SaleFields { end_at: now, ..fields(now) }),
            ("per_user_limit", SaleFields { per_user_limit: 0, ..fields(now) }),
            ("payment_timeout_secs", SaleFields { payment_timeout_secs: 0, ..fields(now) }),
            ("stock_buckets", SaleFields { stock_buckets: 0, ..fields(now) }),
            ("stock_buckets", SaleFields { stock_buckets: 65, ..fields(now) }),
            ("stock_buckets", SaleFields { stock: 3, stock_buckets: 4, ..fields(now) }),
        ];
        for (field, raw) in cases {
            assert_eq!(NewSale::parse(raw).unwrap_err().field, field);
        }
    }

    #[test]
    fn status_follows_the_window_then_the_stock() {
        let start = Utc::now();
        let end = start + Duration::minutes(1);
        assert_eq!(SaleStatus::at(start - Duration::seconds(1), start, end, 5), SaleStatus::Scheduled);
        assert_eq!(SaleStatus::at(start, start, end, 5), SaleStatus::Active);
        assert_eq!(SaleStatus::at(start, start, end, 0), SaleStatus::SoldOut);
        assert_eq!(SaleStatus::at(end, start, end, 5), SaleStatus::Ended);
    }
}

//! Products: what an admin may create or change.

use crate::{Invalid, Money};

pub const MAX_STOCK: i64 = 100_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub title: String,
    pub description: String,
    pub price: Money,
    pub stock: i32,
}

impl NewProduct {
    pub fn parse(title: &str, description: &str, price: &str, stock: i64) -> Result<Self, Invalid> {
        Ok(Self {
            title: crate::page::text("title", title, 1, crate::page::TITLE_MAX_CHARS)?,
            description: crate::page::text("description", description, 0, crate::page::DESCRIPTION_MAX_CHARS)?,
            price: Money::parse_positive("price", price)?,
            stock: parse_stock(stock)?,
        })
    }
}

/// A partial update: only the fields that are `Some` change; an empty one changes nothing
/// (a merge patch of `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    pub title: Option<String>,
    pub description: Option<String>,
    pub price: Option<Money>,
    pub stock: Option<i32>,
}

impl ProductPatch {
    pub fn parse(
        title: Option<&str>,
        description: Option<&str>,
        price: Option<&str>,
        stock: Option<i64>,
    ) -> Result<Self, Invalid> {
        Ok(Self {
            title: title.map(|t| crate::page::text("title", t, 1, crate::page::TITLE_MAX_CHARS)).transpose()?,
            description: description
                .map(|d| crate::page::text("description", d, 0, crate::page::DESCRIPTION_MAX_CHARS))
                .transpose()?,
            price: price.map(|p| Money::parse_positive("price", p)).transpose()?,
            stock: stock.map(parse_stock).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn parse_stock(stock: i64) -> Result<i32, Invalid> {
    if !(0..=MAX_STOCK).contains(&stock) {
        return Err(Invalid::new("stock", format!("must be between 0 and {MAX_STOCK}")));
    }
    Ok(stock as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_needs_a_title_a_positive_price_and_non_negative_stock() {
        assert!(NewProduct::parse("Phone", "", "199.00", 0).is_ok());
        assert_eq!(NewProduct::parse("", "", "1", 1).unwrap_err().field, "title");
        assert_eq!(NewProduct::parse("x", "", "0", 1).unwrap_err().field, "price");
        assert_eq!(NewProduct::parse("x", "", "1", -1).unwrap_err().field, "stock");
    }

    #[test]
    fn an_empty_patch_changes_nothing() {
        assert!(ProductPatch::parse(None, None, None, None).unwrap().is_empty());
        assert_eq!(ProductPatch::parse(None, None, Some("2.50"), None).unwrap().price.unwrap().to_string(), "2.50");
    }
}

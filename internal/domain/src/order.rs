//! Orders: what they are for, where they are in their life, and what a new one may hold.

use uuid::Uuid;

use crate::Invalid;
use crate::names::named;

/// Where an order came from; it decides where a closed order's stock goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKind {
    /// `POST /orders`: stock comes from and returns to the product.
    Standard,
    /// A flash-sale reservation: stock comes from and returns to the sale.
    Sale,
    /// An auction's winner: nothing to return.
    Auction,
}

named!(OrderKind, "kind", "order kind", { Standard => "standard", Sale => "sale", Auction => "auction" });

/// `pending_payment -> paid | cancelled | closed`. Every transition out of
/// `pending_payment` is one conditional UPDATE, so exactly one of them wins a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
    /// Closed by the payment timeout.
    Closed,
}

named!(OrderStatus, "status", "order status", {
    PendingPayment => "pending_payment",
    Paid => "paid",
    Cancelled => "cancelled",
    Closed => "closed",
});

impl OrderStatus {
    /// Closed and cancelled orders gave their stock back; pending and paid ones hold it.
    pub fn holds_stock(self) -> bool {
        matches!(self, OrderStatus::PendingPayment | OrderStatus::Paid)
    }
}

pub const MAX_ITEMS: usize = 50;
pub const MAX_QUANTITY: i64 = 10_000;

/// How many units one line or one purchase asks for: 1 to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

impl Quantity {
    pub fn parse(quantity: i64) -> Result<Self, Invalid> {
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(Invalid::new("quantity", format!("must be between 1 and {MAX_QUANTITY}")));
        }
        Ok(Self(quantity as u32))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The same number as a Postgres `int` (it is at most [`MAX_QUANTITY`]).
    pub fn as_i32(self) -> i32 {
        self.0 as i32
    }
}

/// One line of a new order, as the client asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOrderItem {
    pub product_id: Uuid,
    pub quantity: Quantity,
}

/// Checks the lines of `POST /orders`: 1..=50 lines, each quantity 1..=10000, and each
/// product at most once (two lines for one product would take its stock twice in one
/// statement and make the 409 ambiguous).
pub fn parse_order_items(lines: &[(Uuid, i64)]) -> Result<Vec<NewOrderItem>, Invalid> {
    if lines.is_empty() {
        return Err(Invalid::new("items", "must contain at least one item"));
    }
    if lines.len() > MAX_ITEMS {
        return Err(Invalid::new("items", format!("must contain at most {MAX_ITEMS} items")));
    }
    let mut items: Vec<NewOrderItem> = Vec::with_capacity(lines.len());
    for (index, &(product_id, quantity)) in lines.iter().enumerate() {
        let field = format!("items[{index}]");
        let quantity = Quantity::parse(quantity).map_err(|e| e.within(&field))?;
        if items.iter().any(|item| item.product_id == product_id) {
            return Err(Invalid::new(format!("{field}.product_id"), "lists a product that is already in the order"));
        }
        items.push(NewOrderItem { product_id, quantity });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_and_paid_orders_hold_stock() {
        assert!(OrderStatus::PendingPayment.holds_stock());
        assert!(OrderStatus::Paid.holds_stock());
        assert!(!OrderStatus::Closed.holds_stock());
        assert!(!OrderStatus::Cancelled.holds_stock());
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [OrderStatus::PendingPayment, OrderStatus::Paid, OrderStatus::Cancelled, OrderStatus::Closed] {
            assert_eq!(status.as_str().parse::<OrderStatus>().unwrap(), status);
        }
    }

    #[test]
    fn an_empty_order_is_refused() {
        assert_eq!(parse_order_items(&[]).unwrap_err().field, "items");
    }

    #[test]
    fn a_bad_quantity_names_its_line() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let err = parse_order_items(&[(a, 1), (b, 0)]).unwrap_err();
        assert_eq!(err.field, "items[1].quantity");
    }

    #[test]
    fn a_quantity_is_one_to_ten_thousand() {
        assert_eq!(Quantity::parse(1).unwrap().get(), 1);
        assert_eq!(Quantity::parse(MAX_QUANTITY).unwrap().as_i32(), 10_000);
        assert_eq!(Quantity::parse(0).unwrap_err().field, "quantity");
        assert_eq!(Quantity::parse(MAX_QUANTITY + 1).unwrap_err().field, "quantity");
    }

    #[test]
    fn the_same_product_twice_is_refused() {
        let a = Uuid::new_v4();
        let err = parse_order_items(&[(a, 1), (a, 2)]).unwrap_err();
        assert_eq!(err.field, "items[1].product_id");
    }
}

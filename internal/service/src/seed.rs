//! `spike-server seed --demo`: something to look at right away.

use chrono::{Duration, Utc};
use domain::auction::{AuctionFields, NewAuction};
use domain::catalog::NewProduct;
use domain::sale::{NewSale, SaleFields};
use uuid::Uuid;

use crate::Services;
use crate::error::Result;
use crate::jwt::Caller;

#[derive(Debug, Clone)]
pub struct Seeded {
    pub product_id: Uuid,
    pub sale_id: Uuid,
    pub auction_id: Uuid,
}

/// A product with 1000 units and a flash sale of 100 of them, open for two hours, two per
/// buyer, five minutes to pay; and an auction running for 30 minutes with a 10-second
/// anti-sniping window.
pub async fn demo(services: &Services) -> Result<Seeded> {
    let admin = Caller::system();
    let product = NewProduct::parse(
        "Spike demo phone",
        "A phone that sells out in seconds. Buy one in the flash sale before the bots do.",
        "499.00",
        1000,
    )?;
    let product = services.catalog.create(&admin, product).await?;
    let now = Utc::now();
    let sale = NewSale::parse(SaleFields {
        product_id: product.id,
        price: "99.00",
        stock: 100,
        start_at: now,
        end_at: now + Duration::hours(2),
        per_user_limit: 2,
        payment_timeout_secs: 300,
    })?;
    let sale = services.sales.create(&admin, sale).await?;
    let auction = NewAuction::parse(AuctionFields {
        title: "Signed first-edition Spike poster",
        description: "One of one. Bids move the price for everyone watching.",
        start_price: "10.00",
        min_increment: "1.00",
        reserve_price: Some("50.00"),
        start_at: now,
        end_at: now + Duration::minutes(30),
        extend_window_secs: 10,
        extend_by_secs: 10,
        payment_timeout_secs: 300,
    })?;
    let auction = services.auctions.create(&admin, auction).await?;
    Ok(Seeded { product_id: product.id, sale_id: sale.id, auction_id: auction.id })
}

//! `spike-server seed --demo`: something to look at right away.

use chrono::{Duration, Utc};
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
}

/// A product with 1000 units and a flash sale of 100 of them, open for two hours, two per
/// buyer, five minutes to pay.
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
    Ok(Seeded { product_id: product.id, sale_id: sale.id })
}

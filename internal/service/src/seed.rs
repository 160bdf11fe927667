//! `spike-server seed --demo`: something to look at right away, and the same something
//! when it runs again. A demo sale or auction that still has time left is reused; one that
//! is over (or nearly) is replaced by a new one that starts now.

use chrono::{DateTime, Duration, Utc};
use domain::auction::{AuctionFields, AuctionStatus, NewAuction};
use domain::catalog::{NewProduct, ProductPatch};
use domain::page::PageRequest;
use domain::sale::{NewSale, SaleFields, SaleStatus};
use uuid::Uuid;

use crate::Services;
use crate::error::Result;
use crate::jwt::Caller;

const PHONE: &str = "Spike demo phone";
const POSTER: &str = "Signed first-edition Spike poster";
/// Units the demo product keeps in stock, and units each demo sale takes from it.
const PRODUCT_STOCK: i32 = 1000;
const SALE_STOCK: i32 = 100;
/// How long a new demo sale or auction runs.
const WINDOW: Duration = Duration::hours(2);
/// A demo sale or auction with less time left than this is replaced: enough to look
/// around, buy, and let the robots bid.
const ENOUGH_LEFT: Duration = Duration::minutes(30);

#[derive(Debug, Clone)]
pub struct Seeded {
    pub product_id: Uuid,
    pub sale: Demo,
    pub auction: Demo,
}

/// One demo sale or auction: its id, whether this run created it, and when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Demo {
    pub id: Uuid,
    pub created: bool,
    pub end_at: DateTime<Utc>,
}

/// A product with 1000 units and a flash sale of 100 of them, two per buyer, five minutes
/// to pay; and an auction with a 10-second anti-sniping window. Both run for two hours
/// from the moment they are created; each is reused while it has 30 minutes left (and,
/// for the sale, units left).
pub async fn demo(services: &Services) -> Result<Seeded> {
    let admin = Caller::system();
    let now = Utc::now();
    let product_id = demo_product(services, &admin).await?;
    let sale = match current_sale(services, now).await? {
        Some(sale) => sale,
        None => new_sale(services, &admin, product_id, now).await?,
    };
    let auction = match current_auction(services, now).await? {
        Some(auction) => auction,
        None => new_auction(services, &admin, now).await?,
    };
    Ok(Seeded { product_id, sale, auction })
}

/// The demo product, created once; its stock is topped up when a new sale needs units.
async fn demo_product(services: &Services, admin: &Caller) -> Result<Uuid> {
    let page = PageRequest { page: 1, page_size: 100 };
    let existing = services.catalog.list(page, None, Some(PHONE)).await?;
    match existing.items.into_iter().find(|p| p.title == PHONE) {
        Some(product) if product.stock >= SALE_STOCK => Ok(product.id),
        Some(product) => {
            let patch = ProductPatch { stock: Some(PRODUCT_STOCK), ..ProductPatch::default() };
            services.catalog.update(admin, product.id, patch).await?;
            Ok(product.id)
        }
        None => {
            let product = NewProduct::parse(
                PHONE,
                "A phone that sells out in seconds. Buy one in the flash sale before the bots do.",
                "499.00",
                i64::from(PRODUCT_STOCK),
            )?;
            Ok(services.catalog.create(admin, product).await?.id)
        }
    }
}

async fn current_sale(services: &Services, now: DateTime<Utc>) -> Result<Option<Demo>> {
    let sales = services.sales.list(PageRequest { page: 1, page_size: 100 }, true).await?;
    Ok(sales
        .items
        .into_iter()
        .find(|s| s.title == PHONE && s.status == SaleStatus::Active && s.end_at - now >= ENOUGH_LEFT)
        .map(|s| Demo { id: s.id, created: false, end_at: s.end_at }))
}

async fn new_sale(services: &Services, admin: &Caller, product_id: Uuid, now: DateTime<Utc>) -> Result<Demo> {
    let sale = NewSale::parse(SaleFields {
        product_id,
        price: "99.00",
        stock: i64::from(SALE_STOCK),
        start_at: now,
        end_at: now + WINDOW,
        per_user_limit: 2,
        payment_timeout_secs: 300,
        stock_buckets: 1,
    })?;
    let sale = services.sales.create(admin, sale).await?;
    Ok(Demo { id: sale.id, created: true, end_at: sale.end_at })
}

async fn current_auction(services: &Services, now: DateTime<Utc>) -> Result<Option<Demo>> {
    let auctions = services.auctions.list(PageRequest { page: 1, page_size: 100 }, true).await?;
    Ok(auctions
        .items
        .into_iter()
        .find(|a| a.title == POSTER && a.status == AuctionStatus::Live && a.end_at - now >= ENOUGH_LEFT)
        .map(|a| Demo { id: a.id, created: false, end_at: a.end_at }))
}

async fn new_auction(services: &Services, admin: &Caller, now: DateTime<Utc>) -> Result<Demo> {
    let auction = NewAuction::parse(AuctionFields {
        title: POSTER,
        description: "One of one. Bids move the price for everyone watching.",
        start_price: "10.00",
        min_increment: "1.00",
        reserve_price: Some("50.00"),
        buy_now_price: Some("200.00"),
        start_at: now,
        end_at: now + WINDOW,
        extend_window_secs: 10,
        extend_by_secs: 10,
        payment_timeout_secs: 300,
    })?;
    let auction = services.auctions.create(admin, auction).await?;
    Ok(Demo { id: auction.id, created: true, end_at: auction.end_at })
}

/// What `forget_hot_state` removed.
#[derive(Debug, Clone, Copy)]
pub struct Forgotten {
    pub redis_keys: u64,
    pub messages: u32,
}

/// The Redis and RabbitMQ half of a clean slate: deletes every Redis key under this
/// deployment's prefix and empties its queues. The caller recreates the Postgres schema
/// (the migrations live in the binary, not here). Meant for a stopped demo server.
pub async fn forget_hot_state(services: &Services) -> Result<Forgotten> {
    let deps = &services.deps;
    let mut redis = deps.redis.clone();
    let pattern = format!("{}:*", deps.keys().prefix());
    let keys = redis.keys_matching(&pattern).await?;
    for batch in keys.chunks(1000) {
        redis::cmd("UNLINK").arg(batch).query_async::<()>(&mut redis).await?;
    }
    let redis_keys = keys.len() as u64;
    services.declare_topology().await?;
    let channel = deps.broker.channel().await?;
    let messages = deps.topology().purge(&channel).await?;
    let _ = channel.close(200, "purged".into()).await;
    Ok(Forgotten { redis_keys, messages })
}

//! `/sales` and `/reservations`: flash sales.

use chrono::{DateTime, Utc};
use domain::order::Quantity;
use domain::reservation::ReservationProgress;
use domain::sale::{NewSale, SaleFields};
use domain::{IdempotencyKey, PageRequest};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use service::sales::{SaleService, SaleView};
use uuid::Uuid;

use super::ApiTags;
use crate::auth::BearerAuth;
use crate::envelope::{Envelope, JsonBody, PageOf, ok};
use crate::error::ApiResult;

pub struct SalesApi {
    pub sales: SaleService,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSaleRequest {
    pub product_id: Uuid,
    /// The sale price: decimal string, at most 2 decimals.
    pub price: String,
    /// Units for the sale, taken from the product's stock.
    pub stock: i64,
    #[serde(deserialize_with = "crate::envelope::date_time")]
    pub start_at: DateTime<Utc>,
    /// After `start_at`.
    #[serde(deserialize_with = "crate::envelope::date_time")]
    pub end_at: DateTime<Utc>,
    /// Units one buyer may hold (default 1).
    #[serde(default = "one")]
    #[oai(default = "one")]
    pub per_user_limit: i64,
    /// How long a buyer has to pay before the order closes and the units sell again.
    pub payment_timeout_secs: i64,
    /// Buckets the stock is split into (default 1, at most 64, at most `stock`): each lives
    /// on its own Redis hash tag, so a hot sale spreads over the masters of a Redis Cluster.
    /// A buyer reserves from their home bucket; units move between buckets as they run dry.
    #[serde(default = "one")]
    #[oai(default = "one")]
    pub stock_buckets: i64,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    /// Units to buy (default 1).
    #[serde(default = "one")]
    #[oai(default = "one")]
    pub quantity: i64,
}

#[derive(Debug, Object)]
pub struct SaleResponse {
    pub id: String,
    pub product_id: String,
    pub title: String,
    /// The sale price.
    pub price: String,
    /// Units allocated to the sale.
    pub stock: i32,
    /// Units still for sale, live from Redis (the sum over the stock buckets).
    pub remaining: i64,
    /// Buckets the stock is split into.
    pub stock_buckets: i32,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub per_user_limit: i32,
    pub payment_timeout_secs: i32,
    /// `scheduled`, `active`, `sold_out` or `ended`.
    pub status: String,
    /// The server's clock when it answered: count down to `start_at`/`end_at` by this.
    pub server_time: DateTime<Utc>,
}

impl From<SaleView> for SaleResponse {
    fn from(sale: SaleView) -> Self {
        Self {
            id: sale.id.to_string(),
            product_id: sale.product_id.to_string(),
            title: sale.title,
            price: sale.price.to_string(),
            stock: sale.stock,
            remaining: sale.remaining,
            stock_buckets: sale.stock_buckets,
            start_at: sale.start_at,
            end_at: sale.end_at,
            per_user_limit: sale.per_user_limit,
            payment_timeout_secs: sale.payment_timeout_secs,
            status: sale.status.as_str().to_owned(),
            server_time: Utc::now(),
        }
    }
}

#[derive(Debug, Object)]
pub struct QueuedResponse {
    pub reservation_id: String,
    /// Always `queued`: poll `GET /reservations/{reservation_id}` for the order.
    pub status: String,
}

#[derive(Debug, Object)]
pub struct ReservationResponse {
    pub id: String,
    pub sale_id: String,
    /// `queued`, `confirmed` or `failed`.
    pub status: String,
    /// The order, once `confirmed`.
    pub order_id: Option<String>,
    /// Why it failed: `sold_out`, `limit_reached`, `broker_unavailable`, `not_processed`.
    pub reason: Option<String>,
}

impl From<ReservationProgress> for ReservationResponse {
    fn from(r: ReservationProgress) -> Self {
        Self {
            id: r.id.to_string(),
            sale_id: r.sale_id.to_string(),
            status: r.status.to_string(),
            order_id: r.order_id.map(|id| id.to_string()),
            reason: r.reason.map(|reason| reason.to_string()),
        }
    }
}

#[derive(ApiResponse)]
pub enum SaleCreated {
    /// The sale exists and its units left the product's stock.
    #[oai(status = 201)]
    Created(Json<Envelope<SaleResponse>>),
}

#[derive(ApiResponse)]
pub enum SaleFound {
    /// The sale, with live `remaining` and `status`.
    #[oai(status = 200)]
    Ok(Json<Envelope<SaleResponse>>),
}

#[derive(ApiResponse)]
pub enum SaleList {
    /// A page of sales, newest start first.
    #[oai(status = 200)]
    Ok(Json<Envelope<PageOf<SaleResponse>>>),
}

#[derive(ApiResponse)]
pub enum PurchaseAccepted {
    /// Reserved: the order is being written. Poll the reservation.
    #[oai(status = 202)]
    Accepted(Json<Envelope<QueuedResponse>>),
}

#[derive(ApiResponse)]
pub enum ReservationFound {
    /// The reservation's progress.
    #[oai(status = 200)]
    Ok(Json<Envelope<ReservationResponse>>),
}

#[OpenApi(tag = "ApiTags::Sales")]
impl SalesApi {
    /// Create a flash sale (admin)
    ///
    /// The sale's units are taken from the product's stock in the same transaction (409
    /// `INSUFFICIENT_STOCK` when the product has fewer).
    #[oai(path = "/sales", method = "post")]
    async fn create(&self, auth: BearerAuth, body: JsonBody<CreateSaleRequest>) -> ApiResult<SaleCreated> {
        let b = body.0;
        let new = NewSale::parse(SaleFields {
            product_id: b.product_id,
            price: &b.price,
            stock: b.stock,
            start_at: b.start_at,
            end_at: b.end_at,
            per_user_limit: b.per_user_limit,
            payment_timeout_secs: b.payment_timeout_secs,
            stock_buckets: b.stock_buckets,
        })?;
        let sale = self.sales.create(auth.caller(), new).await?;
        Ok(SaleCreated::Created(ok(sale.into())))
    }

    /// List flash sales
    ///
    /// Newest start first; with `current=true` only sales that have not ended (scheduled,
    /// active or sold out), soonest start first.
    #[oai(path = "/sales", method = "get")]
    async fn list(
        &self,
        page: Query<Option<u64>>,
        page_size: Query<Option<u64>>,
        current: Query<Option<bool>>,
    ) -> ApiResult<SaleList> {
        let request = PageRequest::parse(page.0, page_size.0)?;
        let sales = self.sales.list(request, current.0.unwrap_or(false)).await?;
        Ok(SaleList::Ok(ok(PageOf::new(sales, request, SaleResponse::from))))
    }

    /// Get a flash sale
    #[oai(path = "/sales/:id", method = "get")]
    async fn get(&self, id: Path<Uuid>) -> ApiResult<SaleFound> {
        Ok(SaleFound::Ok(ok(self.sales.get(id.0).await?.into())))
    }

    /// Buy in a flash sale
    ///
    /// One atomic Redis script checks the window, your per-user limit and the stock, and
    /// reserves; the reservation is then handed to RabbitMQ. 202 means reserved: poll the
    /// reservation for the order. 409 `SOLD_OUT`, `LIMIT_REACHED` or `NOT_ACTIVE`; 503 when
    /// the broker did not confirm (nothing stays reserved). With an `Idempotency-Key` a
    /// retry returns the same reservation.
    #[oai(path = "/sales/:id/purchase", method = "post")]
    async fn purchase(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: JsonBody<PurchaseRequest>,
    ) -> ApiResult<PurchaseAccepted> {
        let quantity = Quantity::parse(body.0.quantity)?;
        let key = idempotency_key.0.as_deref().map(IdempotencyKey::parse).transpose()?;
        let reservation = self.sales.purchase(auth.caller(), id.0, quantity, key.as_ref()).await?;
        let queued = QueuedResponse { reservation_id: reservation.to_string(), status: "queued".to_owned() };
        Ok(PurchaseAccepted::Accepted(ok(queued)))
    }

    /// A reservation's progress
    ///
    /// `queued` until the order consumer has written it, then `confirmed` with `order_id`,
    /// or `failed` with `reason`. Only its buyer can see it (others get 404).
    #[oai(path = "/reservations/:id", method = "get")]
    async fn reservation(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<ReservationFound> {
        let status = self.sales.reservation(auth.caller(), id.0).await?;
        Ok(ReservationFound::Ok(ok(status.into())))
    }
}

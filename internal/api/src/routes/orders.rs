//! `/orders`: a shopper's own orders.

use chrono::{DateTime, Utc};
use domain::order::parse_order_items;
use domain::{IdempotencyKey, PageRequest};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use service::orders::{OrderItemView, OrderService, OrderView};
use uuid::Uuid;

use super::ApiTags;
use crate::auth::BearerAuth;
use crate::envelope::{Envelope, JsonBody, PageOf, ok};
use crate::error::ApiResult;

pub struct OrdersApi {
    pub orders: OrderService,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    pub product_id: Uuid,
    /// 1 to 10000.
    pub quantity: i64,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// 1 to 50 lines, each product at most once.
    pub items: Vec<OrderLineRequest>,
}

#[derive(Debug, Object)]
pub struct OrderItemResponse {
    /// Absent for an auction lot.
    pub product_id: Option<String>,
    pub title: String,
    pub quantity: i32,
    /// Price per unit when the order was made.
    pub unit_price: String,
}

#[derive(Debug, Object)]
pub struct OrderResponse {
    pub id: String,
    pub user_id: String,
    /// `standard`, `sale` or `auction`.
    pub kind: String,
    /// `pending_payment`, `paid`, `cancelled` or `closed` (payment timeout).
    pub status: String,
    pub total: String,
    /// The payment deadline: unpaid, the order closes then and its stock returns.
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub items: Vec<OrderItemResponse>,
}

impl From<OrderItemView> for OrderItemResponse {
    fn from(item: OrderItemView) -> Self {
        Self {
            product_id: item.product_id.map(|id| id.to_string()),
            title: item.title,
            quantity: item.quantity,
            unit_price: item.unit_price,
        }
    }
}

impl From<OrderView> for OrderResponse {
    fn from(order: OrderView) -> Self {
        Self {
            id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            kind: order.kind,
            status: order.status,
            total: order.total,
            expires_at: order.expires_at,
            created_at: order.created_at,
            updated_at: order.updated_at,
            paid_at: order.paid_at,
            items: order.items.into_iter().map(OrderItemResponse::from).collect(),
        }
    }
}

#[derive(ApiResponse)]
pub enum OrderCreated {
    /// The order is `pending_payment` and its stock is taken.
    #[oai(status = 201)]
    Created(Json<Envelope<OrderResponse>>),
}

#[derive(ApiResponse)]
pub enum OrderFound {
    /// The order.
    #[oai(status = 200)]
    Ok(Json<Envelope<OrderResponse>>),
}

#[derive(ApiResponse)]
pub enum OrderList {
    /// A page of your orders.
    #[oai(status = 200)]
    Ok(Json<Envelope<PageOf<OrderResponse>>>),
}

#[OpenApi(prefix_path = "/orders", tag = "ApiTags::Orders")]
impl OrdersApi {
    /// Place an order
    ///
    /// Every line's stock is taken in one transaction; if any line is short, nothing is
    /// taken and the answer is 409 `INSUFFICIENT_STOCK` naming the product. Send an
    /// `Idempotency-Key` to make retries safe: a retry returns the first answer.
    #[oai(path = "/", method = "post")]
    async fn create(
        &self,
        auth: BearerAuth,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: JsonBody<CreateOrderRequest>,
    ) -> ApiResult<OrderCreated> {
        let lines: Vec<(Uuid, i64)> = body.0.items.iter().map(|line| (line.product_id, line.quantity)).collect();
        let items = parse_order_items(&lines)?;
        let key = idempotency_key.0.as_deref().map(IdempotencyKey::parse).transpose()?;
        let order = self.orders.create(auth.caller(), &items, key.as_ref()).await?;
        Ok(OrderCreated::Created(ok(order.into())))
    }

    /// Your orders
    ///
    /// `status` filters (`pending_payment`, `paid`, `cancelled`, `closed`); `sort` is one of
    /// `created_at`, `total`, `status`, `expires_at`.
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        auth: BearerAuth,
        page: Query<Option<u64>>,
        page_size: Query<Option<u64>>,
        sort: Query<Option<String>>,
        status: Query<Option<String>>,
    ) -> ApiResult<OrderList> {
        let request = PageRequest::parse(page.0, page_size.0)?;
        let orders = self.orders.list(auth.caller(), request, sort.0.as_deref(), status.0.as_deref()).await?;
        Ok(OrderList::Ok(ok(PageOf::new(orders, request, OrderResponse::from))))
    }

    /// One of your orders
    ///
    /// Someone else's order is 404, as if it did not exist.
    #[oai(path = "/:id", method = "get")]
    async fn get(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<OrderFound> {
        let order = self.orders.get(auth.caller(), id.0).await?;
        Ok(OrderFound::Ok(ok(order.into())))
    }

    /// Pay an order (simulated)
    ///
    /// Paying a paid order returns it unchanged. A closed or cancelled order is 409
    /// `ORDER_NOT_PENDING`; past its deadline, 409 `ORDER_EXPIRED`.
    #[oai(path = "/:id/pay", method = "post")]
    async fn pay(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<OrderFound> {
        let order = self.orders.pay(auth.caller(), id.0).await?;
        Ok(OrderFound::Ok(ok(order.into())))
    }

    /// Cancel an order
    ///
    /// Only a `pending_payment` order; its stock returns in the same transaction.
    #[oai(path = "/:id/cancel", method = "post")]
    async fn cancel(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<OrderFound> {
        let order = self.orders.cancel(auth.caller(), id.0).await?;
        Ok(OrderFound::Ok(ok(order.into())))
    }
}

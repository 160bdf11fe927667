//! Orders: create (stock taken in the same transaction), pay, cancel, list, and the one
//! path by which an unpaid order leaves `pending_payment` (cancel, close, sweeper).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use domain::order::{NewOrderItem, OrderKind, OrderStatus};
use domain::{IdempotencyKey, Money, PageRequest, Sort, SortDir};
use platform::Redis;
use repo::cache::Keys;
use repo::cache::buckets::Bucket;
use repo::db::orders::{self, Finish, Finished, NewLine, NewOrder, OrderItemRow, OrderRow};
use repo::db::outbox::{self, Outgoing};
use repo::db::{Page, idempotency, products, sales};
use repo::mq::messages::{CloseOrders, OrdersCreated, ReturnedUnits, SaleRestock};
use repo::mq::topology::{ORDER_CLOSE, ORDER_CREATED, SALE_RESTOCK};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::catalog::ProductCache;
use crate::error::{Error, Result};
use crate::jwt::Caller;
use crate::second_chance;

pub const SORT_FIELDS: &[&str] = &["created_at", "total", "status", "expires_at"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItemView {
    pub product_id: Option<Uuid>,
    pub title: String,
    pub quantity: i32,
    pub unit_price: String,
}

/// An order as its owner sees it. Serializable, because the first answer to an
/// `Idempotency-Key` is stored and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub status: String,
    pub total: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub items: Vec<OrderItemView>,
}

impl OrderView {
    fn new(row: OrderRow, items: Vec<OrderItemRow>) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            kind: row.kind,
            status: row.status,
            total: Money::from_decimal(row.total).to_string(),
            expires_at: row.expires_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            paid_at: row.paid_at,
            items: items
                .into_iter()
                .map(|item| OrderItemView {
                    product_id: item.product_id,
                    title: item.title,
                    quantity: item.quantity,
                    unit_price: Money::from_decimal(item.unit_price).to_string(),
                })
                .collect(),
        }
    }
}

/// What an `Idempotency-Key` replays: the order, or the stock refusal.
#[derive(Debug, Serialize, Deserialize)]
enum FirstAnswer {
    Created(OrderView),
    InsufficientStock { product_id: Uuid, available: i64, requested: i64 },
}

impl FirstAnswer {
    fn into_result(self) -> Result<OrderView> {
        match self {
            FirstAnswer::Created(order) => Ok(order),
            FirstAnswer::InsufficientStock { product_id, available, requested } => {
                Err(Error::InsufficientStock { product_id, available, requested })
            }
        }
    }
}

const IDEMPOTENCY_SCOPE: &str = "orders";

/// What an unpaid auction order needs: the second-chance offers and their announcement.
#[derive(Clone)]
pub struct Lots {
    pub redis: Redis,
    pub keys: Keys,
    pub second_chance_offers: u32,
}

#[derive(Clone)]
pub struct OrderService {
    db: DatabaseConnection,
    products: ProductCache,
    payment_timeout_ms: i64,
    lots: Lots,
}

impl OrderService {
    pub fn new(db: DatabaseConnection, products: ProductCache, payment_timeout_secs: u32, lots: Lots) -> Self {
        Self { db, products, payment_timeout_ms: i64::from(payment_timeout_secs) * 1000, lots }
    }

    /// Creates an order in one transaction: every line's stock is taken with a conditional
    /// UPDATE (in product-id order, so two multi-line orders cannot deadlock), the prices
    /// are snapshotted, and the close message for its payment deadline goes into the
    /// outbox. Any shortfall rolls everything back. With an `Idempotency-Key`, the first
    /// answer is stored with the order and replayed for every retry.
    #[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
    pub async fn create(
        &self,
        caller: &Caller,
        items: &[NewOrderItem],
        key: Option<&IdempotencyKey>,
    ) -> Result<OrderView> {
        let key = key.map(IdempotencyKey::as_str);
        let request_hash = hash_request(items);
        if let Some(key) = key
            && let Some(stored) = idempotency::find(&self.db, caller.user_id, IDEMPOTENCY_SCOPE, key).await?
        {
            return replay(stored, &request_hash);
        }

        let txn = self.db.begin().await?;
        let answer = match take_lines(&txn, items).await? {
            Ok(taken) => {
                let order = self.insert_order(&txn, caller.user_id, taken).await?;
                FirstAnswer::Created(order)
            }
            Err(refusal) => {
                txn.rollback().await?;
                return self.refuse(caller, key, &request_hash, refusal).await;
            }
        };
        if let Some(key) = key {
            let body = serde_json::to_value(&answer).map_err(|e| Error::Internal(e.into()))?;
            if let idempotency::Saved::AlreadyThere =
                idempotency::save(&txn, caller.user_id, IDEMPOTENCY_SCOPE, key, &request_hash, 201, &body).await?
            {
                // A concurrent retry committed first: undo ours, answer with theirs.
                txn.rollback().await?;
                let stored = idempotency::find(&self.db, caller.user_id, IDEMPOTENCY_SCOPE, key).await?;
                return replay(
                    stored.ok_or(Error::Internal(anyhow::anyhow!("idempotency row vanished")))?,
                    &request_hash,
                );
            }
        }
        txn.commit().await?;
        let product_ids: Vec<Uuid> = items.iter().map(|i| i.product_id).collect();
        self.products.forget(&product_ids).await;
        answer.into_result()
    }

    async fn insert_order(&self, txn: &DatabaseTransaction, user_id: Uuid, taken: Vec<NewLine>) -> Result<OrderView> {
        let total = taken
            .iter()
            .fold(Money::ZERO, |sum, line| sum.plus(Money::from_decimal(line.unit_price).times(line.quantity as u32)));
        let id = Uuid::now_v7();
        let order = NewOrder {
            id,
            user_id,
            kind: OrderKind::Standard.as_str(),
            total: total.decimal(),
            payment_timeout_ms: self.payment_timeout_ms,
            lines: taken,
        };
        orders::insert(txn, &[order]).await?;
        announce_and_schedule_close(txn, OrderKind::Standard, &[id], self.payment_timeout_ms).await?;
        let row = orders::find(txn, id).await?.ok_or(Error::Internal(anyhow::anyhow!("the new order is missing")))?;
        let items = orders::items_of(txn, vec![id]).await?;
        Ok(OrderView::new(row, items))
    }

    /// A stock refusal is an answer too: with a key it is stored (in its own transaction)
    /// so a retry gets the same 409.
    async fn refuse(
        &self,
        caller: &Caller,
        key: Option<&str>,
        request_hash: &str,
        refusal: Refusal,
    ) -> Result<OrderView> {
        let answer = match refusal {
            Refusal::UnknownProduct { index } => {
                return Err(domain::Invalid::new(format!("items[{index}].product_id"), "no such product").into());
            }
            Refusal::Short { product_id, available, requested } => {
                FirstAnswer::InsufficientStock { product_id, available, requested }
            }
        };
        if let Some(key) = key {
            let body = serde_json::to_value(&answer).map_err(|e| Error::Internal(e.into()))?;
            if let idempotency::Saved::AlreadyThere =
                idempotency::save(&self.db, caller.user_id, IDEMPOTENCY_SCOPE, key, request_hash, 409, &body).await?
            {
                let stored = idempotency::find(&self.db, caller.user_id, IDEMPOTENCY_SCOPE, key).await?;
                return replay(
                    stored.ok_or(Error::Internal(anyhow::anyhow!("idempotency row vanished")))?,
                    request_hash,
                );
            }
        }
        answer.into_result()
    }

    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<OrderView> {
        let row = orders::find_for_user(&self.db, id, caller.user_id).await?.ok_or(Error::NotFound("order"))?;
        let items = orders::items_of(&self.db, vec![id]).await?;
        Ok(OrderView::new(row, items))
    }

    pub async fn list(
        &self,
        caller: &Caller,
        page: PageRequest,
        sort: Option<&str>,
        status: Option<&str>,
    ) -> Result<Page<OrderView>> {
        let sort = Sort::parse(sort, SORT_FIELDS, Sort { field: "created_at", dir: SortDir::Desc })?;
        let status = status.map(|s| s.parse::<OrderStatus>()).transpose()?;
        let rows = orders::list_for_user(
            &self.db,
            orders::ListQuery {
                user_id: caller.user_id,
                status: status.map(OrderStatus::as_str),
                offset: page.offset(),
                limit: page.page_size,
                sort: sort.field,
                descending: sort.dir == SortDir::Desc,
            },
        )
        .await?;
        let ids = rows.items.iter().map(|o| o.id).collect();
        let mut items: HashMap<Uuid, Vec<OrderItemRow>> = HashMap::new();
        for item in orders::items_of(&self.db, ids).await? {
            items.entry(item.order_id).or_default().push(item);
        }
        let views = rows
            .items
            .into_iter()
            .map(|row| {
                let lines = items.remove(&row.id).unwrap_or_default();
                OrderView::new(row, lines)
            })
            .collect();
        Ok(Page { items: views, total: rows.total })
    }

    /// Pays (simulated). Paying a paid order returns it unchanged; a closed or cancelled
    /// order, or one whose window has passed, is refused.
    #[tracing::instrument(skip_all, fields(order_id = %id))]
    pub async fn pay(&self, caller: &Caller, id: Uuid) -> Result<OrderView> {
        if let Some(row) = orders::pay(&self.db, id, caller.user_id).await? {
            let items = orders::items_of(&self.db, vec![id]).await?;
            return Ok(OrderView::new(row, items));
        }
        let order = self.get(caller, id).await?;
        match order.status.parse::<OrderStatus>()? {
            OrderStatus::Paid => Ok(order),
            OrderStatus::PendingPayment => Err(Error::OrderExpired),
            _ => Err(Error::OrderNotPending { status: order.status, action: "paid" }),
        }
    }

    /// Cancels a pending order and returns its stock in the same transaction. Cancelling a
    /// cancelled order returns it unchanged.
    #[tracing::instrument(skip_all, fields(order_id = %id))]
    pub async fn cancel(&self, caller: &Caller, id: Uuid) -> Result<OrderView> {
        let moved = self.finish(&[id], Finish::Cancelled { user_id: caller.user_id }).await?;
        let order = self.get(caller, id).await?;
        if !moved.is_empty() {
            return Ok(order);
        }
        match order.status.parse::<OrderStatus>()? {
            OrderStatus::Cancelled => Ok(order),
            _ => Err(Error::OrderNotPending { status: order.status, action: "cancelled" }),
        }
    }

    /// Moves orders out of `pending_payment` (close or cancel) and gives their stock back,
    /// in one transaction. The conditional UPDATE returns only the orders that actually
    /// moved, and only those return stock: a redelivered close message, a racing payment
    /// or a second sweeper finds nothing to move and returns nothing. An auction order
    /// passes its lot on (second-chance offers) in the same transaction, as exactly once.
    #[tracing::instrument(skip_all, fields(orders = ids.len(), how = ?how))]
    pub async fn finish(&self, ids: &[Uuid], how: Finish) -> Result<Vec<Finished>> {
        let txn = self.db.begin().await?;
        let moved = orders::finish(&txn, ids, how).await?;
        let of_kind =
            |kind: OrderKind| -> Vec<Uuid> { moved.iter().filter(|o| o.kind == kind.as_str()).map(|o| o.id).collect() };
        let touched = products::return_stock_of_orders(&txn, &of_kind(OrderKind::Standard)).await?;
        return_sale_units(&txn, &of_kind(OrderKind::Sale)).await?;
        let passed = second_chance::pass_on(&txn, &of_kind(OrderKind::Auction), self.lots.second_chance_offers).await?;
        txn.commit().await?;
        self.products.forget(&touched).await;
        second_chance::announce(&self.lots.redis, &self.lots.keys, &passed).await;
        let reason = match how {
            Finish::Closed => "timeout",
            Finish::Cancelled { .. } => "cancelled",
        };
        metrics::counter!("orders_finished_total", "reason" => reason).increment(moved.len() as u64);
        Ok(moved)
    }
}

enum Refusal {
    UnknownProduct { index: usize },
    Short { product_id: Uuid, available: i64, requested: i64 },
}

/// Takes every line's stock inside `txn`, or says which line could not be served.
async fn take_lines(txn: &DatabaseTransaction, items: &[NewOrderItem]) -> Result<Result<Vec<NewLine>, Refusal>> {
    let mut order: Vec<(usize, &NewOrderItem)> = items.iter().enumerate().collect();
    order.sort_by_key(|(_, item)| item.product_id);
    let mut taken: Vec<(usize, NewLine)> = Vec::with_capacity(items.len());
    for (index, item) in order {
        match products::take_stock(txn, item.product_id, item.quantity.as_i32()).await? {
            Some(row) => taken.push((
                index,
                NewLine {
                    product_id: Some(item.product_id),
                    title: row.title,
                    quantity: item.quantity.as_i32(),
                    unit_price: row.price,
                },
            )),
            None => {
                let refusal = match products::stock_of(txn, item.product_id).await? {
                    None => Refusal::UnknownProduct { index },
                    Some(stock) => Refusal::Short {
                        product_id: item.product_id,
                        available: i64::from(stock),
                        requested: i64::from(item.quantity.get()),
                    },
                };
                return Ok(Err(refusal));
            }
        }
    }
    taken.sort_by_key(|(index, _)| *index);
    Ok(Ok(taken.into_iter().map(|(_, line)| line).collect()))
}

/// Gives closed or cancelled sale orders' units back to their sales in Postgres (stock and
/// the buyer's holding, so they may buy again) and queues the same return for Redis through
/// the outbox: Redis hears of it only if this transaction commits.
async fn return_sale_units(txn: &DatabaseTransaction, order_ids: &[Uuid]) -> Result<()> {
    if order_ids.is_empty() {
        return Ok(());
    }
    // Per stock bucket: each order's units go back to the bucket they came from (its
    // buyer's home bucket).
    let mut by_sale: BTreeMap<(Uuid, u16), Vec<sales::OrderUnits>> = BTreeMap::new();
    for units in sales::units_of_orders(txn, order_ids).await? {
        let bucket = Bucket::home(units.user_id, units.stock_buckets as u16).index;
        by_sale.entry((units.sale_id, bucket)).or_default().push(units);
    }
    for ((sale_id, bucket), units) in by_sale {
        let buckets = units.first().map_or(1, |u| u.stock_buckets as u16);
        let total: i32 = units.iter().map(|u| u.quantity).sum();
        let version = sales::change_stock(txn, sale_id, bucket, buckets, total).await?;
        let mut released: BTreeMap<Uuid, i32> = BTreeMap::new();
        for u in &units {
            *released.entry(u.user_id).or_default() += u.quantity;
        }
        let released: Vec<(Uuid, i32)> = released.into_iter().collect();
        sales::release_buyers(txn, sale_id, &released).await?;
        let order_ids: Vec<Uuid> = units.iter().map(|u| u.order_id).collect();
        sales::mark_returned(txn, sale_id, &order_ids, version).await?;
        let payload = SaleRestock {
            sale_id,
            version,
            returns: units
                .iter()
                .map(|u| ReturnedUnits { order_id: u.order_id, user_id: u.user_id, quantity: u.quantity })
                .collect(),
            buckets,
        };
        outbox::enqueue(txn, Outgoing { routing_key: SALE_RESTOCK.key, payload: &payload, delay_ms: None }).await?;
    }
    Ok(())
}

/// The outbox messages every new batch of orders needs, in one INSERT: the close message
/// for their payment window (delivered through the delay queue for that window) and the
/// `order.created` event for integrations.
pub async fn announce_and_schedule_close(
    db: &impl ConnectionTrait,
    kind: OrderKind,
    order_ids: &[Uuid],
    payment_timeout_ms: i64,
) -> Result<()> {
    let close = CloseOrders { order_ids: order_ids.to_vec() };
    let created = OrdersCreated { kind: kind.as_str().to_owned(), order_ids: order_ids.to_vec() };
    outbox::enqueue_all(
        db,
        &[
            Outgoing {
                routing_key: ORDER_CLOSE.key,
                payload: &serde_json::to_value(&close).map_err(|e| Error::Internal(e.into()))?,
                delay_ms: Some(payment_timeout_ms),
            },
            Outgoing {
                routing_key: ORDER_CREATED,
                payload: &serde_json::to_value(&created).map_err(|e| Error::Internal(e.into()))?,
                delay_ms: None,
            },
        ],
    )
    .await?;
    Ok(())
}

fn hash_request(items: &[NewOrderItem]) -> String {
    let mut hasher = Sha256::new();
    for item in items {
        hasher.update(item.product_id.as_bytes());
        hasher.update(item.quantity.get().to_be_bytes());
    }
    hex::encode(hasher.finalize())
}

fn replay(stored: idempotency::StoredResponse, request_hash: &str) -> Result<OrderView> {
    if stored.request_hash != request_hash {
        return Err(Error::IdempotencyKeyReused);
    }
    let answer: FirstAnswer = serde_json::from_value(stored.response_body)
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored answer: {e}")))?;
    answer.into_result()
}

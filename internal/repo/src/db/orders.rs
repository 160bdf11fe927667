//! The `orders` and `order_items` tables, and the conditional transitions out of
//! `pending_payment`.

use rust_decimal::Decimal;
use sea_orm::ExprTrait;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, Order, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::entity::order::{self, Column, Entity};
use super::entity::order_item;
use super::{Page, stmt};

pub use order::Model as OrderRow;
pub use order_item::Model as OrderItemRow;

/// One line of a new order; `product_id` is `None` for an auction lot.
#[derive(Debug, Clone)]
pub struct NewLine {
    pub product_id: Option<Uuid>,
    pub title: String,
    pub quantity: i32,
    pub unit_price: Decimal,
}

#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: &'static str,
    pub total: Decimal,
    /// The payment window; the deadline is computed from the database clock, the same clock
    /// the close compares against.
    pub payment_timeout_ms: i64,
    pub lines: Vec<NewLine>,
}

/// Inserts orders and their lines in one set-based statement, however many there are (the
/// flash-sale consumer inserts hundreds per transaction).
#[tracing::instrument(name = "INSERT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "orders"))]
pub async fn insert(db: &impl ConnectionTrait, orders: &[NewOrder]) -> Result<(), DbErr> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let users: Vec<Uuid> = orders.iter().map(|o| o.user_id).collect();
    let kinds: Vec<String> = orders.iter().map(|o| o.kind.to_owned()).collect();
    let totals: Vec<Decimal> = orders.iter().map(|o| o.total).collect();
    let timeouts: Vec<i64> = orders.iter().map(|o| o.payment_timeout_ms).collect();
    let mut order_ids = Vec::new();
    let mut line_numbers = Vec::new();
    let mut products = Vec::new();
    let mut titles = Vec::new();
    let mut quantities = Vec::new();
    let mut prices = Vec::new();
    for order in orders {
        for (number, line) in order.lines.iter().enumerate() {
            order_ids.push(order.id);
            line_numbers.push(number as i32 + 1);
            // unnest cannot carry NULLs in a uuid[] built from Rust values; the nil UUID
            // stands for "no product" and NULLIF turns it back into NULL.
            products.push(line.product_id.unwrap_or(Uuid::nil()));
            titles.push(line.title.clone());
            quantities.push(line.quantity);
            prices.push(line.unit_price);
        }
    }
    // One statement, one round trip: the orders in a data-modifying CTE, the lines in the
    // main INSERT (the lines' foreign key is checked at the end of the statement).
    db.execute_raw(stmt(
        "WITH new_orders AS ( \
             INSERT INTO orders (id, user_id, kind, status, total, expires_at) \
             SELECT id, user_id, kind, 'pending_payment', total, now() + timeout_ms * interval '1 millisecond' \
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::bigint[]) \
                  AS o(id, user_id, kind, total, timeout_ms)) \
         INSERT INTO order_items (order_id, line, product_id, title, quantity, unit_price) \
         SELECT order_id, line::smallint, NULLIF(product_id, '00000000-0000-0000-0000-000000000000'), \
                title, quantity, unit_price \
         FROM unnest($6::uuid[], $7::int[], $8::uuid[], $9::text[], $10::int[], $11::numeric[]) \
              AS l(order_id, line, product_id, title, quantity, unit_price)",
        [
            ids.into(),
            users.into(),
            kinds.into(),
            totals.into(),
            timeouts.into(),
            order_ids.into(),
            line_numbers.into(),
            products.into(),
            titles.into(),
            quantities.into(),
            prices.into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// An order of this user; someone else's order is as invisible as a missing one.
#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "orders"))]
pub async fn find_for_user(db: &impl ConnectionTrait, id: Uuid, user_id: Uuid) -> Result<Option<OrderRow>, DbErr> {
    Entity::find_by_id(id).filter(Column::UserId.eq(user_id)).one(db).await
}

#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "orders"))]
pub async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<OrderRow>, DbErr> {
    Entity::find_by_id(id).one(db).await
}

#[tracing::instrument(name = "SELECT order_items", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "order_items"))]
pub async fn items_of(db: &impl ConnectionTrait, order_ids: Vec<Uuid>) -> Result<Vec<OrderItemRow>, DbErr> {
    order_item::Entity::find()
        .filter(order_item::Column::OrderId.is_in(order_ids))
        .order_by(order_item::Column::OrderId, Order::Asc)
        .order_by(order_item::Column::Line, Order::Asc)
        .all(db)
        .await
}

pub struct ListQuery<'a> {
    pub user_id: Uuid,
    pub status: Option<&'a str>,
    pub offset: u64,
    pub limit: u64,
    /// A whitelisted column name.
    pub sort: &'a str,
    pub descending: bool,
}

#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "orders"))]
pub async fn list_for_user(db: &impl ConnectionTrait, query: ListQuery<'_>) -> Result<Page<OrderRow>, DbErr> {
    let column = match query.sort {
        "total" => Column::Total,
        "status" => Column::Status,
        "expires_at" => Column::ExpiresAt,
        _ => Column::CreatedAt,
    };
    let mut select = Entity::find().filter(Column::UserId.eq(query.user_id));
    if let Some(status) = query.status {
        select = select.filter(Column::Status.eq(status));
    }
    let total = select.clone().count(db).await?;
    let order = if query.descending { Order::Desc } else { Order::Asc };
    let items = select
        .order_by(column, order)
        .order_by(Column::Id, Order::Asc)
        .offset(query.offset)
        .limit(query.limit)
        .all(db)
        .await?;
    Ok(Page { items, total })
}

/// Marks a pending order paid, if it is still inside its payment window. The status and
/// the deadline are checked in the same statement as the write, so a payment and a close
/// racing each other cannot both win.
#[tracing::instrument(name = "UPDATE orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "orders"))]
pub async fn pay(db: &impl ConnectionTrait, id: Uuid, user_id: Uuid) -> Result<Option<OrderRow>, DbErr> {
    let mut rows = Entity::update_many()
        .col_expr(Column::Status, Expr::value("paid"))
        .col_expr(Column::PaidAt, Expr::current_timestamp())
        .col_expr(Column::UpdatedAt, Expr::current_timestamp())
        .filter(Column::Id.eq(id))
        .filter(Column::UserId.eq(user_id))
        .filter(Column::Status.eq("pending_payment"))
        .filter(Expr::col(Column::ExpiresAt).gt(Expr::current_timestamp()))
        .exec_with_returning(db)
        .await?;
    Ok(rows.pop())
}

/// How an order leaves `pending_payment` without being paid.
#[derive(Debug, Clone, Copy)]
pub enum Finish {
    /// The payment window passed: only orders whose deadline is behind us.
    Closed,
    /// The buyer cancelled: only their own order.
    Cancelled { user_id: Uuid },
}

#[derive(Debug, Clone, FromQueryResult)]
pub struct Finished {
    pub id: Uuid,
    pub kind: String,
}

/// Moves the given orders out of `pending_payment` and returns those that actually moved.
/// Only these may give their stock back: an order that was already paid, closed or
/// cancelled (a redelivered close message, a racing payment) is not returned, so no stock
/// is ever returned twice.
#[tracing::instrument(name = "UPDATE orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "orders"))]
pub async fn finish(db: &impl ConnectionTrait, ids: &[Uuid], how: Finish) -> Result<Vec<Finished>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statement = match how {
        Finish::Closed => stmt(
            "UPDATE orders SET status = 'closed', finished_at = now(), updated_at = now() \
             WHERE id = ANY($1) AND status = 'pending_payment' AND expires_at <= now() \
             RETURNING id, kind",
            [ids.to_vec().into()],
        ),
        Finish::Cancelled { user_id } => stmt(
            "UPDATE orders SET status = 'cancelled', finished_at = now(), updated_at = now() \
             WHERE id = ANY($1) AND user_id = $2 AND status = 'pending_payment' \
             RETURNING id, kind",
            [ids.to_vec().into(), user_id.into()],
        ),
    };
    Finished::find_by_statement(statement).all(db).await
}

/// Pending orders whose deadline passed more than `grace_ms` ago: their close message is
/// late or lost, and the sweeper closes them through the same path.
#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "orders"))]
pub async fn overdue(db: &impl ConnectionTrait, grace_ms: i64, limit: u64) -> Result<Vec<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct Id {
        id: Uuid,
    }
    let rows = Id::find_by_statement(stmt(
        "SELECT id FROM orders WHERE status = 'pending_payment' \
         AND expires_at <= now() - $1 * interval '1 millisecond' ORDER BY expires_at LIMIT $2",
        [grace_ms.into(), (limit as i64).into()],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

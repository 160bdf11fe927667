//! The `products` table: the catalog and its stock.

use chrono::Utc;
use rust_decimal::Decimal;
use sea_orm::sea_query::Expr;
use sea_orm::sea_query::extension::postgres::PgExpr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, Order, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::entity::product::{self, Column, Entity};
use super::{Page, stmt};

pub use product::Model as ProductRow;

pub struct NewProduct<'a> {
    pub id: Uuid,
    pub title: &'a str,
    pub description: &'a str,
    pub price: Decimal,
    pub stock: i32,
}

#[tracing::instrument(name = "INSERT products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "products"))]
pub async fn insert(db: &impl ConnectionTrait, new: NewProduct<'_>) -> Result<ProductRow, DbErr> {
    let now = Utc::now();
    let row = product::ActiveModel {
        id: Set(new.id),
        title: Set(new.title.to_owned()),
        description: Set(new.description.to_owned()),
        price: Set(new.price),
        stock: Set(new.stock),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
    };
    Entity::insert(row).exec_with_returning(db).await
}

/// A product that has not been deleted.
#[tracing::instrument(name = "SELECT products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "products"))]
pub async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<ProductRow>, DbErr> {
    Entity::find_by_id(id).filter(Column::DeletedAt.is_null()).one(db).await
}

pub struct ListQuery<'a> {
    pub offset: u64,
    pub limit: u64,
    /// A whitelisted column name (see `service::catalog::SORT_FIELDS`).
    pub sort: &'a str,
    pub descending: bool,
    /// Case-insensitive title search; served by the trigram index.
    pub title_contains: Option<&'a str>,
}

#[tracing::instrument(name = "SELECT products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "products"))]
pub async fn list(db: &impl ConnectionTrait, query: ListQuery<'_>) -> Result<Page<ProductRow>, DbErr> {
    let column = match query.sort {
        "title" => Column::Title,
        "price" => Column::Price,
        "stock" => Column::Stock,
        "updated_at" => Column::UpdatedAt,
        _ => Column::CreatedAt,
    };
    let mut select = Entity::find().filter(Column::DeletedAt.is_null());
    if let Some(text) = query.title_contains {
        let pattern = format!("%{}%", escape_like(text));
        select = select.filter(Expr::col(Column::Title).ilike(pattern));
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

/// `%` and `_` in a search are literal characters, not wildcards.
fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

#[derive(Debug, Default)]
pub struct ProductChanges {
    pub title: Option<String>,
    pub description: Option<String>,
    pub price: Option<Decimal>,
    pub stock: Option<i32>,
}

/// Applies the changes to a live product; `None` when there is no such product.
#[tracing::instrument(name = "UPDATE products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "products"))]
pub async fn update(db: &impl ConnectionTrait, id: Uuid, changes: ProductChanges) -> Result<Option<ProductRow>, DbErr> {
    let mut update = Entity::update_many()
        .col_expr(Column::UpdatedAt, Expr::current_timestamp())
        .filter(Column::Id.eq(id))
        .filter(Column::DeletedAt.is_null());
    if let Some(title) = changes.title {
        update = update.col_expr(Column::Title, Expr::value(title));
    }
    if let Some(description) = changes.description {
        update = update.col_expr(Column::Description, Expr::value(description));
    }
    if let Some(price) = changes.price {
        update = update.col_expr(Column::Price, Expr::value(price));
    }
    if let Some(stock) = changes.stock {
        update = update.col_expr(Column::Stock, Expr::value(stock));
    }
    let mut rows = update.exec_with_returning(db).await?;
    Ok(rows.pop())
}

/// Soft delete: orders keep pointing at the row. Returns false when it was not there.
#[tracing::instrument(name = "UPDATE products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "products"))]
pub async fn delete(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, DbErr> {
    let result = Entity::update_many()
        .col_expr(Column::DeletedAt, Expr::current_timestamp())
        .filter(Column::Id.eq(id))
        .filter(Column::DeletedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

#[derive(Debug, FromQueryResult)]
pub struct TakenStock {
    pub title: String,
    pub price: Decimal,
}

/// Takes `quantity` units if, and only if, that many are left: the check and the decrement
/// are one statement, so two orders can never both take the last unit.
#[tracing::instrument(name = "UPDATE products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "products"))]
pub async fn take_stock(db: &impl ConnectionTrait, id: Uuid, quantity: i32) -> Result<Option<TakenStock>, DbErr> {
    TakenStock::find_by_statement(stmt(
        "UPDATE products SET stock = stock - $2, updated_at = now() \
         WHERE id = $1 AND deleted_at IS NULL AND stock >= $2 RETURNING title, price",
        [id.into(), quantity.into()],
    ))
    .one(db)
    .await
}

/// The stock of a live product (to explain a refused order), or `None`.
#[tracing::instrument(name = "SELECT products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "products"))]
pub async fn stock_of(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<i32>, DbErr> {
    Ok(find(db, id).await?.map(|p| p.stock))
}

/// Puts back the units of the given orders' lines (on cancel or close). Returns the
/// products whose stock changed, so their cache entries can be dropped.
#[tracing::instrument(name = "UPDATE products", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "products"))]
pub async fn return_stock_of_orders(db: &impl ConnectionTrait, order_ids: &[Uuid]) -> Result<Vec<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct Id {
        id: Uuid,
    }
    let rows = Id::find_by_statement(stmt(
        "UPDATE products p SET stock = p.stock + lines.quantity, updated_at = now() \
         FROM (SELECT product_id, SUM(quantity)::int AS quantity FROM order_items \
               WHERE order_id = ANY($1) AND product_id IS NOT NULL GROUP BY product_id) lines \
         WHERE p.id = lines.product_id RETURNING p.id",
        [order_ids.to_vec().into()],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

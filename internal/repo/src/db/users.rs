//! The `users` table.

use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, Order, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::entity::user::{self, Column, Entity};
use super::{Page, is_unique_violation};

pub use user::Model as UserRow;

#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] DbErr),
}

pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
}

#[tracing::instrument(name = "INSERT users", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "users"))]
pub async fn insert(db: &impl ConnectionTrait, new: NewUser<'_>) -> Result<UserRow, InsertUserError> {
    let now = Utc::now();
    let row = user::ActiveModel {
        id: Set(new.id),
        email: Set(new.email.to_owned()),
        password_hash: Set(new.password_hash.to_owned()),
        role: Set(new.role.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Entity::insert(row)
        .exec_with_returning(db)
        .await
        .map_err(|err| if is_unique_violation(&err) { InsertUserError::EmailTaken } else { InsertUserError::Db(err) })
}

/// Inserts many users in one statement; existing emails are skipped. Returns how many
/// rows were new.
#[tracing::instrument(name = "INSERT users", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "users"))]
pub async fn insert_many(db: &impl ConnectionTrait, users: &[NewUser<'_>]) -> Result<u64, DbErr> {
    if users.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let rows = users.iter().map(|new| user::ActiveModel {
        id: Set(new.id),
        email: Set(new.email.to_owned()),
        password_hash: Set(new.password_hash.to_owned()),
        role: Set(new.role.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
    });
    let result = Entity::insert_many(rows)
        .on_conflict(OnConflict::column(Column::Email).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    Ok(result)
}

#[tracing::instrument(name = "SELECT users", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "users"))]
pub async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<UserRow>, DbErr> {
    Entity::find_by_id(id).one(db).await
}

#[tracing::instrument(name = "SELECT users", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "users"))]
pub async fn find_by_email(db: &impl ConnectionTrait, email: &str) -> Result<Option<UserRow>, DbErr> {
    Entity::find().filter(Column::Email.eq(email)).one(db).await
}

/// Makes an existing user an admin; returns false when there is no such user.
#[tracing::instrument(name = "UPDATE users", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "users"))]
pub async fn promote(db: &impl ConnectionTrait, email: &str) -> Result<bool, DbErr> {
    let result = Entity::update_many()
        .col_expr(Column::Role, "admin".into())
        .col_expr(Column::UpdatedAt, Utc::now().into())
        .filter(Column::Email.eq(email))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// A page of users, sorted by a whitelisted column.
#[tracing::instrument(name = "SELECT users", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "users"))]
pub async fn list(
    db: &impl ConnectionTrait,
    offset: u64,
    limit: u64,
    sort: &str,
    descending: bool,
) -> Result<Page<UserRow>, DbErr> {
    let column = match sort {
        "email" => Column::Email,
        "role" => Column::Role,
        _ => Column::CreatedAt,
    };
    let order = if descending { Order::Desc } else { Order::Asc };
    let total = Entity::find().count(db).await?;
    let items = Entity::find()
        .order_by(column, order)
        .order_by(Column::Id, Order::Asc)
        .offset(offset)
        .limit(limit)
        .all(db)
        .await?;
    Ok(Page { items, total })
}

//! Postgres: sea-orm entities for the simple rows, explicit SQL where a statement must be
//! conditional or set-based (stock updates, batch inserts, SKIP LOCKED).
//!
//! Every function takes its executor (`&impl ConnectionTrait`: the pool or a transaction),
//! so the service decides where a transaction begins and ends.

pub mod auctions;
pub mod entity;
pub mod idempotency;
pub mod orders;
pub mod outbox;
pub mod products;
pub mod refresh_tokens;
pub mod sales;
pub mod users;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, SqlErr, Statement, Value};

/// Whether `err` is a unique-constraint violation (e.g. an email that is already taken).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

pub(crate) fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The one `bigint` a statement answers: a `count(*)`, or a column it `RETURNING`s.
pub(crate) async fn scalar(
    db: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<i64, DbErr> {
    let row = db.query_one_raw(stmt(sql, values)).await?.ok_or_else(|| DbErr::RecordNotFound(sql.into()))?;
    row.try_get_by_index::<i64>(0)
}

/// The number of rows and a page of them, as every list endpoint answers.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

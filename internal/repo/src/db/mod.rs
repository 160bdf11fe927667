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

use sea_orm::{ConnectionTrait, DbBackend, DbErr, RuntimeErr, SqlErr, SqlxError, Statement, Value};

/// Whether `err` is a unique-constraint violation (e.g. an email that is already taken).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Whether `err` says Postgres could not be reached (refused or cut connection, a pool that
/// timed out, a server shutting down or starting up), as opposed to a statement that failed
/// for its own reason. Work that hits the first kind waits for Postgres; it is not at fault.
pub fn is_unreachable(err: &DbErr) -> bool {
    let sqlx = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => sqlx,
        _ => return false,
    };
    match sqlx.as_ref() {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::Protocol(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed
        | SqlxError::BeginFailed => true,
        // Class 08 is "connection exception"; 57P01-57P03 a server shutting down or not yet
        // accepting connections; 53300 too many connections.
        SqlxError::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn exec(err: SqlxError) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
    }

    #[test]
    fn an_unreachable_postgres_is_told_apart_from_a_failing_statement() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_unreachable(&exec(SqlxError::Io(refused))));
        assert!(is_unreachable(&exec(SqlxError::PoolTimedOut)));
        assert!(is_unreachable(&DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)));
        assert!(!is_unreachable(&exec(SqlxError::RowNotFound)));
        assert!(!is_unreachable(&DbErr::RecordNotFound("sale".into())));
        assert!(!is_unreachable(&DbErr::Custom("a statement failed".into())));
    }
}

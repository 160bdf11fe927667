//! The transactional outbox: messages written in the same transaction as the state change
//! they announce, and published afterwards by the relay.
//!
//! Why: publishing to RabbitMQ inside a database transaction can't be atomic with the
//! commit. Writing the message as a row makes "the order exists" and "its close message
//! will be sent" one fact; the relay turns rows into messages at least once.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};
use serde::Serialize;
use serde_json::Value;

use super::{scalar, stmt};

/// A message to write: where it goes, what it says, and whether it waits first.
pub struct Outgoing<'a, T: Serialize> {
    pub routing_key: &'a str,
    pub payload: &'a T,
    /// Delivered after this many milliseconds, through a TTL queue (see `mq::topology`).
    pub delay_ms: Option<i64>,
}

/// Writes one message, carrying the current trace context so the consumer's span joins
/// the trace that caused it.
pub async fn enqueue<T: Serialize>(db: &impl ConnectionTrait, message: Outgoing<'_, T>) -> Result<(), DbErr> {
    let payload = serde_json::to_value(message.payload).map_err(|e| DbErr::Custom(format!("outbox payload: {e}")))?;
    let Outgoing { routing_key, delay_ms, .. } = message;
    enqueue_all(db, &[Outgoing { routing_key, payload: &payload, delay_ms }]).await
}

/// Writes several messages in one INSERT (one round trip), with the same trace context.
#[tracing::instrument(name = "INSERT outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "outbox"))]
pub async fn enqueue_all(db: &impl ConnectionTrait, messages: &[Outgoing<'_, Value>]) -> Result<(), DbErr> {
    let headers = serde_json::to_value(platform::telemetry::current_trace_headers())
        .map_err(|e| DbErr::Custom(format!("outbox headers: {e}")))?;
    let keys: Vec<String> = messages.iter().map(|m| m.routing_key.to_owned()).collect();
    let payloads: Vec<Value> = messages.iter().map(|m| m.payload.clone()).collect();
    // A delay of 0 stands for "none" in the array (NULL cannot ride in a bigint[] from Rust).
    let delays: Vec<i64> = messages.iter().map(|m| m.delay_ms.unwrap_or(0)).collect();
    db.execute_raw(stmt(
        "INSERT INTO outbox (routing_key, payload, headers, delay_ms) \
         SELECT routing_key, payload, $4, NULLIF(delay_ms, 0) \
         FROM unnest($1::text[], $2::jsonb[], $3::bigint[]) AS m(routing_key, payload, delay_ms)",
        [keys.into(), payloads.into(), delays.into(), headers.into()],
    ))
    .await
    .map(|_| ())
}

#[derive(Debug, Clone, FromQueryResult)]
pub struct PendingRow {
    pub id: i64,
    pub routing_key: String,
    pub payload: Value,
    pub headers: Value,
    pub delay_ms: Option<i64>,
    pub attempts: i32,
}

impl PendingRow {
    pub fn trace_headers(&self) -> HashMap<String, String> {
        serde_json::from_value(self.headers.clone()).unwrap_or_default()
    }
}

/// Locks up to `limit` unpublished rows that are due. `SKIP LOCKED` lets several relays
/// run at once: each takes rows the others are not holding, so nothing is sent twice by
/// two relays (a relay that dies before marking its rows sends them again later).
#[tracing::instrument(name = "SELECT outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "outbox"))]
pub async fn claim(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<PendingRow>, DbErr> {
    PendingRow::find_by_statement(stmt(
        "SELECT id, routing_key, payload, headers, delay_ms, attempts FROM outbox \
         WHERE published_at IS NULL AND next_attempt_at <= now() \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        [(limit as i64).into()],
    ))
    .all(db)
    .await
}

#[tracing::instrument(name = "UPDATE outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "outbox"))]
pub async fn mark_published(db: &impl ConnectionTrait, ids: &[i64]) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    db.execute_raw(stmt(
        "UPDATE outbox SET published_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = ANY($1)",
        [ids.to_vec().into()],
    ))
    .await
    .map(|_| ())
}

/// Leaves the rows for a later round, `retry_in_ms` from now.
#[tracing::instrument(name = "UPDATE outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "outbox"))]
pub async fn mark_failed(db: &impl ConnectionTrait, ids: &[i64], error: &str, retry_in_ms: i64) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    db.execute_raw(stmt(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
         next_attempt_at = now() + $3 * interval '1 millisecond' WHERE id = ANY($1)",
        [ids.to_vec().into(), error.into(), retry_in_ms.into()],
    ))
    .await
    .map(|_| ())
}

/// Parks a row that failed its last allowed attempt: it is not claimed again until
/// [`unpark`].
#[tracing::instrument(name = "UPDATE outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "outbox"))]
pub async fn park(db: &impl ConnectionTrait, id: i64, error: &str) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = 'infinity' WHERE id = $1",
        [id.into(), error.into()],
    ))
    .await
    .map(|_| ())
}

/// A parked row, as `dlq list --queue outbox` shows it.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ParkedRow {
    pub id: i64,
    pub routing_key: String,
    pub payload: Value,
    pub attempts: i32,
    pub last_error: Option<String>,
}

#[tracing::instrument(name = "SELECT outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "outbox"))]
pub async fn parked(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<ParkedRow>, DbErr> {
    ParkedRow::find_by_statement(stmt(
        "SELECT id, routing_key, payload, attempts, last_error FROM outbox \
         WHERE published_at IS NULL AND next_attempt_at = 'infinity' ORDER BY id LIMIT $1",
        [(limit as i64).into()],
    ))
    .all(db)
    .await
}

#[tracing::instrument(name = "SELECT outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "outbox"))]
pub async fn parked_count(db: &impl ConnectionTrait) -> Result<i64, DbErr> {
    scalar(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL AND next_attempt_at = 'infinity'", []).await
}

/// Makes every parked row due again with a fresh attempt count; returns how many.
#[tracing::instrument(name = "UPDATE outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "outbox"))]
pub async fn unpark(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    db.execute_raw(stmt(
        "UPDATE outbox SET attempts = 0, next_attempt_at = now() \
         WHERE published_at IS NULL AND next_attempt_at = 'infinity'",
        [],
    ))
    .await
    .map(|done| done.rows_affected())
}

/// Deletes published rows older than `hours`; returns how many.
#[tracing::instrument(name = "DELETE outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "DELETE", db.collection.name = "outbox"))]
pub async fn delete_published_before(db: &impl ConnectionTrait, hours: i64) -> Result<u64, DbErr> {
    let result = db
        .execute_raw(stmt("DELETE FROM outbox WHERE published_at < now() - $1 * interval '1 hour'", [hours.into()]))
        .await?;
    Ok(result.rows_affected())
}

/// Rows not yet published (the relay's backlog).
#[tracing::instrument(name = "SELECT outbox", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "outbox"))]
pub async fn backlog(db: &impl ConnectionTrait) -> Result<i64, DbErr> {
    scalar(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL", []).await
}

//! The outbox relay: turns committed outbox rows into RabbitMQ messages.
//!
//! It wakes on Postgres `NOTIFY outbox` (sent by a trigger when rows commit) or, if a
//! notification was missed, on a short poll. Each round locks a batch with `FOR UPDATE
//! SKIP LOCKED`, publishes it with confirms, and marks the rows sent in the same
//! transaction. Several relays can run at once; a relay that dies mid-round leaves its
//! rows unmarked and they are sent again (consumers are idempotent).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform::Broker;
use platform::config::OutboxSettings;
use repo::db::outbox::{self, PendingRow};
use repo::mq::topology::ROUTES;
use repo::mq::{ConfirmPublisher, Message, PublishError, Topology};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Result;

pub struct OutboxRelay {
    db: DatabaseConnection,
    publisher: ConfirmPublisher,
    topology: Topology,
    settings: OutboxSettings,
    /// Delay queues this process has declared, and when (an expiring queue is declared
    /// again once its lease runs low).
    declared: Mutex<HashMap<String, Instant>>,
}

impl OutboxRelay {
    pub fn new(
        db: DatabaseConnection,
        broker: Arc<Broker>,
        topology: Topology,
        settings: OutboxSettings,
        confirm_timeout: Duration,
    ) -> Self {
        Self {
            db,
            publisher: ConfirmPublisher::new(broker, confirm_timeout),
            topology,
            settings,
            declared: Mutex::new(HashMap::new()),
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms.get());
        let mut listener = self.listen().await;
        let mut last_housekeeping = Instant::now() - Duration::from_secs(3600);
        loop {
            if let Err(err) = self.drain().await {
                tracing::warn!(error = %err, "outbox relay round failed");
            }
            if last_housekeeping.elapsed() > Duration::from_secs(5) {
                self.housekeeping().await;
                last_housekeeping = Instant::now();
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = wait_for_notification(&mut listener, poll) => {}
            }
        }
        self.publisher.close().await;
    }

    async fn listen(&self) -> Option<PgListener> {
        let pool = self.db.get_postgres_connection_pool().clone();
        let mut listener = PgListener::connect_with(&pool).await.ok()?;
        listener.listen("outbox").await.ok()?;
        Some(listener)
    }

    /// Publishes rounds until a round finds less than a full batch.
    pub async fn drain(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let sent = self.round().await?;
            total += sent;
            if sent < self.settings.batch_size.get() {
                return Ok(total);
            }
        }
    }

    async fn round(&self) -> Result<u64> {
        let txn = self.db.begin().await?;
        let rows = outbox::claim(&txn, self.settings.batch_size.get()).await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        // A span only for rounds that found rows: the relay also polls, and an empty round
        // is not worth a trace. It serves many traces at once, so it links to the spans
        // that wrote its rows; each message's own publish span is the child of its row's.
        let span = tracing::info_span!("outbox.publish", rows = rows.len());
        for row in &rows {
            platform::telemetry::link_trace_headers(&span, &row.trace_headers());
        }
        self.finish_round(txn, &rows).instrument(span).await
    }

    async fn finish_round(&self, txn: DatabaseTransaction, rows: &[PendingRow]) -> Result<u64> {
        let (sent, failed) = self.publish(rows).await;
        outbox::mark_published(&txn, &sent).await?;
        metrics::counter!("outbox_published_total").increment(sent.len() as u64);
        for (row, err) in &failed {
            if row.attempts + 1 >= self.settings.max_attempts.get() as i32 {
                tracing::error!(error = %err, outbox_id = row.id, routing_key = row.routing_key, "outbox row parked after {} attempts; see `spike-server dlq list --queue outbox`", row.attempts + 1);
                metrics::counter!("outbox_parked_total").increment(1);
                outbox::park(&txn, row.id, err).await?;
                continue;
            }
            // A failed row waits with a growing delay, so the relay goes back to waiting
            // instead of spinning on a broken broker or a broken row.
            let retry_in = 500_i64 * 2_i64.pow(row.attempts.clamp(0, 6) as u32);
            tracing::warn!(error = %err, outbox_id = row.id, "outbox publish failed; retrying in {retry_in} ms");
            outbox::mark_failed(&txn, &[row.id], err, retry_in).await?;
        }
        txn.commit().await?;
        Ok(sent.len() as u64)
    }

    /// Publishes the claimed rows; returns the ids sent and, for each row that was not, why.
    /// A row's own problem (its delay queue cannot be declared, the broker refuses or cannot
    /// route its message) fails only that row, and the rows claimed with it go on. A broker
    /// that does not answer fails every row at once, without trying each.
    async fn publish<'r>(&self, rows: &'r [PendingRow]) -> (Vec<i64>, Vec<(&'r PendingRow, String)>) {
        let mut built = Vec::with_capacity(rows.len());
        let mut failed = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            match self.message(row).await {
                Ok(message) => built.push((row, message)),
                Err(err) if err.is_amqp_soft_error() => failed.push((row, err.to_string())),
                Err(err) => {
                    let unsent = built.iter().map(|(row, _)| *row).chain(&rows[index..]);
                    failed.extend(unsent.map(|row| (row, err.to_string())));
                    return (Vec::new(), failed);
                }
            }
        }
        let messages: Vec<Message> = built.iter().map(|(_, message)| message.clone()).collect();
        let err = match self.publisher.publish_all(&messages).await {
            Ok(()) => return (built.iter().map(|(row, _)| row.id).collect(), failed),
            Err(err) => err,
        };
        if !concerns_one_row(&err) || built.len() == 1 {
            failed.extend(built.iter().map(|(row, _)| (*row, err.to_string())));
            return (Vec::new(), failed);
        }
        // Some row spoiled the batch: each one alone, to find out which.
        let mut sent = Vec::new();
        let mut broker_down = None;
        for (row, message) in built {
            if let Some(err) = &broker_down {
                failed.push((row, format!("{err}")));
                continue;
            }
            match self.publisher.publish_all(std::slice::from_ref(&message)).await {
                Ok(()) => sent.push(row.id),
                Err(err) => {
                    failed.push((row, err.to_string()));
                    if !concerns_one_row(&err) {
                        broker_down = Some(err);
                    }
                }
            }
        }
        (sent, failed)
    }

    async fn message(&self, row: &PendingRow) -> Result<Message, lapin::Error> {
        let body = serde_json::to_vec(&row.payload).unwrap_or_default();
        let mut headers = row.trace_headers();
        headers.insert("x-outbox-id".into(), row.id.to_string());
        Ok(match row.delay_ms {
            Some(delay) => Message {
                exchange: String::new(),
                routing_key: self.delay_queue(&row.routing_key, delay as u64).await?,
                body,
                headers,
                message_id: Some(format!("outbox-{}", row.id)),
                mandatory: true,
            },
            None => Message {
                exchange: self.topology.exchange(),
                routing_key: row.routing_key.clone(),
                body,
                headers,
                message_id: Some(format!("outbox-{}", row.id)),
                // Our own consumer queues must exist; events for integrations may have
                // no subscriber at all.
                mandatory: ROUTES.iter().any(|r| r.key == row.routing_key),
            },
        })
    }

    async fn delay_queue(&self, key: &str, delay_ms: u64) -> Result<String, lapin::Error> {
        let name = self.topology.delay_queue(key, delay_ms);
        let mut declared = self.declared.lock().await;
        let lease = self.topology.lease();
        let fresh = declared.get(&name).is_some_and(|at| lease.is_none_or(|lease| at.elapsed() < lease));
        if !fresh {
            let channel = self.publisher.channel().await?;
            self.topology.declare_delay_queue(&channel, key, delay_ms).await?;
            declared.insert(name.clone(), Instant::now());
        }
        Ok(name)
    }

    async fn housekeeping(&self) {
        match outbox::delete_published_before(&self.db, self.settings.retention_hours as i64).await {
            Ok(deleted) if deleted > 0 => tracing::debug!(deleted, "old outbox rows deleted"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "outbox cleanup failed"),
        }
        if let Ok(parked) = outbox::parked_count(&self.db).await {
            metrics::gauge!("outbox_parked").set(parked as f64);
        }
        if let Ok(backlog) = outbox::backlog(&self.db).await {
            metrics::gauge!("outbox_backlog").set(backlog as f64);
        }
    }
}

async fn wait_for_notification(listener: &mut Option<PgListener>, poll: Duration) {
    match listener {
        Some(listener) => {
            let _ = tokio::time::timeout(poll, listener.try_recv()).await;
        }
        None => tokio::time::sleep(poll).await,
    }
}

/// Whether a failed publish says something about its messages (refused, unroutable, a
/// channel-level error such as a queue declared with other arguments) rather than about
/// the broker (unreachable, timed out).
fn concerns_one_row(err: &PublishError) -> bool {
    match err {
        PublishError::Nacked | PublishError::Unroutable(_) => true,
        PublishError::Broker(err) => err.is_amqp_soft_error(),
        PublishError::Timeout(_) => false,
    }
}

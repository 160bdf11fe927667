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
use repo::mq::{ConfirmPublisher, Message, Topology};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{DatabaseConnection, TransactionTrait};
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
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        // A span only for rounds that found rows: the relay also polls, and an empty round
        // is not worth a trace.
        let published = async {
            match self.messages(&rows).await {
                Ok(messages) => self.publisher.publish_all(&messages).await.map_err(|e| e.to_string()),
                Err(err) => Err(err.to_string()),
            }
        }
        .instrument(tracing::info_span!("outbox.publish", rows = ids.len()))
        .await;
        let sent = match published {
            Ok(()) => {
                outbox::mark_published(&txn, &ids).await?;
                metrics::counter!("outbox_published_total").increment(ids.len() as u64);
                ids.len() as u64
            }
            Err(err) => {
                // Failed rows wait with a growing delay; this round counts as empty so the
                // relay goes back to waiting instead of spinning on a broken broker.
                let attempts = rows.iter().map(|r| r.attempts).max().unwrap_or(0).clamp(0, 6) as u32;
                let retry_in = 500_i64 * 2_i64.pow(attempts);
                tracing::warn!(error = %err, rows = ids.len(), "outbox publish failed; retrying in {retry_in} ms");
                outbox::mark_failed(&txn, &ids, &err, retry_in).await?;
                0
            }
        };
        txn.commit().await?;
        Ok(sent)
    }

    async fn messages(&self, rows: &[PendingRow]) -> Result<Vec<Message>, lapin::Error> {
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let body = serde_json::to_vec(&row.payload).unwrap_or_default();
            let mut headers = row.trace_headers();
            headers.insert("x-outbox-id".into(), row.id.to_string());
            let message = match row.delay_ms {
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
            };
            messages.push(message);
        }
        Ok(messages)
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

//! Inspecting and re-driving dead letters (`spike-server dlq list|redrive`): the
//! dead-letter queues of the consumers, and the outbox rows the relay parked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use platform::Broker;
use repo::db::outbox;
use repo::mq::consumer::{ATTEMPT_HEADER, ERROR_HEADER};
use repo::mq::publisher::header_map;
use repo::mq::{ConfirmPublisher, Message, Route, Topology};
use sea_orm::DatabaseConnection;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: String,
    pub attempts: u32,
    pub error: String,
}

/// Up to `limit` dead letters of `route`, left in the queue: they are read without
/// acknowledgement and return to the queue when the channel closes.
pub async fn list(broker: &Broker, topology: &Topology, route: Route, limit: usize) -> Result<Vec<DeadLetter>> {
    let channel = broker.channel().await?;
    // Declared, not assumed: an expiring dead-letter queue that never received a letter
    // may be gone, which means it is empty.
    let queue = topology.declare_dead_letters(&channel, route).await?;
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(message) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await? else {
            break;
        };
        let headers = header_map(&message.delivery.properties);
        letters.push(DeadLetter {
            body: String::from_utf8_lossy(&message.delivery.data).into_owned(),
            attempts: headers.get(ATTEMPT_HEADER).and_then(|a| a.parse::<u32>().ok()).unwrap_or(1).saturating_sub(1),
            error: headers.get(ERROR_HEADER).cloned().unwrap_or_default(),
        });
    }
    channel.close(200, "listed".into()).await?;
    Ok(letters)
}

/// Moves the dead letters of `route` back to its consumer with a fresh attempt count: as
/// many as the queue held when it started, so a message that dies again is not re-driven
/// in a loop. Each one is acknowledged only after its copy was confirmed, so none is lost.
pub async fn redrive(
    broker: Arc<Broker>,
    topology: &Topology,
    route: Route,
    confirm_timeout: Duration,
) -> Result<usize> {
    let channel = broker.channel().await?;
    let publisher = ConfirmPublisher::new(broker, confirm_timeout);
    let queue = topology.dead_letters(route);
    let waiting = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?
        .message_count() as usize;
    let mut moved = 0;
    while moved < waiting {
        let Some(message) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await? else {
            break;
        };
        let mut headers: HashMap<String, String> = header_map(&message.delivery.properties);
        headers.remove(ATTEMPT_HEADER);
        headers.remove(ERROR_HEADER);
        let copy = Message {
            exchange: topology.exchange(),
            routing_key: route.key.to_owned(),
            body: message.delivery.data.clone(),
            headers,
            message_id: message.delivery.properties.message_id().as_ref().map(|id| id.to_string()),
            mandatory: true,
        };
        publisher
            .publish_all(std::slice::from_ref(&copy))
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("re-driving: {e}")))?;
        message.delivery.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    publisher.close().await;
    channel.close(200, "re-driven".into()).await?;
    Ok(moved)
}

/// Outbox rows parked after `outbox.max_attempts` failed publishes, the outbox's dead
/// letters: up to `limit`, oldest first.
pub async fn list_outbox(db: &DatabaseConnection, limit: u64) -> Result<Vec<DeadLetter>> {
    let rows = outbox::parked(db, limit).await?;
    Ok(rows
        .into_iter()
        .map(|row| DeadLetter {
            body: format!("outbox row {} ({}): {}", row.id, row.routing_key, row.payload),
            attempts: row.attempts.max(0) as u32,
            error: row.last_error.unwrap_or_default(),
        })
        .collect())
}

/// Makes the parked outbox rows due again with a fresh attempt count; the relay sends them
/// in its next round. Returns how many.
pub async fn redrive_outbox(db: &DatabaseConnection) -> Result<u64> {
    Ok(outbox::unpark(db).await?)
}

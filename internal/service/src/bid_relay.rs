//! The write-behind of accepted bids: the relay moves them from the auctions' Redis
//! streams to RabbitMQ, and the persister writes each batch into Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::Money;
use platform::Broker;
use repo::cache::Keys;
use repo::cache::auctions as live;
use repo::db::auctions::{self, NewBid};
use repo::mq::consumer::Delivery;
use repo::mq::messages::{BidBatch, PersistBid};
use repo::mq::topology::AUCTION_BIDS;
use repo::mq::{ConfirmPublisher, Message, Outcome, Topology};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auctions::millis;

/// After a round that found less than a full batch, the relay waits this long for the
/// streams to fill: under load, each message (and each transaction of the bid consumer)
/// then carries a hundred bids instead of a handful. Bids reach Postgres this much later;
/// bidders are not slowed at all.
const LINGER: Duration = Duration::from_millis(20);

/// Moves accepted bids from the auctions' Redis streams to RabbitMQ.
///
/// It reads with a consumer group and acknowledges an entry only after the broker
/// confirmed the message carrying it: with RabbitMQ down, bids wait in the stream (and the
/// bidders are not slowed at all); a relay that dies leaves its entries pending and another
/// one claims them after 30 s.
pub struct BidRelay {
    pub db: DatabaseConnection,
    pub client: redis::Client,
    pub keys: Keys,
    pub broker: Arc<Broker>,
    pub topology: Topology,
    pub confirm_timeout: Duration,
    pub batch: usize,
}

impl BidRelay {
    pub async fn run(self, stop: CancellationToken) {
        let publisher = ConfirmPublisher::new(self.broker.clone(), self.confirm_timeout);
        self.relay_until_stopped(&publisher, &stop).await;
        publisher.close().await;
    }

    async fn relay_until_stopped(&self, publisher: &ConfirmPublisher, stop: &CancellationToken) {
        let consumer = format!("relay-{}", Uuid::new_v4().simple());
        let mut conn = None;
        let mut streams: HashMap<String, Uuid> = HashMap::new();
        let mut refreshed = Instant::now() - Duration::from_secs(60);
        let mut claimed = Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            if conn.is_none() {
                // Its own connection, with a response timeout above the blocking read's 500 ms.
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
                match self.client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(c) => conn = Some(c),
                    Err(err) => {
                        tracing::warn!(error = %err, "bid relay cannot reach redis");
                        pause(stop, Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let redis = conn.as_mut().expect("connected above");
            if refreshed.elapsed() > Duration::from_secs(2) {
                if let Ok(ids) = auctions::with_live_streams(&self.db).await {
                    streams = ids.into_iter().map(|id| (self.keys.auction(id).bids, id)).collect();
                    for key in streams.keys() {
                        let _ = live::ensure_group(redis, key).await;
                    }
                }
                refreshed = Instant::now();
            }
            if streams.is_empty() {
                pause(stop, Duration::from_millis(500)).await;
                continue;
            }
            if claimed.elapsed() > Duration::from_secs(10) {
                for key in streams.keys() {
                    let _ = live::claim_abandoned(redis, key, &consumer, 30_000).await;
                }
                claimed = Instant::now();
            }
            let keys: Vec<String> = streams.keys().cloned().collect();
            match self.relay_once(redis, publisher, &keys, &streams, &consumer).await {
                Ok(Some(moved)) if moved < self.batch => pause(stop, LINGER).await,
                Ok(Some(_)) => {}
                Ok(None) => pause(stop, Duration::from_millis(500)).await,
                Err(err) => {
                    tracing::warn!(error = %err, "bid relay round failed; retrying");
                    if err.code() == Some("NOGROUP") {
                        refreshed = Instant::now() - Duration::from_secs(60);
                    } else if err.is_io_error() || err.is_connection_dropped() {
                        conn = None;
                    }
                    pause(stop, Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One round: own pending entries first (a publish that failed), else new ones. Returns
    /// how many bids it moved, or None when a publish failed, so the caller backs off
    /// instead of spinning.
    async fn relay_once(
        &self,
        redis: &mut redis::aio::MultiplexedConnection,
        publisher: &ConfirmPublisher,
        keys: &[String],
        streams: &HashMap<String, Uuid>,
        consumer: &str,
    ) -> redis::RedisResult<Option<usize>> {
        let mut batches = live::read_bids(redis, keys, consumer, self.batch, 0, true).await?;
        batches.retain(|(_, bids)| !bids.is_empty());
        if batches.is_empty() {
            batches = live::read_bids(redis, keys, consumer, self.batch, 500, false).await?;
        }
        let mut moved = 0;
        for (key, bids) in batches.into_iter().filter(|(_, bids)| !bids.is_empty()) {
            let Some(&auction_id) = streams.get(&key) else { continue };
            let message = BidBatch {
                auction_id,
                bids: bids
                    .iter()
                    .map(|b| PersistBid {
                        seq: b.seq,
                        user_id: b.user_id,
                        amount_cents: b.amount_cents,
                        end_ms: b.end_ms,
                        placed_ms: b.placed_ms,
                    })
                    .collect(),
            };
            let message = Message {
                exchange: self.topology.exchange(),
                routing_key: AUCTION_BIDS.key.to_owned(),
                body: serde_json::to_vec(&message).unwrap_or_default(),
                message_id: Some(format!("{auction_id}-{}", bids[0].seq)),
                mandatory: true,
                ..Default::default()
            };
            if let Err(err) = publisher.publish_all(&[message]).await {
                tracing::warn!(%auction_id, error = %err, bids = bids.len(), "bids wait in the stream: publish not confirmed");
                return Ok(None);
            }
            let ids: Vec<String> = bids.iter().map(|b| b.entry_id.clone()).collect();
            live::forget_bids(redis, &key, &ids).await?;
            metrics::counter!("bids_relayed_total").increment(ids.len() as u64);
            moved += ids.len();
        }
        Ok(Some(moved))
    }
}

async fn pause(stop: &CancellationToken, duration: Duration) {
    stop.run_until_cancelled(tokio::time::sleep(duration)).await;
}

/// Handles one `auction.bids` message: the batch goes into Postgres in one transaction.
pub async fn handle_bids(db: &DatabaseConnection, delivery: Delivery) -> Outcome {
    let batch: BidBatch = match delivery.json("bid batch") {
        Ok(batch) => batch,
        Err(dead) => return dead,
    };
    let bids: Vec<NewBid> = batch
        .bids
        .iter()
        .map(|b| NewBid {
            seq: b.seq,
            user_id: b.user_id,
            amount: Money::from_cents(b.amount_cents).decimal(),
            end_at: millis(b.end_ms),
            placed_at: millis(b.placed_ms),
        })
        .collect();
    let written = async {
        let txn = db.begin().await?;
        let inserted = auctions::record_bids(&txn, batch.auction_id, &bids).await?;
        txn.commit().await.map(|()| inserted)
    };
    match written.await {
        // Only the rows written: a redelivered batch inserts (and counts) nothing.
        Ok(inserted) => {
            metrics::counter!("bids_persisted_total").increment(inserted);
            Outcome::Ack
        }
        Err(err) => crate::Error::from(err).outcome("persisting bids"),
    }
}

//! Closing unpaid orders: the consumer of the delayed `order.close` messages, and the
//! sweeper that closes whatever a lost message left behind.

use std::time::Duration;

use repo::db::orders::{self, Finish};
use repo::mq::Outcome;
use repo::mq::consumer::Delivery;
use repo::mq::messages::CloseOrders;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::orders::OrderService;

/// Handles one `order.close` message. A message for orders that were paid, cancelled or
/// closed already changes nothing (the UPDATE matches no row), so redelivery is harmless.
pub async fn handle_close(orders: &OrderService, delivery: Delivery) -> Outcome {
    let message: CloseOrders = match serde_json::from_slice(&delivery.body) {
        Ok(message) => message,
        Err(err) => return Outcome::Dead(anyhow::anyhow!("unreadable close message: {err}")),
    };
    match orders.finish(&message.order_ids, Finish::Closed).await {
        Ok(closed) => {
            if !closed.is_empty() {
                tracing::info!(closed = closed.len(), "closed unpaid orders");
            }
            Outcome::Ack
        }
        Err(err) => Outcome::Retry(anyhow::anyhow!("closing orders: {err}")),
    }
}

/// Every `every`, closes pending orders whose deadline passed more than `every` ago: the
/// delay queue normally got there first, so this only finds orders whose message was lost.
pub async fn sweep(db: DatabaseConnection, orders: OrderService, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            let overdue = match orders::overdue(&db, every.as_millis() as i64, 500).await {
                Ok(ids) => ids,
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper could not look for overdue orders");
                    break;
                }
            };
            if overdue.is_empty() {
                break;
            }
            match orders.finish(&overdue, Finish::Closed).await {
                Ok(closed) => {
                    tracing::info!(closed = closed.len(), "sweeper closed overdue orders");
                    metrics::counter!("orders_swept_total").increment(closed.len() as u64);
                    if overdue.len() < 500 {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper could not close overdue orders");
                    break;
                }
            }
        }
    }
}

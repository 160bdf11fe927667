//! The one Redis pub/sub subscription of an instance, fanning notices out locally.
//!
//! Every instance subscribes once (not once per WebSocket or per request) and hands each
//! notice to whoever in this process cares: a restock notice clears the local sold-out
//! flag of that sale; an auction event goes to the watchers of that auction here.

use std::sync::Arc;

use backon::BackoffBuilder;
use futures::StreamExt;
use platform::RedisClient;
use platform::redis_conn::Notice;
use repo::cache::Keys;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::live::{Event, LiveHub};
use crate::sales::SoldOutFlags;

pub struct Listeners {
    pub sold_out: Arc<SoldOutFlags>,
    pub live: Arc<LiveHub>,
}

/// Subscribes until `stop`, reconnecting with a backoff. After every (re)subscription all
/// local flags are dropped, since notices sent while disconnected are lost.
pub async fn listen(client: RedisClient, keys: Keys, listeners: Listeners, stop: CancellationToken) {
    let restock = keys.sale_restock_channel();
    let channels = [restock.clone(), keys.auction_channel()];
    let mut delays = platform::connect::backoff().build();
    loop {
        let notices = tokio::select! {
            _ = stop.cancelled() => return,
            notices = client.subscribe(&channels) => notices,
        };
        match notices {
            Ok(mut notices) => {
                delays = platform::connect::backoff().build();
                loop {
                    let notice = tokio::select! {
                        _ = stop.cancelled() => return,
                        notice = notices.next() => notice,
                    };
                    match notice {
                        None => break,
                        Some(Notice::Subscribed) => listeners.sold_out.clear_all(),
                        Some(Notice::Message { channel, payload }) if channel == restock => {
                            if let Ok(sale_id) = payload.parse::<Uuid>() {
                                listeners.sold_out.clear(sale_id);
                            }
                        }
                        Some(Notice::Message { payload, .. }) => {
                            if let Some(event) = serde_json::from_str(&payload).ok().and_then(Event::decode) {
                                listeners.live.publish(event);
                            }
                        }
                    }
                }
                tracing::warn!("redis pub/sub connection lost; resubscribing");
            }
            Err(err) => {
                let delay = delays.next().unwrap_or(std::time::Duration::from_secs(5));
                tracing::warn!(error = %err, "cannot subscribe to redis; retrying in {delay:?}");
                if stop.run_until_cancelled(tokio::time::sleep(delay)).await.is_none() {
                    return;
                }
            }
        }
    }
}

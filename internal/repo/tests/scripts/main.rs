//! The auction rules live in the Lua scripts only; these tests run the scripts against a
//! real Redis (the test settings' `redis.url`, by default the shared local one). Each test
//! works under its own key prefix and removes its keys when it ends, also when it fails.
//!
//! To test a new rule, load a [`Lot`] in the state the rule starts from and drive it with
//! [`Lot::bid`] / [`Lot::place`] and [`Lot::close`].

mod buy_now;
mod close_auction;
mod place_bid;
mod proxy_bid;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use platform::{Redis, RedisClient, Settings};
use repo::cache::Keys;
use repo::cache::auctions::{self, Bid, BidRequest, BuyNow, Close, Live, Snapshot};
use uuid::Uuid;

/// Milliseconds since the epoch, as the scripts count them (Redis runs on this machine).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A lot that has been open for a minute and stays open for another, starting at 10.00
/// with steps of 1.00, no anti-sniping window, no reserve, no bid yet.
pub fn open_lot() -> Snapshot {
    let now = now_ms();
    Snapshot {
        start_ms: now - 60_000,
        end_ms: now + 60_000,
        price_cents: 0,
        leader: None,
        seq: 0,
        start_price_cents: 1_000,
        min_increment_cents: 100,
        window_ms: 0,
        extend_by_ms: 0,
        reserve_cents: 0,
        max_cents: 0,
        closed: None,
        generation: "g1".to_owned(),
    }
}

/// One auction's live state in Redis, under a prefix of its own.
pub struct Lot {
    pub id: Uuid,
    pub keys: Keys,
    pub redis: Redis,
    client: RedisClient,
}

impl Lot {
    /// A prefix and connection of its own, with nothing loaded yet.
    pub async fn empty() -> Lot {
        let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let vars: HashMap<String, String> = std::env::vars().collect();
        let settings = Settings::load_with(Some(&configs), Some("test"), &vars).expect("test settings load");
        let (client, redis) = platform::connect::redis(&settings.redis).await.expect("redis reachable");
        let keys = Keys::new(&format!("test:scripts:{}", Uuid::now_v7().simple()));
        Lot { id: Uuid::now_v7(), keys, redis, client }
    }

    /// A lot whose live state is `snapshot`, loaded the way a rebuild loads it.
    pub async fn load(snapshot: Snapshot) -> Lot {
        let mut lot = Lot::empty().await;
        let loaded = auctions::load(&mut lot.redis, &lot.keys, lot.id, &snapshot).await.unwrap();
        assert_eq!(loaded, snapshot.generation, "loaded");
        lot
    }

    /// A bid without an `Idempotency-Key`.
    pub async fn bid(&mut self, user: Uuid, amount_cents: i64) -> Bid {
        self.place(BidRequest {
            user_id: user,
            amount_cents,
            maximum: false,
            idempotency_key: None,
            idempotency_ttl_ms: 60_000,
        })
        .await
    }

    /// A maximum (proxy bid) without an `Idempotency-Key`.
    pub async fn max(&mut self, user: Uuid, amount_cents: i64) -> Bid {
        self.place(BidRequest {
            user_id: user,
            amount_cents,
            maximum: true,
            idempotency_key: None,
            idempotency_ttl_ms: 60_000,
        })
        .await
    }

    pub async fn place(&mut self, request: BidRequest<'_>) -> Bid {
        auctions::place_bid(&mut self.redis, &self.keys, self.id, request).await.unwrap()
    }

    pub async fn buy_now(&mut self, user: Uuid, price_cents: i64) -> BuyNow {
        auctions::buy_now(&mut self.redis, &self.keys, self.id, user, price_cents).await.unwrap()
    }

    pub async fn close(&mut self) -> Close {
        auctions::close(&mut self.redis, &self.keys, self.id).await.unwrap()
    }

    /// `undo_bid.lua` for generation `generation`, as the bid path runs it.
    pub async fn undo(&mut self, generation: &str, user: Uuid) -> bool {
        auctions::undo_bid(&mut self.redis, &self.keys, self.id, generation, user, None).await.unwrap()
    }

    pub async fn live(&mut self) -> Live {
        auctions::live(&mut self.redis, &self.keys, self.id).await.unwrap().expect("a live state")
    }
}

impl Drop for Lot {
    /// Removes every key under the lot's prefix; a plain connection, since this may run
    /// while a failed test unwinds.
    fn drop(&mut self) {
        let RedisClient::Single(client) = &self.client else { return };
        let Ok(mut conn) = client.get_connection() else { return };
        let pattern = format!("{}:*", self.keys.prefix());
        let keys: Vec<String> = match redis::Commands::scan_match(&mut conn, &pattern) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::Commands::del(&mut conn, keys);
        }
    }
}

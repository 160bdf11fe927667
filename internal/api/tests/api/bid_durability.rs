//! An accepted bid is never lost: a 201 bid is in Postgres before it is answered, a bid
//! that cannot be written is taken back (503), a flushed Redis is rebuilt with every
//! answered bid, and `verify --auction` notices when any of that is broken.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use repo::cache::auctions::{self as live, Bid, BidRequest};
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use crate::proxy::TcpProxy;
use crate::redis_server::PrivateRedis;

async fn auction(app: &TestApp, end_in_ms: i64) -> String {
    let admin = app.admin().await;
    let now = Utc::now();
    let body = json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00",
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::milliseconds(end_in_ms),
        "payment_timeout_secs": 300,
    });
    app.post("/api/v1/auctions", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned()
}

async fn bid(app: &TestApp, token: &str, auction: &str, amount: &str) -> crate::helpers::Reply {
    let request = app.client.post(app.url(&format!("/api/v1/auctions/{auction}/bids"))).bearer_auth(token);
    app.send(request.json(&json!({ "amount": amount }))).await
}

async fn verify(app: &TestApp, auction: &str) -> service::verify::Report {
    let deps = &app.services.deps;
    service::verify::auction(&deps.db, &deps.redis, &deps.keys(), auction.parse().unwrap()).await.unwrap()
}

/// Postgres's bids of the auction, by seq: (user id, amount).
async fn stored(app: &TestApp, auction: &str) -> Vec<(i64, String, Decimal)> {
    let sql = format!(
        "SELECT seq, user_id::text AS user_id, amount::text AS amount FROM bids WHERE auction_id = '{auction}' ORDER BY seq"
    );
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &app.db,
        sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql),
    );
    rows.await
        .unwrap()
        .iter()
        .map(|row| {
            let amount: String = row.try_get("", "amount").unwrap();
            (row.try_get("", "seq").unwrap(), row.try_get("", "user_id").unwrap(), amount.parse().unwrap())
        })
        .collect()
}

/// One 201: who, at which seq, for how much.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    seq: i64,
    user: String,
    amount: Decimal,
}

#[tokio::test]
async fn thirty_bidders_through_a_redis_flush_lose_no_accepted_bid() {
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(|s| s.redis.url = SecretString::from(redis.url.clone())).await;
    let lot = auction(&app, 3_600_000).await;
    let tokens = app.services.auth.create_shoppers(30, Duration::from_secs(600)).await.unwrap();
    let mut users = HashMap::new();
    for token in &tokens {
        let me = app.get("/api/v1/users/me", Some(token)).await;
        users.insert(token.clone(), me.data(200)["id"].as_str().unwrap().to_owned());
    }
    let flushed = Arc::new(AtomicBool::new(false));
    let bidder = |token: String| {
        let (app, lot, users, flushed) = (&app, &lot, &users, flushed.clone());
        async move {
            let mut accepted = Vec::new();
            // Bid on until the flush has happened and a few more rounds after it.
            let mut after_flush = 0;
            while after_flush < 10 {
                if flushed.load(Ordering::SeqCst) {
                    after_flush += 1;
                }
                let view = app.get(&format!("/api/v1/auctions/{lot}"), None).await;
                let minimum = view.data(200)["min_next_bid"].as_str().unwrap().to_owned();
                let reply = bid(app, &token, lot, &minimum).await;
                match (reply.status.as_u16(), reply.body["error"].as_str()) {
                    (201, _) => accepted.push(Accepted {
                        seq: reply.body["data"]["seq"].as_i64().unwrap(),
                        user: users[&token].clone(),
                        amount: reply.body["data"]["price"].as_str().unwrap().parse().unwrap(),
                    }),
                    (409, Some("BID_TOO_LOW")) | (503, Some("SERVICE_UNAVAILABLE")) => {}
                    (status, _) => panic!("unexpected {status}: {}", reply.body),
                }
            }
            accepted
        }
    };
    let bidders = futures::future::join_all(tokens.iter().cloned().map(bidder));
    let flush = async {
        let sql = format!("SELECT count(*) FROM bids WHERE auction_id = '{lot}'");
        app.eventually(60, "bids before the flush", || async { app.scalar(&sql).await >= 30 }).await;
        redis.forget_everything().await; // FLUSHALL + SCRIPT FLUSH, mid-auction
        flushed.store(true, Ordering::SeqCst);
        app.scalar(&sql).await
    };
    let (answers, before_flush) = tokio::join!(bidders, flush);
    let mut accepted: Vec<Accepted> = answers.into_iter().flatten().collect();
    accepted.sort_by_key(|a| a.seq);
    assert!(accepted.iter().any(|a| a.seq > before_flush + 5), "bids went on after the flush: {accepted:?}");

    let mut seqs: Vec<i64> = accepted.iter().map(|a| a.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), accepted.len(), "no seq was handed to two accepted bids");
    let rows = stored(&app, &lot).await;
    let by_seq: HashMap<i64, (String, Decimal)> = rows.iter().map(|(s, u, a)| (*s, (u.clone(), *a))).collect();
    for bid in &accepted {
        assert_eq!(by_seq.get(&bid.seq), Some(&(bid.user.clone(), bid.amount)), "accepted bid {bid:?} is in postgres");
    }
    for (index, window) in rows.windows(2).enumerate() {
        assert_eq!(window[0].0, index as i64 + 1, "no gaps");
        assert!(window[1].2 > window[0].2, "prices rise strictly at seq {}", window[1].0);
    }
    assert_eq!(rows.len(), accepted.len(), "postgres holds no bid that was not answered 201");
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_bid_that_cannot_be_written_is_undone_and_answered_503() {
    let postgres = TcpProxy::start("127.0.0.1:5432").await;
    let app = spawn_app_with(|s| {
        let url = s.database.url.expose_secret().replace("127.0.0.1:5432", &postgres.addr.to_string());
        s.database.url = SecretString::from(url);
    })
    .await;
    let lot = auction(&app, 3_600_000).await;
    let tokens = app.services.auth.create_shoppers(2, Duration::from_secs(600)).await.unwrap();
    assert_eq!(bid(&app, &tokens[0], &lot, "10.00").await.data(201)["seq"], 1);

    postgres.cut();
    let refused = bid(&app, &tokens[1], &lot, "11.00").await;
    refused.error(503, "SERVICE_UNAVAILABLE", None);
    let deps = &app.services.deps;
    let state = live::live(&mut deps.redis.clone(), &deps.keys(), lot.parse().unwrap()).await.unwrap();
    assert_eq!(state, None, "the unwritten bid is taken back with the live state it was in");

    postgres.restore();
    let again = bid(&app, &tokens[1], &lot, "11.00").await;
    assert_eq!(again.data(201)["seq"], 2, "the refused bid holds no seq");
    let rows = stored(&app, &lot).await;
    let amounts: Vec<(i64, Decimal)> = rows.iter().map(|(s, _, a)| (*s, *a)).collect();
    assert_eq!(amounts, [(1, Decimal::new(1000, 2)), (2, Decimal::new(1100, 2))]);
    let view = app.get(&format!("/api/v1/auctions/{lot}"), None).await;
    assert_eq!(
        (view.data(200)["current_price"].as_str(), view.data(200)["bid_count"].as_i64()),
        (Some("11.00"), Some(2))
    );
    assert!(verify(&app, &lot).await.passed());
}

#[tokio::test]
async fn the_close_never_names_a_bidder_whose_bid_was_not_written() {
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let lot = auction(&app, 2_000).await;
    let tokens = app.services.auth.create_shoppers(1, Duration::from_secs(600)).await.unwrap();
    let writer = app.get("/api/v1/users/me", Some(&tokens[0])).await.data(200)["id"].as_str().unwrap().to_owned();
    bid(&app, &tokens[0], &lot, "10.00").await.data(201);

    // A bid Redis accepted whose instance died before writing it (or answering anyone).
    let deps = &app.services.deps;
    let ghost = uuid::Uuid::now_v7();
    let request = BidRequest {
        user_id: ghost,
        amount_cents: 5_000,
        maximum: false,
        idempotency_key: None,
        idempotency_ttl_ms: 1_000,
    };
    let placed = live::place_bid(&mut deps.redis.clone(), &deps.keys(), lot.parse().unwrap(), request).await.unwrap();
    assert!(matches!(placed, Bid::Accepted(live::Accepted { seq: 2, .. })));

    let view = || async { app.get(&format!("/api/v1/auctions/{lot}"), None).await.data(200).clone() };
    app.eventually(20, "the auction closes", || async { view().await["status"] == "sold" }).await;
    let closed = view().await;
    assert_eq!(
        (closed["winner_id"].as_str(), closed["current_price"].as_str()),
        (Some(writer.as_str()), Some("10.00"))
    );
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn verify_fails_on_a_missing_bid_a_reused_seq_or_a_falling_price() {
    let app = spawn_app().await;
    let tokens = app.services.auth.create_shoppers(3, Duration::from_secs(600)).await.unwrap();
    let sql = |sql: String| {
        let db = app.db.clone();
        async move { sea_orm::ConnectionTrait::execute_unprepared(&db, &sql).await.unwrap() }
    };
    let mut lots = Vec::new();
    for _ in 0..3 {
        let lot = auction(&app, 3_600_000).await;
        for (token, amount) in tokens.iter().zip(["10.00", "11.00", "12.00"]) {
            bid(&app, token, &lot, amount).await.data(201);
        }
        assert!(verify(&app, &lot).await.passed(), "{}", verify(&app, &lot).await);
        lots.push(lot);
    }

    // A 201 bid missing from the history (a gap).
    sql(format!("DELETE FROM bids WHERE auction_id = '{}' AND seq = 2", lots[0])).await;
    // A seq handed out twice: Redis's bid at seq 3 is not the one Postgres kept.
    let deps = &app.services.deps;
    let state = deps.keys().auction(lots[1].parse().unwrap()).state;
    redis::cmd("HSET").arg(&state).arg("price").arg(1_250).exec_async(&mut deps.redis.clone()).await.unwrap();
    // A price going backwards.
    sql(format!("UPDATE bids SET amount = 10.50 WHERE auction_id = '{}' AND seq = 3", lots[2])).await;

    for (lot, broken) in lots.iter().zip(["seq has no gaps", "every bid redis accepted", "prices strictly rise"]) {
        let report = verify(&app, lot).await;
        assert!(!report.passed(), "{report}");
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.ok).map(|c| c.what.as_str()).collect();
        assert!(failed.iter().any(|what| what.starts_with(broken)), "{broken}: {report}");
    }
}

async fn first_message(app: &TestApp, lot: &str) -> Value {
    let url = format!("{}/api/v1/auctions/{lot}/live", app.address.replace("http", "ws"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("a message in time");
        if let Some(Ok(Message::Text(text))) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn auctions_sales_and_the_live_socket_tell_the_server_time() {
    let app = spawn_app().await;
    let lot = auction(&app, 3_600_000).await;
    let admin = app.admin().await;
    let product = app.product(&admin, "10.00", 5).await;
    let now = Utc::now();
    let body = json!({"product_id": product, "price": "5.00", "stock": 5, "start_at": now,
                      "end_at": now + chrono::Duration::hours(1), "payment_timeout_secs": 60});
    let sale = app.post("/api/v1/sales", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();

    let before = Utc::now() - chrono::Duration::seconds(1);
    let stamps = [
        app.get(&format!("/api/v1/auctions/{lot}"), None).await.data(200)["server_time"].clone(),
        app.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["server_time"].clone(),
        first_message(&app, &lot).await["server_time"].clone(),
    ];
    let after = Utc::now() + chrono::Duration::seconds(1);
    for stamp in stamps {
        let time: DateTime<Utc> = stamp.as_str().expect("server_time").parse().unwrap();
        assert!(before <= time && time <= after, "{time} is the server's now");
    }
}

#[tokio::test]
async fn postgres_takes_bids_only_in_order_and_only_from_the_current_generation() {
    use repo::db::auctions::{self as rows, Append, NewBid};
    let app = spawn_app().await;
    let lot: uuid::Uuid = auction(&app, 3_600_000).await.parse().unwrap();
    let tokens = app.services.auth.create_shoppers(1, Duration::from_secs(600)).await.unwrap();
    let user = app.get("/api/v1/users/me", Some(&tokens[0])).await.data(200)["id"].as_str().unwrap().parse().unwrap();
    let generation = rows::find(&app.db, lot).await.unwrap().unwrap().bid_generation;
    assert!(!generation.is_empty(), "creating the auction loaded its live state and named it");
    let new_bid = |seq: i64| NewBid {
        seq,
        user_id: user,
        amount: Decimal::new(1000 + seq * 100, 2),
        max_amount: Decimal::new(1000 + seq * 100, 2),
        auto: false,
        end_at: Utc::now() + chrono::Duration::hours(1),
        placed_at: Utc::now(),
    };
    let refused = |bid_count| Append::Refused { generation: generation.clone(), bid_count };

    assert_eq!(rows::append_bids(&app.db, lot, &generation, &[new_bid(2)]).await.unwrap(), refused(0), "a gap");
    assert_eq!(rows::append_bids(&app.db, lot, "old", &[new_bid(1)]).await.unwrap(), refused(0), "a lost state");
    assert_eq!(rows::append_bids(&app.db, lot, &generation, &[new_bid(1), new_bid(2)]).await.unwrap(), Append::Written);
    assert_eq!(rows::append_bids(&app.db, lot, &generation, &[new_bid(2)]).await.unwrap(), refused(2), "in already");
    let written: Vec<i64> = stored(&app, &lot.to_string()).await.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(written, [1, 2]);
}

/// Issue 14's "done": thirty robots, half of them leaving maximums, through a FLUSHALL. Every
/// 201 names a `seq` and a price; Postgres holds a bid at that `seq` with that amount (an
/// automatic raise included), the `seq`s have no gaps, and `verify` (proxy rule, leader
/// holding the highest maximum, nothing over a maximum) passes after the rebuild.
#[tokio::test]
async fn plain_and_proxy_bidders_through_a_redis_flush_lose_no_accepted_bid() {
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(|s| s.redis.url = SecretString::from(redis.url.clone())).await;
    let lot = auction(&app, 3_600_000).await;
    let tokens = app.services.auth.create_shoppers(30, Duration::from_secs(600)).await.unwrap();
    let flushed = Arc::new(AtomicBool::new(false));
    let bidder = |(index, token): (usize, String)| {
        let (app, lot, flushed) = (&app, &lot, flushed.clone());
        async move {
            let mut answered = Vec::new();
            let mut after_flush = 0;
            while after_flush < 10 {
                if flushed.load(Ordering::SeqCst) {
                    after_flush += 1;
                }
                let view = app.get(&format!("/api/v1/auctions/{lot}"), None).await;
                let minimum: Decimal = view.data(200)["min_next_bid"].as_str().unwrap().parse().unwrap();
                // The odd robots leave a maximum a few units over the minimum.
                let body = if index % 2 == 1 {
                    json!({ "max_amount": (minimum + Decimal::from(index % 5)).to_string() })
                } else {
                    json!({ "amount": minimum.to_string() })
                };
                let request = app.client.post(app.url(&format!("/api/v1/auctions/{lot}/bids"))).bearer_auth(&token);
                let reply = app.send(request.json(&body)).await;
                match (reply.status.as_u16(), reply.body["error"].as_str()) {
                    (201, _) => {
                        let data = &reply.body["data"];
                        let price: Decimal = data["price"].as_str().unwrap().parse().unwrap();
                        answered.push((data["seq"].as_i64().unwrap(), price));
                    }
                    (409, Some("BID_TOO_LOW" | "MAX_AMOUNT_LOWERED")) | (503, Some("SERVICE_UNAVAILABLE")) => {}
                    (status, _) => panic!("unexpected {status}: {}", reply.body),
                }
            }
            answered
        }
    };
    let bidders = futures::future::join_all(tokens.iter().cloned().enumerate().map(bidder));
    let flush = async {
        let sql = format!("SELECT count(*) FROM bids WHERE auction_id = '{lot}'");
        app.eventually(60, "bids before the flush", || async { app.scalar(&sql).await >= 30 }).await;
        redis.forget_everything().await;
        flushed.store(true, Ordering::SeqCst);
        app.scalar(&sql).await
    };
    let (answers, before_flush) = tokio::join!(bidders, flush);
    let answered: Vec<(i64, Decimal)> = answers.into_iter().flatten().collect();
    assert!(answered.iter().any(|(seq, _)| *seq > before_flush + 5), "bids went on after the flush");

    let rows = stored(&app, &lot).await;
    let automatic = format!("SELECT count(*) FROM bids WHERE auction_id = '{lot}' AND auto");
    assert!(app.scalar(&automatic).await > 0, "some maximums answered a bid");
    let by_seq: HashMap<i64, Decimal> = rows.iter().map(|(s, _, a)| (*s, *a)).collect();
    for (seq, price) in &answered {
        assert_eq!(by_seq.get(seq), Some(price), "the bid a 201 named (seq {seq}) is in postgres at that price");
    }
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row.0, index as i64 + 1, "no gaps");
    }
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

//! Live auctions end to end: the Lua bid swap, anti-sniping, the write-behind bid log, the
//! close to an order, the WebSocket fan-out across instances, and `verify`.

use std::time::Duration;

use api::Mode;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Reply, Session, TestApp, metric, spawn_app, spawn_app_with, spawn_sibling};
use crate::proxy::TcpProxy;

struct Lot {
    start_in_ms: i64,
    end_in_ms: i64,
    reserve: Option<&'static str>,
    window: i64,
    by: i64,
}

const OPEN_FOR_AN_HOUR: Lot = Lot { start_in_ms: -1000, end_in_ms: 3_600_000, reserve: None, window: 0, by: 0 };

async fn auction(app: &TestApp, admin: &Session, lot: Lot) -> String {
    let now = Utc::now();
    let body = json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00", "reserve_price": lot.reserve,
        "start_at": now + chrono::Duration::milliseconds(lot.start_in_ms),
        "end_at": now + chrono::Duration::milliseconds(lot.end_in_ms),
        "extend_window_secs": lot.window, "extend_by_secs": lot.by, "payment_timeout_secs": 300,
    });
    app.post("/api/v1/auctions", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned()
}

async fn bid(app: &TestApp, session: &Session, auction: &str, amount: &str) -> Reply {
    app.post(&format!("/api/v1/auctions/{auction}/bids"), json!({ "amount": amount }), session.token()).await
}

async fn state(app: &TestApp, auction: &str) -> Value {
    app.get(&format!("/api/v1/auctions/{auction}"), None).await.data(200).clone()
}

async fn verify(app: &TestApp, auction: &str) -> service::verify::Report {
    let deps = &app.services.deps;
    service::verify::auction(&deps.db, &deps.redis, &deps.keys(), auction.parse().unwrap()).await.unwrap()
}

async fn persisted(app: &TestApp, auction: &str, bids: i64) {
    let sql = format!("SELECT count(*) FROM bids WHERE auction_id = '{auction}'");
    app.eventually(20, "every accepted bid is persisted", || async { app.scalar(&sql).await == bids }).await;
}

#[tokio::test]
async fn the_first_bid_needs_the_start_price_and_an_equal_bid_is_too_low() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let lot = auction(&app, &admin, OPEN_FOR_AN_HOUR).await;
    assert_eq!(state(&app, &lot).await["min_next_bid"], "10.00");
    assert_eq!(state(&app, &lot).await["current_price"], Value::Null);

    let low = bid(&app, &ann, &lot, "9.99").await;
    assert_eq!(metric(r#"bids_total{outcome="too_low"}"#), 1.0);
    assert_eq!(low.error(409, "BID_TOO_LOW", None)["details"]["min_bid"], "10.00");
    let first = bid(&app, &ann, &lot, "10.00").await;
    assert_eq!(first.data(201)["price"], "10.00");
    assert_eq!(first.data(201)["seq"], 1);

    let equal = bid(&app, &bob, &lot, "10.00").await;
    let details = equal.error(409, "BID_TOO_LOW", None)["details"].clone();
    assert_eq!(details["current_price"], "10.00");
    assert_eq!(details["min_bid"], "11.00");
    assert_eq!(bid(&app, &bob, &lot, "11.00").await.data(201)["seq"], 2);

    let view = state(&app, &lot).await;
    assert_eq!(view["current_price"], "11.00");
    assert_eq!(view["leader_id"], bob.user_id.as_str());
    assert_eq!(view["bid_count"], 2);
    assert_eq!(view["status"], "live");
}

#[tokio::test]
async fn bad_auction_and_bid_input_names_the_field() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let now = Utc::now();
    let base = json!({"title": "Lot", "start_price": "10.00", "min_increment": "1.00", "start_at": now,
                      "end_at": now + chrono::Duration::hours(1), "payment_timeout_secs": 60});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("start_price", json!("0")), "start_price"),
        (with("min_increment", json!("0.001")), "min_increment"),
        (with("reserve_price", json!("-1")), "reserve_price"),
        (with("end_at", json!(now)), "end_at"),
        (with("extend_window_secs", json!(5)), "extend_by_secs"),
        (with("payment_timeout_secs", json!(0)), "payment_timeout_secs"),
        (with("title", json!("")), "title"),
    ] {
        let reply = app.post("/api/v1/auctions", body.clone(), admin.token()).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        reply.error(400, "INVALID_REQUEST", Some(field));
    }
    app.post("/api/v1/auctions", base.clone(), shopper.token()).await.error(403, "FORBIDDEN", None);
    let lot = app.post("/api/v1/auctions", base, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    for amount in [json!("abc"), json!("1.001"), json!("-5"), json!(12.5)] {
        let body = json!({ "amount": amount });
        let reply = app.post(&format!("/api/v1/auctions/{lot}/bids"), body, shopper.token()).await;
        reply.error(400, "INVALID_REQUEST", Some("amount"));
    }
    let missing = uuid::Uuid::now_v7();
    bid(&app, &shopper, &missing.to_string(), "20.00").await.error(404, "NOT_FOUND", None);
    bid(&app, &shopper, &lot, "20.00").await.data(201);
    assert_eq!(app.get(&format!("/api/v1/auctions/{missing}"), None).await.status, 404);
}

#[tokio::test]
async fn bids_are_refused_before_the_start_and_from_the_end() {
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let later = auction(&app, &admin, Lot { start_in_ms: 3_600_000, end_in_ms: 7_200_000, ..OPEN_FOR_AN_HOUR }).await;
    bid(&app, &shopper, &later, "10.00").await.error(409, "AUCTION_CLOSED", None);
    assert_eq!(state(&app, &later).await["status"], "scheduled");

    let soon = auction(&app, &admin, Lot { end_in_ms: 1500, ..OPEN_FOR_AN_HOUR }).await;
    bid(&app, &shopper, &soon, "10.00").await.data(201);
    // Until the end an equal bid is too low; from the end every bid is refused as closed.
    app.eventually(15, "the auction reaches its end", || async {
        let again = bid(&app, &shopper, &soon, "10.00").await;
        match again.body["error"].as_str() {
            Some("BID_TOO_LOW") => false,
            Some("AUCTION_CLOSED") => true,
            _ => panic!("unexpected answer: {}", again.body),
        }
    })
    .await;
    let late = bid(&app, &shopper, &soon, "20.00").await;
    assert_eq!(late.error(409, "AUCTION_CLOSED", None)["details"]["current_price"], "10.00");
}

#[tokio::test]
async fn a_bid_in_the_last_seconds_moves_the_end() {
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let lot = auction(&app, &admin, Lot { end_in_ms: 2000, window: 5, by: 3, ..OPEN_FOR_AN_HOUR }).await;
    let before: DateTime<Utc> = state(&app, &lot).await["end_at"].as_str().unwrap().parse().unwrap();
    let placed = bid(&app, &shopper, &lot, "10.00").await;
    let after: DateTime<Utc> = placed.data(201)["end_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((after - before).num_milliseconds(), 3000, "extended by extend_by_secs");
    assert_eq!(state(&app, &lot).await["end_at"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), after);

    // Past the original end the auction still takes bids, until the new end.
    let past_the_end = (before - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(past_the_end).await;
    assert!(Utc::now() > before);
    let sniped = bid(&app, &app.shopper().await, &lot, "11.00").await;
    let extended: DateTime<Utc> = sniped.data(201)["end_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((extended - after).num_milliseconds(), 3000);
}

#[tokio::test]
async fn the_winner_gets_an_order_when_the_auction_closes() {
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let admin = app.admin().await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let lot = auction(&app, &admin, Lot { end_in_ms: 2500, reserve: Some("11.00"), ..OPEN_FOR_AN_HOUR }).await;
    bid(&app, &ann, &lot, "10.00").await.data(201);
    bid(&app, &bob, &lot, "12.00").await.data(201);

    // Closed by the delayed auction.close message (the sweeper is off).
    app.eventually(15, "the auction is sold", || async { state(&app, &lot).await["status"] == "sold" }).await;
    let view = state(&app, &lot).await;
    assert_eq!(view["winner_id"], bob.user_id.as_str());
    let order_id = view["order_id"].as_str().expect("an order").to_owned();
    let order = app.get(&format!("/api/v1/orders/{order_id}"), bob.token()).await;
    let order = order.data(200);
    assert_eq!(
        (order["kind"].as_str(), order["status"].as_str(), order["total"].as_str()),
        (Some("auction"), Some("pending_payment"), Some("12.00"))
    );
    app.get(&format!("/api/v1/orders/{order_id}"), ann.token()).await.error(404, "NOT_FOUND", None);
    bid(&app, &ann, &lot, "20.00").await.error(409, "AUCTION_CLOSED", None);

    // Closing again (a redelivered message, the sweeper) changes nothing.
    app.services.auction_closer.close(lot.parse().unwrap()).await.unwrap();
    assert_eq!(app.scalar(&format!("SELECT count(*) FROM orders WHERE auction_id = '{lot}'")).await, 1);
    persisted(&app, &lot, 2).await;
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
    assert_eq!(metric(r#"auctions_closed_total{status="sold"}"#), 1.0, "closed once");
    assert_eq!(metric(r#"bids_total{outcome="accepted"}"#), 2.0);
    assert_eq!(metric(r#"bids_total{outcome="closed"}"#), 1.0);
}

#[tokio::test]
async fn an_auction_below_its_reserve_or_without_bids_stays_unsold() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let reserved = auction(&app, &admin, Lot { end_in_ms: 1500, reserve: Some("50.00"), ..OPEN_FOR_AN_HOUR }).await;
    let quiet = auction(&app, &admin, Lot { end_in_ms: 1500, ..OPEN_FOR_AN_HOUR }).await;
    bid(&app, &shopper, &reserved, "20.00").await.data(201);
    // verify counts a bid still on its way to Postgres (in the broker) as lost: wait for it.
    persisted(&app, &reserved, 1).await;
    for lot in [&reserved, &quiet] {
        app.eventually(15, "the auction closes", || async { state(&app, lot).await["status"] == "unsold" }).await;
        assert_eq!(state(&app, lot).await["order_id"], Value::Null);
        let report = verify(&app, lot).await;
        assert!(report.passed(), "{report}");
    }
    assert_eq!(metric(r#"auctions_closed_total{status="unsold"}"#), 2.0);
}

#[tokio::test]
async fn many_bidders_leave_a_strictly_rising_gapless_history() {
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let admin = app.admin().await;
    let lot = auction(&app, &admin, Lot { end_in_ms: 8000, ..OPEN_FOR_AN_HOUR }).await;
    let tokens = app.services.auth.create_shoppers(25, Duration::from_secs(600)).await.unwrap();
    let bidder = |token: String| {
        let app = &app;
        let lot = &lot;
        async move {
            let mut accepted = 0;
            for _ in 0..8 {
                let minimum = state(app, lot).await["min_next_bid"].as_str().unwrap().to_owned();
                let request = app
                    .client
                    .post(app.url(&format!("/api/v1/auctions/{lot}/bids")))
                    .bearer_auth(&token)
                    .json(&json!({ "amount": minimum }));
                let reply = app.send(request).await;
                match (reply.status.as_u16(), reply.body["error"].as_str()) {
                    (201, _) => accepted += 1,
                    (409, Some("BID_TOO_LOW")) => {}
                    (409, Some("AUCTION_CLOSED")) => break, // a slow machine: the lot ended first
                    (status, _) => panic!("unexpected {status}: {}", reply.body),
                }
            }
            accepted
        }
    };
    let accepted: i64 = futures::future::join_all(tokens.into_iter().map(bidder)).await.into_iter().sum();
    assert!(accepted > 0);
    assert_eq!(state(&app, &lot).await["bid_count"], accepted);
    persisted(&app, &lot, accepted).await;

    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &app.db,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT seq, amount::text AS amount FROM bids WHERE auction_id = '{lot}' ORDER BY seq"),
        ),
    );
    let rows = rows.await.unwrap();
    let mut previous = rust_decimal::Decimal::ZERO;
    for (index, row) in rows.iter().enumerate() {
        let seq: i64 = row.try_get("", "seq").unwrap();
        let amount: rust_decimal::Decimal = row.try_get::<String>("", "amount").unwrap().parse().unwrap();
        assert_eq!(seq, index as i64 + 1, "no gaps");
        assert!(amount > previous, "strictly rising at seq {seq}");
        previous = amount;
    }
    app.eventually(20, "the auction closes", || async { state(&app, &lot).await["status"] == "sold" }).await;
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn bids_do_not_wait_for_the_broker() {
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let app =
        spawn_app_with(|s| s.amqp.url = SecretString::from(format!("amqp://guest:guest@{}/%2f", rabbit.addr))).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let lot = auction(&app, &admin, OPEN_FOR_AN_HOUR).await;
    bid(&app, &shopper, &lot, "10.00").await.data(201);
    persisted(&app, &lot, 1).await;

    rabbit.cut();
    for amount in ["11.00", "12.00", "13.00", "14.00", "15.00"] {
        bid(&app, &shopper, &lot, amount).await.data(201);
    }
    let sql = format!("SELECT count(*) FROM bids WHERE auction_id = '{lot}'");
    assert_eq!(app.scalar(&sql).await, 6, "a 201 bid is in Postgres already, broker or not");

    rabbit.restore();
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

async fn next_message(
    socket: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("a message in time");
        if let Some(Ok(Message::Text(text))) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn a_watcher_on_one_instance_sees_bids_placed_on_another() {
    let a = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let b = spawn_sibling(&a, Mode::Api, |_| {}).await;
    let admin = a.admin().await;
    let shopper = a.shopper().await;
    let lot = auction(&a, &admin, Lot { end_in_ms: 3000, ..OPEN_FOR_AN_HOUR }).await;
    bid(&a, &shopper, &lot, "10.00").await.data(201);

    let url = format!("{}/api/v1/auctions/{lot}/live", b.address.replace("http", "ws"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let first = next_message(&mut socket).await;
    assert_eq!(first["type"], "state");
    assert_eq!(metric("websocket_connections"), 1.0);
    assert_eq!(first["current_price"], "10.00");
    assert_eq!(first["seq"], 1);

    let placed = bid(&a, &a.shopper().await, &lot, "15.00").await;
    let event = next_message(&mut socket).await;
    assert_eq!(event["type"], "bid");
    assert_eq!(event["price"], "15.00");
    assert_eq!(event["seq"], 2);
    assert_eq!(event["min_next_bid"], "16.00");
    assert_eq!(event["end_at"], placed.data(201)["end_at"]);

    let closed = next_message(&mut socket).await;
    assert_eq!(closed["type"], "closed");
    assert_eq!(closed["status"], "sold");
    assert_eq!(closed["price"], "15.00");
    // Nothing more will come: the server ends the connection.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("the server closes") {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => panic!("a message after closed: {other:?}"),
        }
    }
    a.eventually(10, "the connection gauge drops", || async { metric("websocket_connections") == 0.0 }).await;
}

#[tokio::test]
async fn an_idempotency_key_repeats_the_same_bid() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let lot = auction(&app, &admin, OPEN_FOR_AN_HOUR).await;
    let send = || {
        let request = app
            .client
            .post(app.url(&format!("/api/v1/auctions/{lot}/bids")))
            .bearer_auth(&shopper.access)
            .header("Idempotency-Key", "bid-1")
            .json(&json!({"amount": "10.00"}));
        app.send(request)
    };
    let first = send().await.data(201).clone();
    let again = send().await.data(201).clone();
    assert_eq!(first, again);
    assert_eq!(state(&app, &lot).await["bid_count"], 1);
}

#[tokio::test]
async fn the_bid_history_and_the_current_list_come_from_postgres() {
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let admin = app.admin().await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let lot = auction(&app, &admin, OPEN_FOR_AN_HOUR).await;
    let ended = auction(&app, &admin, Lot { end_in_ms: 500, ..OPEN_FOR_AN_HOUR }).await;
    app.services.auction_closer.close(ended.parse().unwrap()).await.unwrap();
    app.eventually(15, "the short auction ends", || async { state(&app, &ended).await["status"] == "unsold" }).await;
    for (who, amount) in [(&ann, "10.00"), (&bob, "11.00"), (&ann, "13.50")] {
        bid(&app, who, &lot, amount).await.data(201);
    }
    persisted(&app, &lot, 3).await;

    let page = app.get(&format!("/api/v1/auctions/{lot}/bids?page_size=2"), None).await;
    let data = page.data(200);
    assert_eq!((data["total"].as_i64(), data["page_size"].as_i64()), (Some(3), Some(2)));
    let newest: Vec<(i64, &str, &str)> = data["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["seq"].as_i64().unwrap(), b["amount"].as_str().unwrap(), b["user_id"].as_str().unwrap()))
        .collect();
    assert_eq!(newest, [(3, "13.50", ann.user_id.as_str()), (2, "11.00", bob.user_id.as_str())], "newest first");
    let oldest = app.get(&format!("/api/v1/auctions/{lot}/bids?page_size=2&page=2"), None).await;
    assert_eq!(oldest.data(200)["items"][0]["seq"], 1);
    let missing = uuid::Uuid::now_v7();
    app.get(&format!("/api/v1/auctions/{missing}/bids"), None).await.error(404, "NOT_FOUND", None);
    app.get(&format!("/api/v1/auctions/{lot}/bids?page_size=101"), None).await.error(
        400,
        "INVALID_REQUEST",
        Some("page_size"),
    );

    let ids = |reply: &Reply| -> Vec<String> {
        reply.data(200)["items"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect()
    };
    let all = app.get("/api/v1/auctions", None).await;
    assert_eq!(all.data(200)["total"], 2);
    let current = app.get("/api/v1/auctions?current=true", None).await;
    assert_eq!(ids(&current), [lot.as_str()], "only the open auction");
    assert_eq!(current.data(200)["items"][0]["status"], "live");
}

#[tokio::test]
async fn verify_fails_on_a_corrupted_auction() {
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 600.try_into().unwrap()).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let lot = auction(&app, &admin, OPEN_FOR_AN_HOUR).await;
    for amount in ["10.00", "11.00", "12.00"] {
        bid(&app, &shopper, &lot, amount).await.data(201);
    }
    persisted(&app, &lot, 3).await;
    assert!(verify(&app, &lot).await.passed(), "{}", verify(&app, &lot).await);
    let db = &app.db;
    let sql = |statement: String| async move {
        sea_orm::ConnectionTrait::execute_unprepared(db, &statement).await.unwrap();
    };

    // A price that does not rise.
    sql(format!("UPDATE bids SET amount = 9.00 WHERE auction_id = '{lot}' AND seq = 2")).await;
    let report = verify(&app, &lot).await;
    assert!(!report.passed(), "{report}");
    assert!(report.to_string().contains("INVARIANTS VIOLATED"), "{report}");
    sql(format!("UPDATE bids SET amount = 11.00 WHERE auction_id = '{lot}' AND seq = 2")).await;
    assert!(verify(&app, &lot).await.passed());

    // A lost bid: a gap in seq, and Redis accepted more than Postgres holds.
    sql(format!("DELETE FROM bids WHERE auction_id = '{lot}' AND seq = 2")).await;
    let report = verify(&app, &lot).await;
    assert!(!report.passed(), "{report}");
}

#[tokio::test]
async fn the_live_socket_pings_a_watcher_and_drops_a_silent_one() {
    let app = spawn_app_with(|s| {
        s.http.ws_ping_ms = 100.try_into().unwrap();
        s.http.ws_idle_ms = 400.try_into().unwrap();
    })
    .await;
    let admin = app.admin().await;
    let lot = auction(&app, &admin, OPEN_FOR_AN_HOUR).await;
    let url = format!("{}/api/v1/auctions/{lot}/live", app.address.replace("http", "ws"));

    // A watcher that keeps reading answers every ping (the client sends the pong), so it
    // outlives the idle limit many times over.
    let (mut live, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    assert_eq!(next_message(&mut live).await["type"], "state");
    let mut pings = 0;
    while pings < 20 {
        match tokio::time::timeout(Duration::from_secs(10), live.next()).await.expect("a ping in time") {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("the connection stays open and pings: {other:?}"),
        }
    }
    drop(live);
    app.eventually(10, "the closed socket is gone", || async { metric("websocket_connections") == 0.0 }).await;

    // One that stops reading sends no pong: the server drops it.
    let (mut silent, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    assert_eq!(next_message(&mut silent).await["type"], "state");
    assert_eq!(metric("websocket_connections"), 1.0);
    app.eventually(30, "the silent watcher is dropped", || async { metric("websocket_connections") == 0.0 }).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), silent.next()).await.expect("the end in time") {
            Some(Ok(Message::Ping(_))) => {}
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
}

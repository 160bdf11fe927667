//! Every reservation ends as an order or a release: whatever happens to the request that
//! made it, to the API process, or to Redis's memory of claims, undos and keys.

use std::collections::HashMap;

use api::Mode;
use repo::cache::sales::{self as hot, Held};
use repo::mq::messages::ReservationBatch;
use serde_json::json;
use uuid::Uuid;

use crate::faults::{reserve_directly, reserve_with_deadline, through, verify_sale};
use crate::helpers::{Reply, Session, TestApp, spawn_app, spawn_app_with, spawn_sibling};
use crate::proxy::TcpProxy;
use crate::sales::{buy, confirmed, sale};

async fn remaining(app: &TestApp, sale: &str) -> serde_json::Value {
    app.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["remaining"].clone()
}

/// The ids in the sale's `inflight` hash (without the load's placeholder).
async fn in_flight(app: &TestApp, sale: &str) -> Vec<String> {
    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = app.services.deps.redis.clone();
    let entries: HashMap<String, String> =
        redis::cmd("HGETALL").arg(&keys.inflight).query_async(&mut redis).await.unwrap();
    entries.into_keys().filter(|id| id != "_").collect()
}

/// Deletes every Redis key of the sale (its Idempotency-Keys too), as a FLUSHALL would;
/// only this test's keys.
async fn forget_sale(app: &TestApp, sale: &str) {
    let pattern = format!("{}:{{sale:{sale}}}:*", app.settings.redis.prefix);
    let mut redis = app.services.deps.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut redis).await.unwrap();
    assert!(!keys.is_empty(), "{pattern}");
    redis::cmd("DEL").arg(&keys).query_async::<()>(&mut redis).await.unwrap();
}

fn id_of(delivery: &repo::mq::Delivery) -> Uuid {
    serde_json::from_slice::<ReservationBatch>(&delivery.body).unwrap().reservations[0].id
}

fn held(buyer: &Session, id: Uuid) -> Held {
    Held { reservation_id: id, user_id: buyer.user_id.parse().unwrap(), quantity: 1 }
}

#[tokio::test]
async fn a_purchase_whose_request_is_dropped_after_the_reservation_is_still_undone() {
    let first = spawn_app().await;
    let admin = first.admin().await;
    let sale = sale(&first, &admin, 5, 1, 300).await;
    let (opener, buyer) = (first.shopper().await, first.shopper().await);
    // An API with nothing consuming behind it, and no reaper: only the purchase itself can
    // finish its reservation.
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let api = spawn_sibling(&first, Mode::Api, |s| {
        s.amqp.url = through(&s.amqp.url, rabbit.addr);
        s.amqp.publishers = 1.try_into().unwrap();
        // The server drops the request long before the confirm wait ends, as it would for
        // a client that went away.
        s.http.request_timeout_ms = 1000.try_into().unwrap();
    })
    .await;
    first.shutdown().await.unwrap();
    // Opens the publisher's channel while the broker still answers (through the service:
    // the short request timeout is for the purchase below).
    let opener = service::Caller { user_id: opener.user_id.parse().unwrap(), role: domain::user::Role::User };
    let (sale_id, one) = (sale.parse().unwrap(), domain::order::Quantity::parse(1).unwrap());
    api.services.sales.purchase(&opener, sale_id, one, None).await.unwrap();

    rabbit.mute_replies();
    let reply = buy(&api, &buyer, &sale, 1).await;
    assert_ne!(reply.status.as_u16(), 202, "{}", reply.body);
    let keys = api.services.deps.keys().sale(sale_id);
    let redis = api.services.deps.redis.clone();
    let remaining = async || hot::remaining(&mut redis.clone(), &keys).await.unwrap();
    api.eventually(10, "the dropped purchase's reservation is undone", || async { remaining().await == Some(4) }).await;
    let undone = format!(
        "SELECT count(*) FROM reservations WHERE user_id = '{}' AND reason = 'broker_unavailable'",
        buyer.user_id
    );
    assert_eq!(api.scalar(&undone).await, 1, "the undo is recorded");
    assert_eq!(in_flight(&api, &sale).await.len(), 1, "only the first purchase is in flight");
    rabbit.cut();
}

#[tokio::test]
async fn a_reservation_its_api_never_finished_is_reaped_at_its_deadline_but_a_published_one_is_kept() {
    // `serve`: the worker's reaper runs in this process.
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = sale(&app, &admin, 5, 1, 300).await;
    let (kept_buyer, orphan_buyer) = (app.shopper().await, app.shopper().await);
    // Confirmed by the broker (its message waits in the queue, e.g. while Postgres is down):
    // it must never be undone, even long past its deadline.
    let deadline = app.settings.sales.reservation_deadline_ms.get();
    let kept = id_of(&reserve_with_deadline(&app, &sale, &kept_buyer, 1, deadline, None).await);
    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let marked = hot::mark_published(&mut app.services.deps.redis.clone(), &keys, &[kept]).await.unwrap();
    assert_eq!(marked, [true]);
    // Reserved by an API that died before publishing; its deadline comes after the kept one's.
    let orphan = id_of(&reserve_with_deadline(&app, &sale, &orphan_buyer, 1, deadline, Some("buy-once")).await);
    assert_eq!(remaining(&app, &sale).await, 3);

    app.eventually(20, "the orphan is reaped", || async { remaining(&app, &sale).await == 4 }).await;
    assert_eq!(in_flight(&app, &sale).await, [kept.to_string()], "the published one is kept");
    let status = app.get(&format!("/api/v1/reservations/{orphan}"), orphan_buyer.token()).await;
    assert_eq!(status.data(200)["status"], "failed");
    assert_eq!(status.data(200)["reason"], "broker_unavailable");
    // The buyer's only slot is free again, and the retry with the same key is a new
    // reservation, not the dead one.
    let retry = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(&orphan_buyer.access)
        .header("Idempotency-Key", "buy-once")
        .json(&json!({ "quantity": 1 }));
    let id = app.send(retry).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    assert_ne!(id, orphan.to_string());
    assert_eq!(confirmed(&app, &orphan_buyer, &id).await["status"], "confirmed");
}

#[tokio::test]
async fn the_claim_and_the_undo_still_exclude_each_other_after_redis_forgot_them() {
    // The reaper stays out of it: the test plays the API's undo itself.
    let app = spawn_app_with(|s| s.sales.reservation_deadline_ms = 600_000.try_into().unwrap()).await;
    let admin = app.admin().await;
    let sale = sale(&app, &admin, 5, 1, 300).await;
    let sale_id = sale.parse().unwrap();
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let consumer = &app.services.order_consumer;
    let rebuild = async || {
        forget_sale(&app, &sale).await;
        // Straight from Postgres: nothing else is in flight, so no rebuild barrier to pass.
        app.services.sales.load_hot_state(sale_id).await.unwrap();
    };

    // Ann's message reached the consumer and became an order; then Redis lost the sale; then
    // the API's confirm wait ran out. The undo must find the order: 202, not 503.
    let ann_copy = reserve_directly(&app, &sale, &ann, 1).await;
    assert!(matches!(consumer.handle(vec![ann_copy.clone()]).await[..], [repo::mq::Outcome::Ack]));
    rebuild().await;
    let undone = app.services.undo.reservation(sale_id, held(&ann, id_of(&ann_copy))).await.unwrap();
    assert!(!undone, "an order is never undone");
    assert_eq!(remaining(&app, &sale).await, 4);

    // Bob's reservation was undone (503); then Redis lost the sale; then his message, which
    // the broker stored after all, arrives. It must not become an order.
    let bob_copy = reserve_directly(&app, &sale, &bob, 1).await;
    assert!(app.services.undo.reservation(sale_id, held(&bob, id_of(&bob_copy))).await.unwrap());
    assert_eq!(remaining(&app, &sale).await, 4);
    rebuild().await;
    assert!(matches!(consumer.handle(vec![bob_copy]).await[..], [repo::mq::Outcome::Ack]));
    let bobs = format!("SELECT count(*) FROM orders WHERE user_id = '{}'", bob.user_id);
    assert_eq!(app.scalar(&bobs).await, 0, "no order for an undone reservation");
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 1);
    assert_eq!(remaining(&app, &sale).await, 4);
    let report = verify_sale(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_purchase_key_replays_its_reservation_after_redis_forgot_it_and_refuses_another_quantity() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = sale(&app, &admin, 5, 2, 300).await;
    let buyer = app.shopper().await;
    let send = |quantity: i64| {
        let request = app
            .client
            .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
            .bearer_auth(&buyer.access)
            .header("Idempotency-Key", "buy-once")
            .json(&json!({ "quantity": quantity }));
        app.send(request)
    };
    let id_of = |reply: Reply| reply.data(202)["reservation_id"].as_str().unwrap().to_owned();

    let id = id_of(send(1).await);
    send(2).await.error(409, "IDEMPOTENCY_KEY_REUSED", None);
    assert_eq!(confirmed(&app, &buyer, &id).await["status"], "confirmed");

    forget_sale(&app, &sale).await;
    // The sale is held (503) until its rebuild barrier passed.
    let mut replay = send(1).await;
    for _ in 0..300 {
        if replay.status != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        replay = send(1).await;
    }
    assert_eq!(id_of(replay), id, "the same reservation, not a second one");
    send(2).await.error(409, "IDEMPOTENCY_KEY_REUSED", None);
    let orders = format!("SELECT count(*) FROM orders WHERE user_id = '{}'", buyer.user_id);
    assert_eq!(app.scalar(&orders).await, 1);
    assert_eq!(remaining(&app, &sale).await, 4);
}

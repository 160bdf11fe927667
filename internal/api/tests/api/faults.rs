//! Faults: what happens to accepted work while a dependency is down, cut or stalled.
//! Every fault is injected through a private proxy or a private server; the shared
//! services stay untouched.

use std::net::SocketAddr;
use std::time::Duration;

use api::Mode;
use chrono::Utc;
use repo::mq::Route;
use repo::mq::topology::{ORDER_CLOSE, SALE_RESERVE, SALE_RESTOCK};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::helpers::{Session, TestApp, spawn_app, spawn_app_with, spawn_sibling};
use crate::proxy::TcpProxy;

/// `url` with its `host:port` replaced by `proxy`.
pub(crate) fn through(url: &SecretString, proxy: SocketAddr) -> SecretString {
    let url = url.expose_secret();
    SecretString::from(url.replacen(&platform::connect::address_of(url), &proxy.to_string(), 1))
}

/// The `host:port` of the Postgres the tests use, for a proxy in front of it.
pub(crate) fn postgres_address() -> String {
    platform::connect::address_of(crate::helpers::test_settings().database.url.expose_secret())
}

/// An active sale of `stock` units, at most one per buyer, whose orders wait an hour.
async fn flash_sale(app: &TestApp, admin: &Session, stock: i64) -> String {
    flash_sale_limited(app, admin, stock, 1).await
}

async fn flash_sale_limited(app: &TestApp, admin: &Session, stock: i64, per_user_limit: i64) -> String {
    let product = app.product(admin, "100.00", stock).await;
    let now = Utc::now();
    let body = json!({
        "product_id": product, "price": "9.99", "stock": stock,
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::hours(1),
        "per_user_limit": per_user_limit, "payment_timeout_secs": 3600,
    });
    app.post("/api/v1/sales", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned()
}

async fn dead_letters(app: &TestApp, route: Route) -> usize {
    let deps = &app.services.deps;
    service::dead_letters::list(&deps.broker, &deps.topology(), route, 100).await.unwrap().len()
}

#[tokio::test]
async fn a_postgres_outage_longer_than_the_retry_budget_loses_no_purchase_or_close() {
    let postgres = TcpProxy::start(&postgres_address()).await;
    let app = spawn_app_with(|s| {
        s.database.url = through(&s.database.url, postgres.addr);
        s.database.acquire_timeout_secs = 1;
        s.database.connect_timeout_secs = 1;
        s.orders.payment_timeout_secs = 1.try_into().unwrap();
    })
    .await;
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 10).await;
    let mut shoppers = Vec::new();
    for _ in 0..4 {
        shoppers.push(app.shopper().await);
    }
    // An unpaid order whose close message is on its way: it arrives during the outage.
    let product = app.product(&admin, "5.00", 3).await;
    let order = app.order(&shoppers[0], &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned();
    app.eventually(10, "the close message left the outbox", || async {
        app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0
    })
    .await;
    // (Bids are written to Postgres before their 201: during an outage they are answered
    // 503, see bid_durability.rs.)
    postgres.cut();
    let mut reservations = Vec::new();
    for shopper in &shoppers {
        let reply = app.post(&format!("/api/v1/sales/{sale}/purchase"), json!({}), shopper.token()).await;
        reservations.push(reply.data(202)["reservation_id"].as_str().unwrap().to_owned());
    }
    // Every attempt the consumers have (one per retry delay, plus the first) fails within
    // the pool's acquire timeout; the outage lasts well beyond all of them.
    let settings = &app.settings;
    let attempts = settings.amqp.retry_delays_ms.len() as u64 + 1;
    let budget = settings.amqp.retry_delays_ms.iter().sum::<u64>() + attempts * 1000;
    tokio::time::sleep(Duration::from_millis(2 * budget)).await;
    postgres.restore();

    for (shopper, id) in shoppers.iter().zip(&reservations) {
        app.eventually(20, "the reservation became an order", || async {
            let reply = app.get(&format!("/api/v1/reservations/{id}"), shopper.token()).await;
            let status = reply.data(200)["status"].as_str().unwrap().to_owned();
            assert_ne!(status, "failed", "{}", reply.body);
            status == "confirmed"
        })
        .await;
    }
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 4);
    assert_eq!(app.scalar("SELECT count(*) FROM reservations WHERE status = 'failed'").await, 0);
    app.eventually(10, "the unpaid order is closed", || async {
        app.order_status(&shoppers[0], &order).await == "closed"
    })
    .await;
    assert_eq!(dead_letters(&app, SALE_RESERVE).await, 0, "no reservation was dead-lettered");
    assert_eq!(dead_letters(&app, ORDER_CLOSE).await, 0, "no close message was dead-lettered");
}

#[tokio::test]
async fn shutdown_is_bounded_while_rabbitmq_and_postgres_are_stalled() {
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let postgres = TcpProxy::start(&postgres_address()).await;
    let app = spawn_app_with(|s| {
        s.amqp.url = through(&s.amqp.url, rabbit.addr);
        s.database.url = through(&s.database.url, postgres.addr);
        s.http.shutdown_grace_secs = 1;
    })
    .await;
    // Work in every part of the pipeline first, so that channels and connections are in use.
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 5).await;
    let shopper = app.shopper().await;
    let reply = app.post(&format!("/api/v1/sales/{sale}/purchase"), json!({}), shopper.token()).await;
    let id = reply.data(202)["reservation_id"].as_str().unwrap().to_owned();
    app.eventually(10, "the reservation became an order", || async {
        app.get(&format!("/api/v1/reservations/{id}"), shopper.token()).await.data(200)["status"] == "confirmed"
    })
    .await;

    rabbit.stall();
    postgres.stall();
    let grace = Duration::from_secs(app.settings.http.shutdown_grace_secs);
    // Generous on purpose: the point is that it ends at all while nothing answers.
    let bound = grace + Duration::from_secs(15);
    let stopped = tokio::time::timeout(bound, app.shutdown()).await;
    rabbit.cut();
    postgres.cut();
    stopped.expect("shutdown ended although RabbitMQ and Postgres never answer").unwrap();
}

#[tokio::test]
async fn queues_a_running_process_publishes_to_outlive_a_tiny_expiry() {
    let expires = Duration::from_millis(1000);
    let app = spawn_app_with(|s| {
        s.amqp.queue_expires_ms = expires.as_millis() as u64;
        s.orders.payment_timeout_secs = 1.try_into().unwrap();
        // Only the delay queue may close these orders.
        s.orders.sweep_interval_secs = 3600.try_into().unwrap();
    })
    .await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "5.00", 5).await;
    let unpaid = || async { app.order(&shopper, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned() };
    let first = unpaid().await;
    app.eventually(10, "the first order closes", || async { app.order_status(&shopper, &first).await == "closed" })
        .await;

    // Long enough for every queue this process declared at start, and the delay queue it
    // declared for the first order, to expire unless it is declared again.
    tokio::time::sleep(expires * 4).await;
    let second = unpaid().await;
    app.eventually(10, "the second order closes", || async { app.order_status(&shopper, &second).await == "closed" })
        .await;

    // A message that keeps failing for its own reason (a restock whose sale state in Redis
    // is not a hash: every attempt meets WRONGTYPE) goes through every retry queue and lands
    // in the dead-letter queue.
    let deps = &app.services.deps;
    let sale_id = uuid::Uuid::now_v7();
    let _: () = redis::cmd("SET")
        .arg(deps.keys().sale(sale_id).state)
        .arg("not a hash")
        .query_async(&mut deps.redis.clone())
        .await
        .unwrap();
    let batch = repo::mq::messages::SaleRestock {
        sale_id,
        version: 1,
        returns: vec![repo::mq::messages::ReturnedUnits {
            order_id: uuid::Uuid::now_v7(),
            user_id: uuid::Uuid::now_v7(),
            quantity: 1,
        }],
        buckets: 1,
    };
    let message = repo::mq::Message {
        exchange: deps.topology().exchange(),
        routing_key: SALE_RESTOCK.key.into(),
        body: serde_json::to_vec(&batch).unwrap(),
        mandatory: true,
        ..Default::default()
    };
    let publisher = repo::mq::ConfirmPublisher::new(deps.broker.clone(), Duration::from_secs(2));
    publisher.publish_all(&[message]).await.unwrap();
    publisher.close().await;
    app.eventually(15, "the failing message reaches the dead-letter queue", || async {
        dead_letters(&app, SALE_RESTOCK).await == 1
    })
    .await;
}

pub(crate) async fn verify_sale(app: &TestApp, sale: &str) -> service::verify::Report {
    let deps = &app.services.deps;
    service::verify::sale(&deps.db, &deps.redis, &deps.keys(), sale.parse().unwrap()).await.unwrap()
}

/// Asserts that exactly one check of `report` failed, and that it says `what`.
fn fails_only_on(report: &service::verify::Report, what: &str) {
    let failed: Vec<&str> = report.checks.iter().filter(|c| !c.ok).map(|c| c.what.as_str()).collect();
    assert!(matches!(failed[..], [only] if only.contains(what)), "expected one failure about {what:?}: {report}");
}

/// A corruption several checks see (an auction's order is also its winner's and the lot's).
fn fails_among_others_on(report: &service::verify::Report, what: &str) {
    let failed = report.checks.iter().filter(|c| !c.ok).any(|c| c.what.contains(what));
    assert!(failed, "expected a failure about {what:?}: {report}");
}

#[tokio::test]
async fn verify_fails_on_a_stuck_reservation() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 5).await;
    let buyer = app.shopper().await;
    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = app.services.deps.redis.clone();
    // A reservation as the Lua script makes it (unit and slot taken, id in flight), whose
    // message no consumer will ever see.
    let hold = |id: uuid::Uuid| {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg(&keys.inflight).arg(id.to_string()).arg(format!("{} 1", buyer.user_id));
        pipe.cmd("HINCRBY").arg(&keys.state).arg("stock").arg(-1);
        pipe.cmd("HINCRBY").arg(&keys.buyers).arg(&buyer.user_id).arg(1);
        pipe
    };
    let now = uuid::Uuid::now_v7();
    hold(now).query_async::<()>(&mut redis).await.unwrap();
    let report = verify_sale(&app, &sale).await;
    assert!(report.passed(), "a reservation made just now is in flight, not stuck: {report}");

    redis::cmd("HDEL").arg(&keys.inflight).arg(now.to_string()).query_async::<()>(&mut redis).await.unwrap();
    let an_hour_ago = Utc::now().timestamp() as u64 - 3600;
    let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, an_hour_ago, 0));
    redis::cmd("HSET")
        .arg(&keys.inflight)
        .arg(old.to_string())
        .arg(format!("{} 1", buyer.user_id))
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let report = verify_sale(&app, &sale).await;
    fails_only_on(&report, "1 stuck");
}

#[tokio::test]
async fn verify_fails_on_an_active_sale_without_hot_state() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 5).await;
    assert!(verify_sale(&app, &sale).await.passed());

    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = app.services.deps.redis.clone();
    redis::cmd("DEL").arg(&keys.state).query_async::<()>(&mut redis).await.unwrap();
    let report = verify_sale(&app, &sale).await;
    fails_only_on(&report, "an active sale has no hot state");
}

/// A rebuild barrier on its way is work in flight: verify waits for the state it brings back
/// instead of failing the sale (as `scripts/chaos`'s Redis restart showed it did).
#[tokio::test]
async fn verify_waits_for_a_rebuild_barrier_on_its_way() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 5).await;
    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = app.services.deps.redis.clone();
    redis::cmd("DEL").arg(&keys.state).query_async::<()>(&mut redis).await.unwrap();
    let buyer = app.shopper().await;
    let purchase = app.post(&format!("/api/v1/sales/{sale}/purchase"), json!({}), buyer.token()).await;
    purchase.error(503, "SERVICE_UNAVAILABLE", None);

    let report = verify_sale(&app, &sale).await;
    assert!(report.passed(), "{report}");
    let state: bool = redis::cmd("EXISTS").arg(&keys.state).query_async(&mut redis).await.unwrap();
    assert!(state, "verify answered once the barrier passed and the worker loaded the sale");
}

#[tokio::test]
async fn verify_fails_on_an_auction_left_open_past_its_end_or_unsold_above_its_reserve() {
    // Only this test's own changes to Postgres may close the auction.
    let app = spawn_app_with(|s| s.auctions.sweep_interval_secs = 3600.try_into().unwrap()).await;
    let admin = app.admin().await;
    let bidder = app.shopper().await;
    let now = Utc::now();
    let body = json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00", "reserve_price": "20.00",
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::hours(1),
        "payment_timeout_secs": 300,
    });
    let auction = app.post("/api/v1/auctions", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    let bid = json!({"amount": "25.00"});
    app.post(&format!("/api/v1/auctions/{auction}/bids"), bid, bidder.token()).await.data(201);
    app.eventually(10, "the bid is in Postgres", || async {
        app.scalar(&format!("SELECT count(*) FROM bids WHERE auction_id = '{auction}'")).await == 1
    })
    .await;
    let deps = &app.services.deps;
    let keys = deps.keys();
    let verify = || service::verify::auction(&deps.db, &deps.redis, &keys, auction.parse().unwrap());
    assert!(verify().await.unwrap().passed());

    let db = &app.db;
    let sql = |sql: String| async move { sea_orm::ConnectionTrait::execute_unprepared(db, &sql).await.unwrap() };
    sql(format!("UPDATE auctions SET start_at = now() - interval '2 hours', end_at = now() - interval '1 hour' WHERE id = '{auction}'")).await;
    let report = verify().await.unwrap();
    fails_only_on(&report, "an open auction is not past its end");

    sql(format!("UPDATE auctions SET status = 'unsold', closed_at = now() WHERE id = '{auction}'")).await;
    let report = verify().await.unwrap();
    fails_only_on(&report, "unsold: no bid met the reserve");
}

#[tokio::test]
async fn verify_fails_on_a_closed_order_whose_units_came_back_never_or_twice() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 5).await;
    let buyer = app.shopper().await;
    let id =
        app.post(&format!("/api/v1/sales/{sale}/purchase"), json!({}), buyer.token()).await.data(202)["reservation_id"]
            .as_str()
            .unwrap()
            .to_owned();
    let progress = || async { app.get(&format!("/api/v1/reservations/{id}"), buyer.token()).await.data(200).clone() };
    app.eventually(10, "the reservation became an order", || async { progress().await["status"] == "confirmed" }).await;
    let order = progress().await["order_id"].as_str().unwrap().to_owned();
    app.post(&format!("/api/v1/orders/{order}/cancel"), json!(null), buyer.token()).await.data(200);
    let restocked =
        format!("SELECT count(*) FROM reservations WHERE order_id = '{order}' AND restocked_at IS NOT NULL");
    app.eventually(10, "Redis was told of the cancel", || async { app.scalar(&restocked).await == 1 }).await;
    let report = verify_sale(&app, &sale).await;
    assert!(report.passed(), "{report}");

    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = app.services.deps.redis.clone();
    let snap: i64 = redis::cmd("HGET").arg(&keys.state).arg("snap").query_async(&mut redis).await.unwrap();
    let set_snap = |snap: i64| redis::cmd("HSET").arg(&keys.state).arg("snap").arg(snap).to_owned();
    // The hot state claims a snapshot that already counts the return: counted twice.
    set_snap(snap + 100).query_async::<()>(&mut redis).await.unwrap();
    fails_only_on(&verify_sale(&app, &sale).await, "redis: every return counted once (0 never, 1 twice");
    set_snap(snap).query_async::<()>(&mut redis).await.unwrap();

    // Redis forgot the return that Postgres says it was told of: counted never.
    redis::cmd("SREM").arg(&keys.returned).arg(&order).query_async::<()>(&mut redis).await.unwrap();
    fails_only_on(&verify_sale(&app, &sale).await, "redis: every return counted once (1 never");
    redis::cmd("SADD").arg(&keys.returned).arg(&order).query_async::<()>(&mut redis).await.unwrap();

    // Postgres has no record that the cancelled order gave its units back.
    let sql = format!("UPDATE reservations SET returned_at = NULL WHERE order_id = '{order}'");
    sea_orm::ConnectionTrait::execute_unprepared(&app.db, &sql).await.unwrap();
    fails_only_on(&verify_sale(&app, &sale).await, "returned its units once (1 never");
}

#[tokio::test]
async fn verify_fails_on_an_auction_whose_winner_or_order_is_not_the_top_bid() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (bidder, other) = (app.shopper().await, app.shopper().await);
    let now = Utc::now();
    let body = json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00",
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::seconds(2),
        "payment_timeout_secs": 300,
    });
    let auction = app.post("/api/v1/auctions", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    app.post(&format!("/api/v1/auctions/{auction}/bids"), json!({"amount": "25.00"}), bidder.token()).await.data(201);
    let sold = format!("SELECT count(*) FROM auctions WHERE id = '{auction}' AND status = 'sold'");
    app.eventually(15, "the auction is sold", || async { app.scalar(&sold).await == 1 }).await;
    let deps = &app.services.deps;
    let keys = deps.keys();
    let verify = || service::verify::auction(&deps.db, &deps.redis, &keys, auction.parse().unwrap());
    assert!(verify().await.unwrap().passed(), "{}", verify().await.unwrap());

    let db = &app.db;
    let sql = |sql: String| async move { sea_orm::ConnectionTrait::execute_unprepared(db, &sql).await.unwrap() };
    sql(format!("UPDATE orders SET total = 24.00 WHERE auction_id = '{auction}'")).await;
    fails_among_others_on(&verify().await.unwrap(), "the first order is the top bid's");
    sql(format!("UPDATE orders SET total = 25.00, user_id = '{}' WHERE auction_id = '{auction}'", other.user_id)).await;
    fails_among_others_on(&verify().await.unwrap(), "the first order is the top bid's");
    sql(format!("UPDATE orders SET user_id = '{}' WHERE auction_id = '{auction}'", bidder.user_id)).await;
    assert!(verify().await.unwrap().passed());
    sql(format!("UPDATE auctions SET winner_id = '{}' WHERE id = '{auction}'", other.user_id)).await;
    fails_among_others_on(&verify().await.unwrap(), "sold: the winner");
}

/// A reservation made by the Lua script, as the purchase path makes it, and the delivery
/// that carries it to the order consumer; no broker involved.
pub(crate) async fn reserve_directly(app: &TestApp, sale: &str, buyer: &Session, quantity: u32) -> repo::mq::Delivery {
    reserve_with_deadline(app, sale, buyer, quantity, 600_000, None).await
}

/// [`reserve_directly`], with the deadline after which the reaper may undo it, and an
/// `Idempotency-Key`.
pub(crate) async fn reserve_with_deadline(
    app: &TestApp,
    sale: &str,
    buyer: &Session,
    quantity: u32,
    deadline_ms: u64,
    key: Option<&str>,
) -> repo::mq::Delivery {
    let (sale_id, user_id) = (sale.parse().unwrap(), buyer.user_id.parse().unwrap());
    let deps = &app.services.deps;
    let id = uuid::Uuid::now_v7();
    let keys = deps.keys().sale(sale_id);
    let mut redis = deps.redis.clone();
    let ask = repo::cache::sales::Ask {
        user_id,
        quantity,
        reservation_id: id,
        idempotency_key: key,
        fingerprint: &format!("q{quantity}"),
        idempotency_ttl_ms: 60_000,
        deadline_ms,
    };
    let reserved = repo::cache::sales::reserve(&mut redis, &keys, &ask).await.unwrap();
    let repo::cache::sales::Reserve::Reserved { generation, .. } = reserved else { panic!("{reserved:?}") };
    let reservation = repo::mq::messages::Reservation {
        id,
        sale_id,
        user_id,
        quantity: quantity as i32,
        generation,
        reserved_at: Utc::now(),
        idempotency_key: None,
        fingerprint: None,
        buckets: 1,
    };
    let body = serde_json::to_vec(&repo::mq::messages::ReservationBatch { reservations: vec![reservation] }).unwrap();
    repo::mq::Delivery { body, headers: Default::default(), attempt: 1, last_attempt: false }
}

#[tokio::test]
async fn the_same_reservation_twice_in_one_intake_makes_one_order_and_acks_both() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 5).await;
    let copy = reserve_directly(&app, &sale, &app.shopper().await, 1).await;
    // The original and its redelivered copy, taken in one intake.
    let outcomes = app.services.order_consumer.handle(vec![copy.clone(), copy]).await;
    assert!(outcomes.iter().all(|o| matches!(o, repo::mq::Outcome::Ack)), "{outcomes:?}");
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 1);
    let report = verify_sale(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_reservation_given_up_on_stays_released_when_a_copy_returns_after_redis_forgot() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = flash_sale(&app, &admin, 5).await;
    let buyer = app.shopper().await;
    let copy = reserve_directly(&app, &sale, &buyer, 1).await;
    let execute = |sql: &'static str| sea_orm::ConnectionTrait::execute_unprepared(&app.db, sql);
    // Postgres refuses every order: the message fails for its own reason, to the last attempt.
    execute(
        "CREATE FUNCTION refuse_orders() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
         CREATE TRIGGER refuse_orders BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_orders();",
    )
    .await
    .unwrap();
    let last = repo::mq::Delivery { attempt: 3, last_attempt: true, ..copy.clone() };
    let outcomes = app.services.order_consumer.handle(vec![last]).await;
    assert!(matches!(outcomes[..], [repo::mq::Outcome::Retry(_)]), "dead-lettered: {outcomes:?}");
    let remaining = || async { app.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["remaining"].clone() };
    assert_eq!(remaining().await, 5, "the unit is back on sale");
    execute("DROP TRIGGER refuse_orders ON orders").await.unwrap();

    // Redis forgets which reservations were undone or claimed (a flush of those keys), and
    // the dead letter is re-driven: it must not become an order for a unit already resold.
    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = app.services.deps.redis.clone();
    redis::cmd("DEL").arg(&keys.undone).arg(&keys.claimed).query_async::<()>(&mut redis).await.unwrap();
    let outcomes = app.services.order_consumer.handle(vec![copy]).await;
    assert!(matches!(outcomes[..], [repo::mq::Outcome::Ack]), "{outcomes:?}");
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 0);
    assert_eq!(remaining().await, 5);
    let report = verify_sale(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

/// Declares the delay queue of `order.close` rows delayed 12,345 ms with other arguments
/// than the app's (another expiry), so that the relay can never declare it
/// (PRECONDITION_FAILED), as after a change of queue arguments. Returns its name.
async fn break_a_delay_queue(app: &TestApp) -> String {
    let other = repo::mq::Topology::new(&app.settings.amqp.prefix, 3_600_000, vec![]);
    let channel = app.services.deps.broker.channel().await.unwrap();
    let broken = other.declare_delay_queue(&channel, "order.close", 12_345).await.unwrap();
    channel.close(200, "declared".into()).await.unwrap();
    broken
}

async fn delete_queue(app: &TestApp, name: &str) {
    let channel = app.services.deps.broker.channel().await.unwrap();
    channel.queue_delete(name.into(), Default::default()).await.unwrap();
    channel.close(200, "deleted".into()).await.unwrap();
}

#[tokio::test]
async fn an_outbox_row_that_cannot_be_published_does_not_hold_back_the_rows_claimed_with_it() {
    let app = spawn_app().await;
    let broken = break_a_delay_queue(&app).await;

    // One statement, so that one relay round claims both rows.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        r#"INSERT INTO outbox (routing_key, payload, delay_ms) VALUES
             ('order.close', '{"order_ids": []}', 12345),
             ('order.created', '{"kind": "standard", "order_ids": []}', NULL)"#,
    )
    .await
    .unwrap();
    app.eventually(10, "the good row is published", || async {
        app.scalar("SELECT count(*) FROM outbox WHERE routing_key = 'order.created' AND published_at IS NOT NULL").await
            == 1
    })
    .await;
    let stuck = "SELECT count(*) FROM outbox WHERE routing_key = 'order.close' AND published_at IS NULL \
                 AND attempts >= 1 AND last_error LIKE '%PRECONDITION_FAILED%'";
    assert_eq!(app.scalar(stuck).await, 1, "the broken row waits for its own retry");
    delete_queue(&app, &broken).await;
}

#[tokio::test]
async fn an_outbox_row_that_keeps_failing_is_parked_shown_and_redriven() {
    let app = spawn_app_with(|s| s.outbox.max_attempts = 2.try_into().unwrap()).await;
    let broken = break_a_delay_queue(&app).await;
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        r#"INSERT INTO outbox (routing_key, payload, delay_ms) VALUES ('order.close', '{"order_ids": []}', 12345)"#,
    )
    .await
    .unwrap();

    app.eventually(10, "the row is parked", || async {
        service::dead_letters::list_outbox(&app.db, 10).await.unwrap().len() == 1
    })
    .await;
    let parked = service::dead_letters::list_outbox(&app.db, 10).await.unwrap();
    assert_eq!(parked[0].attempts, 2, "{parked:?}");
    assert!(parked[0].error.contains("PRECONDITION_FAILED"), "{parked:?}");
    // The counter, not the `outbox_parked` gauge: the recorder is process-wide, and under
    // `cargo test` other tests' relays set the gauge to their own counts.
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let parked_total = metrics.lines().find_map(|line| line.strip_prefix("outbox_parked_total "));
    assert!(parked_total.and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n >= 1.0), "{metrics}");

    // The operator fixes the cause and re-drives it.
    delete_queue(&app, &broken).await;
    assert_eq!(service::dead_letters::redrive_outbox(&app.db).await.unwrap(), 1);
    app.eventually(10, "the row is published", || async {
        app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND routing_key = 'order.close'").await
            == 1
    })
    .await;
}

#[tokio::test]
async fn a_refusal_after_a_rebuild_drops_the_drifted_hot_state_and_the_reload_has_what_postgres_has() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = flash_sale_limited(&app, &admin, 3, 2).await;
    let sale_id = sale.parse().unwrap();
    // Two units reserved; their message is still on its way when Redis loses the sale.
    let before = reserve_directly(&app, &sale, &app.shopper().await, 2).await;
    let keys = app.services.deps.keys().sale(sale_id);
    let mut redis = app.services.deps.redis.clone();
    let hot = [&keys.state, &keys.buyers, &keys.inflight, &keys.claimed, &keys.undone, &keys.settled, &keys.returned];
    redis::cmd("DEL").arg(&hot[..]).query_async::<()>(&mut redis).await.unwrap();
    // Loaded without waiting for the rebuild barrier (as when the reservation was held by
    // another worker process, see reliability.md), Redis sees all three units and sells two
    // of them again.
    app.services.sales.load_hot_state(sale_id).await.unwrap();
    let after = reserve_directly(&app, &sale, &app.shopper().await, 2).await;

    let consumer = &app.services.order_consumer;
    assert!(matches!(consumer.handle(vec![before]).await[..], [repo::mq::Outcome::Ack]));
    assert!(matches!(consumer.handle(vec![after]).await[..], [repo::mq::Outcome::Ack]), "refused: sold out");
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 1);
    // The refusal proved Redis ahead of Postgres: its hot state is dropped, and the reload
    // (a purchase's, behind the rebuild barrier) has exactly the unit Postgres still has.
    assert!(!redis::cmd("EXISTS").arg(&keys.state).query_async::<bool>(&mut redis).await.unwrap(), "dropped");
    app.services.sales.load_hot_state(sale_id).await.unwrap();
    let view = app.get(&format!("/api/v1/sales/{sale}"), None).await;
    assert_eq!(view.data(200)["remaining"], 1, "the one unit Postgres still has is on sale again");
    let report = verify_sale(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_reservation_the_broker_stored_but_never_confirmed_is_accepted_once_the_consumer_claimed_it() {
    // The consumer, connected directly, so that it gets the message and claims it.
    let consumer = spawn_app().await;
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let api = spawn_sibling(&consumer, Mode::Api, |s| {
        s.amqp.url = through(&s.amqp.url, rabbit.addr);
        // One publisher channel, opened below while the broker's answers still arrive: a
        // channel opened after the mute would never get its open-ok.
        s.amqp.publishers = 1.try_into().unwrap();
        // The window in which the consumer must claim before the API gives up; it needs
        // milliseconds.
        s.amqp.confirm_timeout_ms = 3000.try_into().unwrap();
    })
    .await;
    let admin = api.admin().await;
    let sale = flash_sale(&api, &admin, 5).await;
    let purchase =
        async |session: &Session| api.post(&format!("/api/v1/sales/{sale}/purchase"), json!({}), session.token()).await;
    let confirmed = async |session: &Session, id: String| {
        let path = format!("/api/v1/reservations/{id}");
        api.eventually(10, "the reservation became an order", || async {
            api.get(&path, session.token()).await.data(200)["status"] == "confirmed"
        })
        .await;
    };
    let first = api.shopper().await;
    let id = purchase(&first).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    confirmed(&first, id).await;

    // The purchase reaches the broker, which stores it and hands it to the consumer; its
    // confirm never reaches the API, which then finds the reservation claimed.
    rabbit.mute_replies();
    let buyer = api.shopper().await;
    let reply = purchase(&buyer).await;
    assert!(rabbit.muted_bytes() > 0, "the broker's confirm was dropped");
    let id = reply.data(202)["reservation_id"].as_str().unwrap().to_owned();
    confirmed(&buyer, id).await;

    let orders = format!("SELECT count(*) FROM orders WHERE kind = 'sale' AND user_id = '{}'", buyer.user_id);
    assert_eq!(api.scalar(&orders).await, 1);
    let view = api.get(&format!("/api/v1/sales/{sale}"), None).await;
    assert_eq!(view.data(200)["remaining"], 3, "two units sold, none returned");
    let report = verify_sale(&api, &sale).await;
    assert!(report.passed(), "{report}");
    rabbit.cut();
}

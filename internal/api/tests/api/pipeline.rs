//! The message pipeline: outbox -> relay -> delay queue -> close consumer, the sweeper,
//! races between pay, cancel and close, redelivery, relay restarts, dead letters.

use std::time::Duration;

use api::Mode;
use repo::mq::consumer::Delivery;
use repo::mq::topology::ORDER_CLOSE;
use repo::mq::{ConfirmPublisher, Message};
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{TestApp, metric, spawn_app_with, spawn_sibling, wait_for_metric};
use crate::proxy::TcpProxy;

/// A close message handled by the close consumer.
const CLOSE_ACKED: &str = r#"amqp_consumed_total{queue="order.close",outcome="ack"}"#;
const DEAD_LETTERED: &str = r#"amqp_consumed_total{queue="order.close",outcome="dead"}"#;

/// Short payment windows; the sweeper effectively off, so a close proves the delay queue.
async fn quick_app(timeout_secs: u32) -> TestApp {
    spawn_app_with(|s| {
        s.orders.payment_timeout_secs = timeout_secs.try_into().unwrap();
        s.orders.sweep_interval_secs = 600.try_into().unwrap();
    })
    .await
}

#[tokio::test]
async fn an_unpaid_order_closes_through_the_delay_queue_and_its_stock_returns() {
    let app = quick_app(1).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "9.99", 4).await;
    let unpaid = app.order(&shopper, &[(&product, 3)]).await.data(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(app.stock_of(&product).await, 1);

    app.eventually(10, "the unpaid order closes", || async { app.order_status(&shopper, &unpaid).await == "closed" })
        .await;
    assert_eq!(app.stock_of(&product).await, 4, "the units are back, and the cache shows it");
    app.post(&format!("/api/v1/orders/{unpaid}/pay"), json!(null), shopper.token()).await.error(
        409,
        "ORDER_NOT_PENDING",
        None,
    );
    assert_eq!(app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await, 0);
    assert!(queue_exists(&app, &format!("{}.delay.order.close.1000", app.settings.amqp.prefix)).await);
    assert_eq!(metric(CLOSE_ACKED), 1.0, "the close consumer closed it");
    assert_eq!(metric("orders_swept_total"), 0.0, "not the sweeper");
    assert_eq!(metric(r#"orders_finished_total{reason="timeout"}"#), 1.0);
}

/// Whether the broker has this queue (a passive declare, which fails for a missing one).
async fn queue_exists(app: &TestApp, name: &str) -> bool {
    let channel = app.services.deps.broker.channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let found = channel.queue_declare(name.into(), options, Default::default()).await.is_ok();
    if found {
        channel.close(200, "checked".into()).await.unwrap();
    }
    found
}

#[tokio::test]
async fn an_order_paid_in_time_stays_paid() {
    let app = quick_app(2).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 2).await;
    let id = app.order(&shopper, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned();
    app.post(&format!("/api/v1/orders/{id}/pay"), json!(null), shopper.token()).await.data(200);
    // Its close message comes anyway, after the timeout, and finds it paid.
    wait_for_metric(CLOSE_ACKED, 1.0).await;
    assert_eq!(app.order_status(&shopper, &id).await, "paid");
    assert_eq!(app.stock_of(&product).await, 1);
}

#[tokio::test]
async fn a_short_timeout_is_not_held_back_by_a_long_one() {
    let long = quick_app(60).await;
    let short = spawn_sibling(&long, Mode::Serve, |s| s.orders.payment_timeout_secs = 1.try_into().unwrap()).await;
    let admin = long.admin().await;
    let shopper = long.shopper().await;
    let product = long.product(&admin, "1.00", 10).await;
    let slow = long.order(&shopper, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned();
    let fast = short.order(&shopper, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned();
    long.eventually(10, "the 1 s order closes", || async { long.order_status(&shopper, &fast).await == "closed" })
        .await;
    assert_eq!(long.order_status(&shopper, &slow).await, "pending_payment");
    // Each timeout waits in a TTL queue of its own, so the long one cannot block the short one.
    let prefix = &long.settings.amqp.prefix;
    assert!(queue_exists(&long, &format!("{prefix}.delay.order.close.1000")).await);
    assert!(queue_exists(&long, &format!("{prefix}.delay.order.close.60000")).await);
}

#[tokio::test]
async fn pay_racing_close_has_exactly_one_winner() {
    let app = quick_app(300).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 30).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(app.order(&shopper, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned());
    }
    // Deadlines spread around now: five long past, five an hour away, twenty within a few
    // hundred milliseconds of the moment the payments and the closes start.
    for (i, id) in ids.iter().enumerate() {
        let offset_ms = match i {
            0..5 => -3_600_000,
            5..10 => 3_600_000,
            _ => (i as i64 - 15) * 20,
        };
        let sql =
            format!("UPDATE orders SET expires_at = now() + interval '{offset_ms} milliseconds' WHERE id = '{id}'");
        sea_orm::ConnectionTrait::execute_unprepared(&app.db, &sql).await.unwrap();
    }
    // Each payment races the close consumer's handler, which (like the delay queue and the
    // sweeper) keeps coming until the order is no longer pending.
    let races = ids.iter().map(|id| {
        let (app, shopper) = (&app, &shopper);
        async move {
            let pay_path = format!("/api/v1/orders/{id}/pay");
            let close = async {
                let body = serde_json::to_vec(&json!({"order_ids": [id]})).unwrap();
                loop {
                    let delivery =
                        Delivery { body: body.clone(), headers: Default::default(), attempt: 1, last_attempt: false };
                    assert!(matches!(
                        service::closer::handle_close(&app.services.orders, delivery).await,
                        repo::mq::Outcome::Ack
                    ));
                    let pending =
                        format!("SELECT count(*) FROM orders WHERE id = '{id}' AND status = 'pending_payment'");
                    if app.scalar(&pending).await == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let (pay, ()) = tokio::join!(app.post(&pay_path, json!(null), shopper.token()), close);
            (pay, app.order_status(shopper, id).await)
        }
    });
    let outcomes = futures::future::join_all(races).await;
    // Every close message arrives after its deadline, also for the orders paid in time:
    // then it finds them paid and changes nothing.
    sea_orm::ConnectionTrait::execute_unprepared(&app.db, "UPDATE orders SET expires_at = now() - interval '1 second'")
        .await
        .unwrap();
    let body = serde_json::to_vec(&json!({ "order_ids": ids })).unwrap();
    let late = Delivery { body, headers: Default::default(), attempt: 1, last_attempt: false };
    assert!(matches!(service::closer::handle_close(&app.services.orders, late).await, repo::mq::Outcome::Ack));
    let (mut paid, mut closed) = (0, 0);
    for (id, (pay, status)) in ids.iter().zip(outcomes) {
        assert_eq!(app.order_status(&shopper, id).await, status, "the late close changed nothing");
        if pay.status == 200 {
            assert_eq!(status, "paid", "a 200 is a paid order");
            paid += 1;
        } else {
            // Refused either before the close landed (expired) or after it (closed).
            let error = pay.error(409, pay.body["error"].as_str().unwrap_or_default(), None)["error"].clone();
            assert!(error == "ORDER_EXPIRED" || error == "ORDER_NOT_PENDING", "{}", pay.body);
            assert_eq!(status, "closed", "a refused payment lost to the close");
            closed += 1;
        }
    }
    assert!(paid >= 5 && closed >= 5, "both sides won: {paid} paid, {closed} closed");
    assert_eq!(paid + closed, 30);
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE status = 'paid'").await, paid);
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE status = 'closed'").await, closed);
    assert_eq!(app.stock_of(&product).await, 30 - paid, "only closed orders returned stock");
}

#[tokio::test]
async fn pay_racing_cancel_has_exactly_one_winner() {
    let app = quick_app(300).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 40).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(app.order(&shopper, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned());
    }
    let races = ids.iter().map(|id| {
        let (app, shopper) = (&app, &shopper);
        async move {
            let (pay_path, cancel_path) = (format!("/api/v1/orders/{id}/pay"), format!("/api/v1/orders/{id}/cancel"));
            let (pay, cancel) = tokio::join!(
                app.post(&pay_path, json!(null), shopper.token()),
                app.post(&cancel_path, json!(null), shopper.token())
            );
            (pay.status.as_u16(), cancel.status.as_u16())
        }
    });
    let outcomes = futures::future::join_all(races).await;
    let mut paid = 0;
    for (pay, cancel) in outcomes {
        assert!(matches!((pay, cancel), (200, 409) | (409, 200)), "exactly one wins: pay {pay}, cancel {cancel}");
        if pay == 200 {
            paid += 1;
        }
    }
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE status = 'paid'").await, paid);
    assert_eq!(app.stock_of(&product).await, 40 - paid);
}

#[tokio::test]
async fn a_redelivered_close_message_returns_nothing_twice() {
    let app = quick_app(1).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 5).await;
    let id = app.order(&shopper, &[(&product, 2)]).await.data(201)["id"].as_str().unwrap().to_owned();
    app.eventually(10, "closed", || async { app.order_status(&shopper, &id).await == "closed" }).await;
    assert_eq!(app.stock_of(&product).await, 5);
    wait_for_metric(CLOSE_ACKED, 1.0).await;

    // The broker delivers the same close message again (e.g. a consumer crashed between
    // its commit and its ack).
    let body = serde_json::to_vec(&json!({"order_ids": [id]})).unwrap();
    let publisher = ConfirmPublisher::new(app.services.deps.broker.clone(), Duration::from_secs(2));
    let topology = app.services.deps.topology();
    let copies: Vec<Message> = (0..3)
        .map(|_| Message {
            exchange: topology.exchange(),
            routing_key: ORDER_CLOSE.key.into(),
            body: body.clone(),
            mandatory: true,
            ..Default::default()
        })
        .collect();
    publisher.publish_all(&copies).await.unwrap();
    // And the handler itself, run again as a redelivery would.
    let delivery = Delivery { body, headers: Default::default(), attempt: 2, last_attempt: false };
    let outcome = service::closer::handle_close(&app.services.orders, delivery).await;
    assert!(matches!(outcome, repo::mq::Outcome::Ack));
    wait_for_metric(CLOSE_ACKED, 4.0).await; // the first close and the three copies
    let stock = app.scalar(&format!("SELECT stock::bigint FROM products WHERE id = '{product}'")).await;
    assert_eq!(stock, 5, "still exactly the original stock");
    assert_eq!(app.stock_of(&product).await, 5);
}

#[tokio::test]
async fn pending_outbox_rows_are_sent_when_a_relay_comes_back() {
    // An API-only node writes orders; no relay runs yet.
    let api = quick_app(1).await;
    let api_only = spawn_sibling(&api, Mode::Api, |_| {}).await;
    let admin = api_only.admin().await;
    let shopper = api_only.shopper().await;
    api.shutdown().await.unwrap(); // the only relay stops
    let product = api_only.product(&admin, "1.00", 100).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(api_only.order(&shopper, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(api_only.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await, 10);
    assert_eq!(api_only.scalar("SELECT count(*) FROM orders WHERE status = 'pending_payment'").await, 5);

    // Two relays start together, taking one row per round so that they keep reaching for
    // the same rows at the same time: every row is published once.
    let one_row = |s: &mut platform::Settings| s.outbox.batch_size = 1.try_into().unwrap();
    let (worker_a, worker_b) =
        tokio::join!(spawn_sibling(&api_only, Mode::Worker, one_row), spawn_sibling(&api_only, Mode::Worker, one_row));
    api_only
        .eventually(15, "all orders close", || async {
            api_only.scalar("SELECT count(*) FROM orders WHERE status = 'closed'").await == 5
        })
        .await;
    assert_eq!(api_only.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await, 0);
    assert_eq!(api_only.scalar("SELECT count(*) FROM outbox WHERE attempts <> 1").await, 0, "no row sent twice");
    assert_eq!(metric("outbox_published_total"), 10.0, "each row published once");
    assert_eq!(metric(CLOSE_ACKED), 5.0, "one close message per order");
    assert_eq!(api_only.stock_of(&product).await, 100);
    drop((worker_a, worker_b));
}

#[tokio::test]
async fn the_sweeper_closes_orders_whose_message_never_left() {
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(|s| {
        s.amqp.url = SecretString::from(format!("amqp://guest:guest@{}/%2f", rabbit.addr));
        s.orders.payment_timeout_secs = 1.try_into().unwrap();
        s.orders.sweep_interval_secs = 1.try_into().unwrap();
    })
    .await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 3).await;
    rabbit.cut(); // the relay can no longer publish
    let id = app.order(&shopper, &[(&product, 2)]).await.data(201)["id"].as_str().unwrap().to_owned();
    app.eventually(15, "the sweeper closes it", || async { app.order_status(&shopper, &id).await == "closed" }).await;
    assert_eq!(app.stock_of(&product).await, 3);
    assert_eq!(metric("orders_swept_total"), 1.0);
    let waiting = "SELECT count(*) FROM outbox WHERE published_at IS NULL";
    assert_eq!(app.scalar(waiting).await, 2, "the order's event and close message are still waiting");

    // The late close message finally leaves, arrives, and returns nothing a second time.
    rabbit.restore();
    app.eventually(30, "the relay sends the waiting rows", || async { app.scalar(waiting).await == 0 }).await;
    wait_for_metric(CLOSE_ACKED, 1.0).await;
    let stock = app.scalar(&format!("SELECT stock::bigint FROM products WHERE id = '{product}'")).await;
    assert_eq!(stock, 3, "the units came back once");
    assert_eq!(app.order_status(&shopper, &id).await, "closed");
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_can_be_redriven() {
    let app = quick_app(60).await;
    let deps = &app.services.deps;
    let topology = deps.topology();
    let publisher = ConfirmPublisher::new(deps.broker.clone(), Duration::from_secs(2));
    let poison = Message {
        exchange: topology.exchange(),
        routing_key: ORDER_CLOSE.key.into(),
        body: b"{not json".to_vec(),
        mandatory: true,
        ..Default::default()
    };
    publisher.publish_all(&[poison]).await.unwrap();
    let broker = deps.broker.clone();
    wait_for_metric(DEAD_LETTERED, 1.0).await;
    let letters = service::dead_letters::list(&broker, &topology, ORDER_CLOSE, 10).await.unwrap();
    assert!(letters[0].error.contains("unreadable close message"), "{:?}", letters[0]);
    assert_eq!(letters[0].body, "{not json");

    let moved =
        service::dead_letters::redrive(broker.clone(), &topology, ORDER_CLOSE, Duration::from_secs(2)).await.unwrap();
    assert_eq!(moved, 1);
    // Still poison: the consumer gets it again and dead-letters it a second time, once.
    wait_for_metric(DEAD_LETTERED, 2.0).await;
    let letters = service::dead_letters::list(&broker, &topology, ORDER_CLOSE, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].body, "{not json");
}

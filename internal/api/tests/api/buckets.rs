//! Stock buckets: a sale split over several sets of Redis keys on their own hash tags, the
//! home bucket of each buyer, transfers between buckets, and everything per bucket (close,
//! rebuild, verify), on one Redis and on a Redis Cluster.

use std::time::Duration;

use chrono::Utc;
use repo::cache::buckets::{self, Bucket};
use repo::cache::sales as hot;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Session, TestApp, spawn_app, spawn_app_with};
use crate::redis_cluster::PrivateCluster;
use crate::sales::{buy, confirmed, drained, verify};
use crate::scaling::two_instances;

/// A sale of `stock` units in `stock_buckets` buckets.
async fn bucket_sale(
    app: &TestApp,
    admin: &Session,
    stock: i64,
    stock_buckets: i64,
    limit: i64,
    timeout: i64,
) -> String {
    let product = app.product(admin, "100.00", stock + 10).await;
    let now = Utc::now();
    let body = json!({
        "product_id": product, "price": "9.99", "stock": stock,
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::hours(1),
        "per_user_limit": limit, "payment_timeout_secs": timeout, "stock_buckets": stock_buckets,
    });
    let created = app.post("/api/v1/sales", body, admin.token()).await;
    assert_eq!(created.data(201)["stock_buckets"], stock_buckets);
    created.data(201)["id"].as_str().unwrap().to_owned()
}

/// Units left in each bucket's Redis state.
async fn redis_buckets(app: &TestApp, sale: &str, of: u16) -> Vec<i64> {
    let keys = app.services.deps.keys();
    let mut redis = app.services.deps.redis.clone();
    let mut left = Vec::new();
    for bucket in 0..of {
        let keys = keys.sale_bucket(sale.parse().unwrap(), bucket);
        left.push(hot::remaining(&mut redis, &keys).await.unwrap().unwrap_or(-999));
    }
    left
}

async fn postgres_buckets(app: &TestApp, sale: &str) -> Vec<i32> {
    repo::db::sales::bucket_stock(&app.db, sale.parse().unwrap()).await.unwrap()
}

async fn remaining(app: &TestApp, sale: &str) -> serde_json::Value {
    app.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["remaining"].clone()
}

#[tokio::test]
async fn stock_buckets_is_checked_and_shown() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let product = app.product(&admin, "100.00", 100).await;
    let now = Utc::now();
    let body = |stock: i64, buckets: serde_json::Value| {
        json!({
            "product_id": product, "price": "9.99", "stock": stock,
            "start_at": now, "end_at": now + chrono::Duration::hours(1),
            "payment_timeout_secs": 60, "stock_buckets": buckets,
        })
    };
    for bad in [json!(0), json!(65)] {
        let reply = app.post("/api/v1/sales", body(10, bad), admin.token()).await;
        assert!(reply.status == 400 || reply.status == 422, "{}", reply.body);
        assert!(reply.body.to_string().contains("stock_buckets"), "{}", reply.body);
    }
    let reply = app.post("/api/v1/sales", body(3, json!(4)), admin.token()).await;
    assert!(reply.status == 400 || reply.status == 422, "{}", reply.body);
    assert!(reply.body.to_string().contains("stock_buckets"), "{}", reply.body);
    let reply = app.post("/api/v1/sales", body(10, json!(1.5)), admin.token()).await;
    assert!(reply.status == 400 || reply.status == 422, "{}", reply.body);
    assert!(reply.body.to_string().contains("stock_buckets"), "{}", reply.body);

    let sale = bucket_sale(&app, &admin, 10, 4, 1, 60).await;
    let view = app.get(&format!("/api/v1/sales/{sale}"), None).await;
    assert_eq!(view.data(200)["stock_buckets"], 4);
    assert_eq!(view.data(200)["remaining"], 10);
    assert_eq!(redis_buckets(&app, &sale, 4).await, vec![3, 3, 2, 2], "split as evenly as possible");
    assert_eq!(postgres_buckets(&app, &sale).await, vec![3, 3, 2, 2]);
    // One bucket keeps the sale's own hash tag: a sale of one bucket is what it always was.
    let single = bucket_sale(&app, &admin, 5, 1, 1, 60).await;
    let keys = app.services.deps.keys().sale(single.parse().unwrap());
    assert!(keys.state.contains(&format!("{{sale:{single}}}:state")), "{}", keys.state);
}

#[tokio::test]
async fn an_eight_bucket_race_sells_exactly_the_stock_moving_units_to_dry_buckets() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 40, 8, 2, 300).await;
    let tokens = app.services.auth.create_shoppers(120, Duration::from_secs(600)).await.unwrap();
    // Every buyer tries three times (limit 2): exact counts, limits across buckets.
    let buyers = tokens.iter().flat_map(|token| std::iter::repeat_n(token, 3)).map(|token| {
        let url = app.url(&format!("/api/v1/sales/{sale}/purchase"));
        app.send(app.client.post(url).bearer_auth(token).json(&json!({})))
    });
    let replies = futures::future::join_all(buyers).await;
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let refused = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!(accepted, 40, "every unit sells, none twice");
    assert_eq!(
        accepted + refused,
        360,
        "no other answer: {:?}",
        replies.iter().find(|r| r.status != 202 && r.status != 409).map(|r| &r.body)
    );

    drained(&app, &sale).await;
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 40);
    assert_eq!(
        app.scalar(&format!("SELECT count(*) FROM sale_buyers WHERE sale_id = '{sale}' AND quantity > 2")).await,
        0
    );
    // Whether units moved depends on who came first (every bucket may run dry at once);
    // a_bucket_drained_while_others_hold_stock_gets_units_moved_over makes them move.
    assert_eq!(remaining(&app, &sale).await, 0);
    assert_eq!(app.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["status"], "sold_out");
    app.eventually(10, "every transfer finished", || async {
        app.scalar(&format!("SELECT count(*) FROM bucket_transfers WHERE sale_id = '{sale}' AND NOT done")).await == 0
    })
    .await;
    assert_eq!(redis_buckets(&app, &sale, 8).await, vec![0; 8]);
    assert_eq!(postgres_buckets(&app, &sale).await, vec![0; 8]);
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");
    // A late buyer is told sold out, exactly at zero.
    buy(&app, &app.shopper().await, &sale, 1).await.error(409, "SOLD_OUT", None);
}

#[tokio::test]
async fn a_bucket_drained_while_others_hold_stock_gets_units_moved_over() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 8, 4, 10, 300).await;
    // One buyer buys everything: two units from home, then the others' units come over.
    let shopper = app.shopper().await;
    let home = Bucket::home(shopper.user_id.parse().unwrap(), 4).index;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(buy(&app, &shopper, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned());
    }
    buy(&app, &shopper, &sale, 1).await.error(409, "SOLD_OUT", None);
    for id in &ids {
        assert_eq!(confirmed(&app, &shopper, id).await["status"], "confirmed");
    }
    drained(&app, &sale).await;
    let moved =
        app.scalar(&format!("SELECT COALESCE(sum(units), 0) FROM bucket_transfers WHERE sale_id = '{sale}'")).await;
    assert_eq!(moved, 6, "the six units of the other buckets moved to bucket {home}");
    assert_eq!(
        app.scalar(&format!("SELECT count(*) FROM bucket_transfers WHERE sale_id = '{sale}' AND to_bucket <> {home}"))
            .await,
        0
    );
    assert_eq!(postgres_buckets(&app, &sale).await, vec![0; 4]);
    assert_eq!(redis_buckets(&app, &sale, 4).await, vec![0; 4]);
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_transfer_interrupted_after_its_first_step_is_finished_by_the_sweeper() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 12, 3, 1, 300).await;
    let sale_id: Uuid = sale.parse().unwrap();
    let keys = app.services.deps.keys();
    let mut redis = app.services.deps.redis.clone();
    // Step 1 only, as a mover that died right after it would leave it.
    let transfer = Uuid::now_v7();
    let given = hot::transfer_out(&mut redis, &keys.sale_bucket(sale_id, 2), transfer, 0, 3).await.unwrap();
    assert_eq!(given, hot::Given::Units { units: 3, left: 1 });
    assert_eq!(redis_buckets(&app, &sale, 3).await, vec![4, 4, 1]);
    assert_eq!(remaining(&app, &sale).await, 9, "three units between buckets");

    app.eventually(20, "the sweeper finishes the move", || async {
        redis_buckets(&app, &sale, 3).await == vec![7, 4, 1]
    })
    .await;
    assert_eq!(postgres_buckets(&app, &sale).await, vec![7, 4, 1]);
    assert!(hot::moves(&mut redis, &keys.sale_bucket(sale_id, 2)).await.unwrap().is_empty());
    assert_eq!(app.scalar(&format!("SELECT count(*) FROM bucket_transfers WHERE id = '{transfer}' AND done")).await, 1);
    // Finishing it again (a second sweeper, the mover waking up) creates nothing.
    assert!(app.services.transfers.complete(sale_id, 2, 0, transfer, 3).await.unwrap());
    assert_eq!(redis_buckets(&app, &sale, 3).await, vec![7, 4, 1]);
    assert_eq!(postgres_buckets(&app, &sale).await, vec![7, 4, 1]);
    assert_eq!(remaining(&app, &sale).await, 12);
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");

    // A donor that lost the move before Postgres recorded it (its Redis state was lost and
    // rebuilt) keeps the units: nothing moves, nothing is created.
    let lost = Uuid::now_v7();
    hot::transfer_out(&mut redis, &keys.sale_bucket(sale_id, 1), lost, 0, 2).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys.sale_bucket(sale_id, 1).state)
        .arg(&keys.sale_bucket(sale_id, 1).moves)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!app.services.transfers.complete(sale_id, 1, 0, lost, 2).await.unwrap());
    app.services.sales.load_hot_state(sale_id).await.unwrap();
    assert_eq!(redis_buckets(&app, &sale, 3).await, vec![7, 4, 1]);
    assert_eq!(postgres_buckets(&app, &sale).await, vec![7, 4, 1]);
}

#[tokio::test]
async fn a_closed_order_returns_its_units_to_its_bucket() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 8, 4, 1, 1).await;
    let shopper = app.shopper().await;
    let home = usize::from(Bucket::home(shopper.user_id.parse().unwrap(), 4).index);
    let id = buy(&app, &shopper, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let order = confirmed(&app, &shopper, &id).await["order_id"].as_str().unwrap().to_owned();
    let mut expected = vec![2i64; 4];
    expected[home] = 1;
    assert_eq!(redis_buckets(&app, &sale, 4).await, expected);

    app.eventually(15, "the unpaid order closes", || async { app.order_status(&shopper, &order).await == "closed" })
        .await;
    app.eventually(15, "its unit is back in its bucket", || async {
        redis_buckets(&app, &sale, 4).await == vec![2; 4]
    })
    .await;
    assert_eq!(postgres_buckets(&app, &sale).await, vec![2; 4]);
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_lost_bucket_is_rebuilt_alone_from_its_row() {
    let app = spawn_app_with(|s| s.amqp.retry_delays_ms = vec![200, 400]).await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 16, 4, 1, 300).await;
    let sale_id: Uuid = sale.parse().unwrap();
    let tokens = app.services.auth.create_shoppers(8, Duration::from_secs(600)).await.unwrap();
    for token in &tokens {
        let url = app.url(&format!("/api/v1/sales/{sale}/purchase"));
        assert_eq!(app.send(app.client.post(url).bearer_auth(token).json(&json!({}))).await.status, 202);
    }
    drained(&app, &sale).await;
    let before = redis_buckets(&app, &sale, 4).await;

    // One bucket's keys vanish (its master was lost); the others keep selling.
    let shopper = app.shopper().await;
    let lost = Bucket::home(shopper.user_id.parse().unwrap(), 4).index;
    let keys = app.services.deps.keys().sale_bucket(sale_id, lost);
    let mut redis = app.services.deps.redis.clone();
    let _: () =
        redis::cmd("DEL").arg(&keys.state).arg(&keys.buyers).arg(&keys.inflight).query_async(&mut redis).await.unwrap();
    let mut answer = buy(&app, &shopper, &sale, 1).await;
    for _ in 0..300 {
        if answer.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = buy(&app, &shopper, &sale, 1).await;
    }
    let id = answer.data(202)["reservation_id"].as_str().unwrap().to_owned();
    confirmed(&app, &shopper, &id).await;
    drained(&app, &sale).await;
    let mut expected = before.clone();
    expected[usize::from(lost)] -= 1;
    let after = redis_buckets(&app, &sale, 4).await;
    assert_eq!(after, expected, "rebuilt from its row, the others untouched");
    // The buyers whose home it is are known again: the limit of 1 holds for them.
    for token in &tokens {
        let url = app.url(&format!("/api/v1/sales/{sale}/purchase"));
        let reply = app.send(app.client.post(url).bearer_auth(token).json(&json!({}))).await;
        reply.error(409, "LIMIT_REACHED", None);
    }
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_race_over_two_instances_on_a_redis_cluster_with_eight_buckets_spreads_over_every_master() {
    let Some(cluster) = PrivateCluster::start().await else { return };
    let [a, b] = two_instances(&cluster, |_| {}).await;
    let admin = a.admin().await;
    let sale = bucket_sale(&a, &admin, 40, 8, 1, 300).await;
    let tokens = a.services.auth.create_shoppers(200, Duration::from_secs(600)).await.unwrap();
    let buyers = tokens.iter().enumerate().map(|(i, token)| {
        let app = if i % 2 == 0 { &a } else { &b };
        let url = app.url(&format!("/api/v1/sales/{sale}/purchase"));
        app.send(app.client.post(url).bearer_auth(token).json(&json!({})))
    });
    let replies = futures::future::join_all(buyers).await;
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let sold_out = replies.iter().filter(|r| r.status == 409 && r.body["error"] == "SOLD_OUT").count();
    assert_eq!((accepted, sold_out), (40, 160), "no other answer, no 5xx");

    drained(&a, &sale).await;
    assert_eq!(a.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 40);
    for app in [&a, &b] {
        let view = app.get(&format!("/api/v1/sales/{sale}"), None).await;
        assert_eq!(view.data(200)["remaining"], 0);
        assert_eq!(view.data(200)["status"], "sold_out");
    }
    let report = verify(&a, &sale).await;
    assert!(report.passed(), "{report}");

    // Each bucket's state key lives on the master that owns its slot: all three have some.
    let sale_id: Uuid = sale.parse().unwrap();
    let mut per_master = Vec::new();
    for port in &cluster.ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut here = 0;
        for bucket in 0..8 {
            let slot = buckets::slot(buckets::tag(sale_id, bucket).as_bytes());
            let count: i64 =
                redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot).query_async(&mut conn).await.unwrap();
            here += usize::from(count > 0);
        }
        per_master.push(here);
    }
    assert_eq!(per_master.iter().sum::<usize>(), 8, "every bucket found once: {per_master:?}");
    assert!(per_master.iter().all(|&n| (2..=3).contains(&n)), "3/3/2 over the masters: {per_master:?}");
}

#[tokio::test]
async fn order_batches_of_a_bucketed_sale_do_not_wait_for_the_sale_row() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 8, 4, 1, 300).await;
    let shopper = app.shopper().await;
    // Something holds the sale row as an update of it would (a sale of one bucket's consumer
    // does, for every batch): the buckets' rows are what this sale's order consumer locks,
    // so the purchase still becomes an order. (Rows referencing the sale take only a key
    // share lock on it, which an update of other columns does not block.)
    let txn = sea_orm::TransactionTrait::begin(&app.db).await.unwrap();
    let hold = format!("SELECT id FROM sales WHERE id = '{sale}' FOR NO KEY UPDATE");
    sea_orm::ConnectionTrait::execute_unprepared(&txn, &hold).await.unwrap();
    let id = buy(&app, &shopper, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(confirmed(&app, &shopper, &id).await["status"], "confirmed");
    txn.rollback().await.unwrap();
    drained(&app, &sale).await;
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_donor_whose_redis_holds_units_its_row_does_not_is_rebuilt_and_nothing_moves() {
    // A donor's Redis ahead of its Postgres row (it forgot writes in a failover): the units
    // its step 1 gave cannot be recorded. The donor is dropped and rebuilt from its row, the
    // move with it; the sweeper is not stuck on it.
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 12, 3, 1, 300).await;
    let sale_id: Uuid = sale.parse().unwrap();
    let keys = app.services.deps.keys();
    let mut redis = app.services.deps.redis.clone();
    let donor = keys.sale_bucket(sale_id, 2);
    let _: () = redis::cmd("HINCRBY").arg(&donor.state).arg("stock").arg(10).query_async(&mut redis).await.unwrap();
    let transfer = Uuid::now_v7();
    let given = hot::transfer_out(&mut redis, &donor, transfer, 0, 8).await.unwrap();
    assert_eq!(given, hot::Given::Units { units: 8, left: 6 });

    assert!(!app.services.transfers.complete(sale_id, 2, 0, transfer, 8).await.unwrap(), "nothing moved");
    assert_eq!(postgres_buckets(&app, &sale).await, vec![4, 4, 4]);
    assert_eq!(app.scalar(&format!("SELECT count(*) FROM bucket_transfers WHERE id = '{transfer}'")).await, 0);
    assert_eq!(hot::remaining(&mut redis, &donor).await.unwrap(), None, "the drifted donor is dropped");
    app.services.sales.load_hot_state(sale_id).await.unwrap();
    assert_eq!(redis_buckets(&app, &sale, 3).await, vec![4, 4, 4]);
    assert!(hot::moves(&mut redis, &donor).await.unwrap().is_empty(), "the rebuild forgot the move");
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_donor_gives_one_move_at_a_time() {
    // While a move out of a donor is pending (Postgres could not record it yet), the donor
    // gives nothing more: buyers retrying through an outage do not drain every bucket.
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 12, 3, 1, 300).await;
    let sale_id: Uuid = sale.parse().unwrap();
    let keys = app.services.deps.keys();
    let mut redis = app.services.deps.redis.clone();
    let donor = keys.sale_bucket(sale_id, 1);
    let first = hot::transfer_out(&mut redis, &donor, Uuid::now_v7(), 0, 1).await.unwrap();
    assert_eq!(first, hot::Given::Units { units: 2, left: 2 });
    let second = hot::transfer_out(&mut redis, &donor, Uuid::now_v7(), 2, 1).await.unwrap();
    assert_eq!(second, hot::Given::Dry(2), "a move is pending");
    assert_eq!(redis_buckets(&app, &sale, 3).await, vec![4, 2, 4]);
}

#[tokio::test]
async fn an_instance_that_meets_a_sale_while_postgres_is_down_still_sells_it() {
    // The purchase path needs only Redis and RabbitMQ: an instance that has never looked
    // the sale up finds its bucket count in the sale's hot state.
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = bucket_sale(&app, &admin, 12, 3, 2, 300).await;
    let single = bucket_sale(&app, &admin, 5, 1, 2, 300).await;
    let shopper = app.shopper().await;
    let postgres = crate::proxy::TcpProxy::start(&crate::faults::postgres_address()).await;
    let api = crate::helpers::spawn_sibling(&app, api::Mode::Api, |s| {
        s.database.url = crate::faults::through(&s.database.url, postgres.addr);
        s.database.acquire_timeout_secs = 1;
        s.database.connect_timeout_secs = 1;
    })
    .await;
    postgres.cut();
    for sale in [&sale, &single] {
        let reply = api.post(&format!("/api/v1/sales/{sale}/purchase"), json!({}), shopper.token()).await;
        let id = reply.data(202)["reservation_id"].as_str().unwrap().to_owned();
        assert_eq!(confirmed(&app, &shopper, &id).await["status"], "confirmed");
    }
    postgres.restore();
}

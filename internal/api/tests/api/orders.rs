//! Orders: the transaction, validation, ownership, pay and cancel, idempotency, limits.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn an_order_takes_stock_and_snapshots_prices() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let phone = app.product(&admin, "199.00", 5).await;
    let case = app.product(&admin, "0.10", 100).await;

    let reply = app.order(&shopper, &[(&phone, 2), (&case, 3)]).await;
    let order = reply.data(201).clone();
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["kind"], "standard");
    assert_eq!(order["total"], "398.30");
    assert_eq!(order["items"][0]["unit_price"], "199.00");
    assert_eq!(order["items"][1]["quantity"], 3);
    assert_eq!(order["user_id"], shopper.user_id.as_str());
    assert_eq!(app.stock_of(&phone).await, 3);
    assert_eq!(app.stock_of(&case).await, 97);

    // A later price change does not touch the order.
    let path = format!("/api/v1/products/{phone}");
    app.send_json(reqwest::Method::PATCH, &path, json!({"price": "250.00"}), admin.token()).await.data(200);
    let again = app.get(&format!("/api/v1/orders/{}", order["id"].as_str().unwrap()), shopper.token()).await;
    assert_eq!(again.data(200)["items"][0]["unit_price"], "199.00");
    assert_eq!(again.data(200)["total"], "398.30");
}

#[tokio::test]
async fn one_short_line_rolls_the_whole_order_back() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let plenty = app.product(&admin, "1.00", 50).await;
    let scarce = app.product(&admin, "1.00", 1).await;
    let reply = app.order(&shopper, &[(&plenty, 5), (&scarce, 2)]).await;
    let body = reply.error(409, "INSUFFICIENT_STOCK", None);
    assert_eq!(body["details"]["product_id"], scarce.as_str());
    assert_eq!(body["details"]["available"], 1);
    assert_eq!(body["details"]["requested"], 2);
    assert_eq!(app.stock_of(&plenty).await, 50, "nothing taken");
    assert_eq!(app.stock_of(&scarce).await, 1);
    let list = app.get("/api/v1/orders", shopper.token()).await;
    assert_eq!(list.data(200)["total"], 0);
}

#[tokio::test]
async fn bad_order_input_names_the_field() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 5).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let cases = [
        (json!({"items": []}), "items"),
        (json!({}), "items"),
        (json!({"items": [{"product_id": product, "quantity": 0}]}), "items[0].quantity"),
        (json!({"items": [{"product_id": product, "quantity": "2"}]}), "items[0].quantity"),
        (json!({"items": [{"product_id": "nope", "quantity": 1}]}), "items[0].product_id"),
        (json!({"items": [{"product_id": unknown, "quantity": 1}]}), "items[0].product_id"),
        (
            json!({"items": [{"product_id": product, "quantity": 1}, {"product_id": product, "quantity": 1}]}),
            "items[1].product_id",
        ),
    ];
    for (body, field) in cases {
        let reply = app.post("/api/v1/orders", body.clone(), shopper.token()).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        reply.error(400, "INVALID_REQUEST", Some(field));
    }
    assert_eq!(app.stock_of(&product).await, 5);
}

#[tokio::test]
async fn orders_are_private_and_paged() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let product = app.product(&admin, "2.00", 10).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.order(&ann, &[(&product, 1)]).await.data(201)["id"].as_str().unwrap().to_owned());
    }
    let page = app.get("/api/v1/orders?page_size=2", ann.token()).await;
    assert_eq!(page.data(200)["total"], 3);
    assert_eq!(page.data(200)["items"].as_array().unwrap().len(), 2);
    assert_eq!(page.data(200)["items"][0]["id"], ids[2].as_str(), "newest first");

    for path in [format!("/api/v1/orders/{}", ids[0]), format!("/api/v1/orders/{}/pay", ids[0])] {
        let reply = if path.ends_with("pay") {
            app.post(&path, json!(null), bob.token()).await
        } else {
            app.get(&path, bob.token()).await
        };
        reply.error(404, "NOT_FOUND", None);
    }
    assert_eq!(app.get("/api/v1/orders", bob.token()).await.data(200)["total"], 0);
    app.get("/api/v1/orders?status=shipped", ann.token()).await.error(400, "INVALID_REQUEST", Some("status"));
    let pending = app.get("/api/v1/orders?status=pending_payment", ann.token()).await;
    assert_eq!(pending.data(200)["total"], 3);
}

#[tokio::test]
async fn pay_is_idempotent_and_cancel_returns_stock() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "5.00", 10).await;
    let paid = app.order(&shopper, &[(&product, 2)]).await.data(201)["id"].as_str().unwrap().to_owned();
    let cancelled = app.order(&shopper, &[(&product, 3)]).await.data(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(app.stock_of(&product).await, 5);

    let first = app.post(&format!("/api/v1/orders/{paid}/pay"), json!(null), shopper.token()).await;
    assert_eq!(first.data(200)["status"], "paid");
    let second = app.post(&format!("/api/v1/orders/{paid}/pay"), json!(null), shopper.token()).await;
    assert_eq!(second.data(200)["paid_at"], first.data(200)["paid_at"], "unchanged");

    let reply = app.post(&format!("/api/v1/orders/{cancelled}/cancel"), json!(null), shopper.token()).await;
    assert_eq!(reply.data(200)["status"], "cancelled");
    assert_eq!(app.stock_of(&product).await, 8, "the cancelled units are back");
    let again = app.post(&format!("/api/v1/orders/{cancelled}/cancel"), json!(null), shopper.token()).await;
    assert_eq!(again.data(200)["status"], "cancelled");
    assert_eq!(app.stock_of(&product).await, 8, "a second cancel returns nothing");
    assert_eq!(crate::helpers::metric(r#"orders_finished_total{reason="cancelled"}"#), 1.0);

    app.post(&format!("/api/v1/orders/{paid}/cancel"), json!(null), shopper.token()).await.error(
        409,
        "ORDER_NOT_PENDING",
        None,
    );
    app.post(&format!("/api/v1/orders/{cancelled}/pay"), json!(null), shopper.token()).await.error(
        409,
        "ORDER_NOT_PENDING",
        None,
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 10).await;
    let body = json!({"items": [{"product_id": product, "quantity": 2}]});
    let send = |key: &'static str, body: serde_json::Value| {
        let request = app
            .client
            .post(app.url("/api/v1/orders"))
            .bearer_auth(&shopper.access)
            .header("Idempotency-Key", key)
            .json(&body);
        app.send(request)
    };
    let first = send("key-1", body.clone()).await;
    let id = first.data(201)["id"].clone();
    let retry = send("key-1", body.clone()).await;
    assert_eq!(retry.data(201)["id"], id);
    assert_eq!(app.stock_of(&product).await, 8, "stock taken once");

    let different = json!({"items": [{"product_id": product, "quantity": 3}]});
    send("key-1", different).await.error(409, "IDEMPOTENCY_KEY_REUSED", None);

    // Concurrent retries with a fresh key: one order.
    let replies = futures::future::join_all((0..8).map(|_| send("key-2", body.clone()))).await;
    let ids: std::collections::HashSet<String> =
        replies.iter().map(|r| r.data(201)["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.stock_of(&product).await, 6);

    // A refusal is an answer too: the retry gets the same 409 even after stock arrives.
    let big = json!({"items": [{"product_id": product, "quantity": 50}]});
    send("key-3", big.clone()).await.error(409, "INSUFFICIENT_STOCK", None);
    let path = format!("/api/v1/products/{product}");
    app.send_json(reqwest::Method::PATCH, &path, json!({"stock": 100}), admin.token()).await.data(200);
    send("key-3", big).await.error(409, "INSUFFICIENT_STOCK", None);
    assert_eq!(app.stock_of(&product).await, 100);

    let blank = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&shopper.access)
        .header("Idempotency-Key", "has space")
        .json(&body);
    app.send(blank).await.error(400, "INVALID_REQUEST", Some("Idempotency-Key"));
}

#[tokio::test]
async fn concurrent_buyers_never_take_more_than_the_stock() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let product = app.product(&admin, "1.00", 10).await;
    let mut shoppers = Vec::new();
    for _ in 0..25 {
        shoppers.push(app.shopper().await);
    }
    let lines = [(product.as_str(), 1)];
    let replies = futures::future::join_all(shoppers.iter().map(|s| app.order(s, &lines))).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let refused = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!((created, refused), (10, 15));
    assert_eq!(app.stock_of(&product).await, 0);
}

#[tokio::test]
async fn writes_are_rate_limited_per_user() {
    let app = spawn_app_with(|s| {
        s.rate_limit.enabled = true;
        s.rate_limit.user_per_sec = 1.try_into().unwrap();
        s.rate_limit.user_burst = 2.try_into().unwrap();
    })
    .await;
    let admin = app.admin().await;
    let product = app.product(&admin, "1.00", 100).await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.order(&ann, &[(&product, 1)]).await.status.as_u16());
    }
    assert_eq!(&statuses[..2], &[201, 201], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert_eq!(app.order(&bob, &[(&product, 1)]).await.status, 201, "another user is not limited");
    assert_eq!(app.get("/api/v1/orders", ann.token()).await.status, 200, "reads are not limited per user");
}

#[tokio::test]
async fn concurrent_orders_naming_the_same_products_in_any_order_all_go_through() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (a, b, c) = (
        app.product(&admin, "1.00", 100).await,
        app.product(&admin, "2.00", 100).await,
        app.product(&admin, "3.00", 100).await,
    );
    let tokens = app.services.auth.create_shoppers(30, std::time::Duration::from_secs(600)).await.unwrap();
    // Every order locks the same rows, listed in different orders: rows locked in the order
    // given would deadlock some of them (a 5xx); a fixed lock order lets all of them through.
    let orders = tokens.iter().enumerate().map(|(i, token)| {
        let lines = match i % 3 {
            0 => [(&a, 1), (&b, 1), (&c, 1)],
            1 => [(&c, 1), (&b, 1), (&a, 1)],
            _ => [(&b, 1), (&c, 1), (&a, 1)],
        };
        let items: Vec<serde_json::Value> =
            lines.iter().map(|(id, q)| json!({"product_id": id, "quantity": q})).collect();
        app.send(app.client.post(app.url("/api/v1/orders")).bearer_auth(token).json(&json!({ "items": items })))
    });
    let replies = futures::future::join_all(orders).await;
    for reply in &replies {
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    for product in [&a, &b, &c] {
        assert_eq!(app.stock_of(product).await, 70);
    }
}

//! The catalog: admin-only writes, validation, paging and search, and the product cache.

use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{metric, spawn_app, spawn_app_with};
use crate::proxy::TcpProxy;
use crate::redis_server::PrivateRedis;

#[tokio::test]
async fn only_admins_write_the_catalog() {
    let app = spawn_app().await;
    let shopper = app.shopper().await;
    let body = json!({"title": "Phone", "price": "199.00", "stock": 3});
    app.post("/api/v1/products", body.clone(), None).await.error(401, "UNAUTHORIZED", None);
    app.post("/api/v1/products", body.clone(), shopper.token()).await.error(403, "FORBIDDEN", None);
    let admin = app.admin().await;
    let product = app.post("/api/v1/products", body, admin.token()).await;
    let data = product.data(201);
    assert_eq!(data["price"], "199.00");
    assert_eq!(data["stock"], 3);
    assert_eq!(data["description"], "");
}

#[tokio::test]
async fn every_bad_product_field_is_named() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let cases = [
        (json!({"title": "x", "price": "1.005", "stock": 1}), "price"),
        (json!({"title": "x", "price": "-1.00", "stock": 1}), "price"),
        (json!({"title": "x", "price": "0", "stock": 1}), "price"),
        (json!({"title": "x", "price": 199.0, "stock": 1}), "price"),
        (json!({"title": "x", "price": "1e13", "stock": 1}), "price"),
        (json!({"title": "x", "price": "99999999999", "stock": 1}), "price"),
        (json!({"title": "x", "price": "1.00", "stock": -1}), "stock"),
        (json!({"title": "x", "price": "1.00", "stock": "many"}), "stock"),
        (json!({"title": "  ", "price": "1.00", "stock": 1}), "title"),
        (json!({"price": "1.00", "stock": 1}), "title"),
    ];
    for (body, field) in cases {
        let reply = app.post("/api/v1/products", body.clone(), admin.token()).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        reply.error(400, "INVALID_REQUEST", Some(field));
    }
    let id = app.product(&admin, "5.00", 1).await;
    let patch =
        app.send_json(reqwest::Method::PATCH, &format!("/api/v1/products/{id}"), json!({}), admin.token()).await;
    assert_eq!(patch.data(200)["price"], "5.00", "an empty patch changes nothing");
    let bad_id = app.get("/api/v1/products/not-a-uuid", None).await;
    bad_id.error(400, "INVALID_REQUEST", Some("id"));
}

#[tokio::test]
async fn the_list_pages_sorts_and_searches() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for (title, price) in [("Red phone", "30.00"), ("Blue phone", "10.00"), ("Green lamp", "20.00")] {
        let body = json!({"title": title, "price": price, "stock": 1});
        app.post("/api/v1/products", body, admin.token()).await.data(201);
    }
    let page = app.get("/api/v1/products?sort=price,asc&page_size=2", None).await;
    let data = page.data(200);
    assert_eq!(data["total"], 3);
    let prices: Vec<&str> = data["items"].as_array().unwrap().iter().map(|p| p["price"].as_str().unwrap()).collect();
    assert_eq!(prices, ["10.00", "20.00"]);
    let second = app.get("/api/v1/products?sort=price,asc&page_size=2&page=2", None).await;
    assert_eq!(second.data(200)["items"][0]["price"], "30.00");

    let found = app.get("/api/v1/products?q=PHONE&sort=title,asc", None).await;
    let titles: Vec<&str> =
        found.data(200)["items"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Blue phone", "Red phone"]);
    let none = app.get("/api/v1/products?q=%25", None).await;
    assert_eq!(none.data(200)["total"], 0, "% is a literal, not a wildcard");

    app.get("/api/v1/products?sort=secret,asc", None).await.error(400, "INVALID_REQUEST", Some("sort"));
    app.get("/api/v1/products?page_size=500", None).await.error(400, "INVALID_REQUEST", Some("page_size"));
    app.get("/api/v1/products?page=0", None).await.error(400, "INVALID_REQUEST", Some("page"));
}

#[tokio::test]
async fn a_read_after_a_patch_or_delete_is_fresh() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let id = app.product(&admin, "10.00", 7).await;
    let path = format!("/api/v1/products/{id}");
    assert_eq!(app.get(&path, None).await.data(200)["price"], "10.00"); // now cached
    let key = format!("{}:product:{id}", app.settings.redis.prefix);
    let mut redis = app.services.deps.redis.clone();
    let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await.unwrap();
    assert!(cached.is_some(), "the first read fills the cache");
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    let settings = &app.settings.cache;
    assert!(ttl > 0 && ttl as u64 <= settings.product_ttl_secs.get() + settings.product_ttl_jitter_secs, "{ttl}");

    let patched = app.send_json(reqwest::Method::PATCH, &path, json!({"price": "12.50"}), admin.token()).await;
    assert_eq!(patched.data(200)["price"], "12.50");
    assert_eq!(app.get(&path, None).await.data(200)["price"], "12.50");

    let deleted = app.send_json(reqwest::Method::DELETE, &path, json!(null), admin.token()).await;
    assert_eq!(deleted.data(200)["deleted"], true);
    app.get(&path, None).await.error(404, "NOT_FOUND", None);
    let again = app.send_json(reqwest::Method::DELETE, &path, json!(null), admin.token()).await;
    again.error(404, "NOT_FOUND", None);
}

/// How many SETEX the server has run: the product cache's only write, so one per load from
/// Postgres.
async fn cache_fills(redis: &PrivateRedis) -> u64 {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_setex:calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn unknown_ids_are_remembered_briefly() {
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(|s| s.redis.url = SecretString::from(redis.url.clone())).await;
    let id = uuid::Uuid::now_v7();
    let negative_hits = r#"product_cache_requests_total{result="negative_hit"}"#;
    let before = metric(negative_hits);
    app.get(&format!("/api/v1/products/{id}"), None).await.error(404, "NOT_FOUND", None);
    let key = format!("{}:product:{id}", app.settings.redis.prefix);
    let mut conn = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(
        ttl > 0 && ttl as u64 <= app.settings.cache.negative_ttl_secs.get(),
        "negative entry with a short TTL: {ttl}"
    );
    assert_eq!(cache_fills(&redis).await, 1);
    for _ in 0..3 {
        app.get(&format!("/api/v1/products/{id}"), None).await.error(404, "NOT_FOUND", None);
    }
    assert_eq!(metric(negative_hits) - before, 3.0, "answered from the negative entry");
    assert_eq!(cache_fills(&redis).await, 1, "Postgres was asked once");
}

#[tokio::test]
async fn concurrent_readers_of_a_cold_product_all_get_it() {
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(|s| s.redis.url = SecretString::from(redis.url.clone())).await;
    let admin = app.admin().await;
    let id = app.product(&admin, "3.00", 9).await;
    let path = format!("/api/v1/products/{id}");
    assert_eq!(cache_fills(&redis).await, 0, "creating a product does not fill the cache");
    let replies = futures::future::join_all((0..40).map(|_| app.get(&path, None))).await;
    for reply in replies {
        assert_eq!(reply.data(200)["stock"], 9);
    }
    assert_eq!(cache_fills(&redis).await, 1, "one loader read Postgres for all forty");
}

#[tokio::test]
async fn reads_fall_through_to_postgres_while_redis_is_down() {
    let redis = TcpProxy::start("127.0.0.1:6379").await;
    let app = spawn_app_with(|s| s.redis.url = SecretString::from(format!("redis://{}", redis.addr))).await;
    let admin = app.admin().await;
    let id = app.product(&admin, "4.00", 6).await;
    let errors = r#"product_cache_requests_total{result="error"}"#;
    let before = metric(errors);
    redis.cut();
    let reply = app.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(reply.data(200)["stock"], 6);
    assert_eq!(reply.data(200)["price"], "4.00");
    app.get(&format!("/api/v1/products/{}", uuid::Uuid::now_v7()), None).await.error(404, "NOT_FOUND", None);
    assert!(metric(errors) - before >= 2.0, "both reads knew the cache was away");
    redis.restore();
}

#[tokio::test]
async fn shoppers_may_not_change_or_delete_products() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let id = app.product(&admin, "8.00", 2).await;
    let path = format!("/api/v1/products/{id}");
    let patch = json!({"price": "1.00"});
    app.send_json(reqwest::Method::PATCH, &path, patch.clone(), shopper.token()).await.error(403, "FORBIDDEN", None);
    app.send_json(reqwest::Method::DELETE, &path, json!(null), shopper.token()).await.error(403, "FORBIDDEN", None);
    app.send_json(reqwest::Method::PATCH, &path, patch, None).await.error(401, "UNAUTHORIZED", None);
    app.send_json(reqwest::Method::DELETE, &path, json!(null), None).await.error(401, "UNAUTHORIZED", None);
    let product = app.get(&path, None).await;
    assert_eq!(product.data(200)["price"], "8.00", "unchanged");
}

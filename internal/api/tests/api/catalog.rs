//! The catalog: admin-only writes, validation, paging and search, and the product cache.

use serde_json::json;

use crate::helpers::spawn_app;

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

#[tokio::test]
async fn unknown_ids_are_remembered_briefly() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7();
    app.get(&format!("/api/v1/products/{id}"), None).await.error(404, "NOT_FOUND", None);
    let key = format!("{}:product:{id}", app.settings.redis.prefix);
    let mut redis = app.services.deps.redis.clone();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!(
        ttl > 0 && ttl as u64 <= app.settings.cache.negative_ttl_secs.get(),
        "negative entry with a short TTL: {ttl}"
    );
    app.get(&format!("/api/v1/products/{id}"), None).await.error(404, "NOT_FOUND", None);
}

#[tokio::test]
async fn concurrent_readers_of_a_cold_product_all_get_it() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let id = app.product(&admin, "3.00", 9).await;
    let path = format!("/api/v1/products/{id}");
    let replies = futures::future::join_all((0..40).map(|_| app.get(&path, None))).await;
    for reply in replies {
        assert_eq!(reply.data(200)["stock"], 9);
    }
}

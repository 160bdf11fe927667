//! The HTTP pipeline: request ids, the error envelope for every kind of failure, CORS,
//! rate limits, timeouts and panics.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use api::middleware::{HttpPolicy, wrap};
use api::rate_limit::Limits;
use platform::config::RateLimitSettings;
use poem::test::TestClient;
use poem::{Route, get, handler};
use serde_json::json;

use crate::helpers::{Reply, TestApp, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_given_request_id_is_echoed_and_a_missing_one_is_made() {
    let app = spawn_app().await;
    let reply = app.send(app.client.get(app.url("/healthz")).header("x-request-id", "trace-me-42")).await;
    assert_eq!(reply.headers["x-request-id"], "trace-me-42");
    let reply = app.get("/healthz", None).await;
    let made = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");

    // An unusable id (spaces, too long) is replaced, never echoed; errors carry it too.
    for bad in ["has spaces", &"x".repeat(129)] {
        let reply = app.send(app.client.get(app.url("/api/v1/users/me")).header("x-request-id", bad)).await;
        let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad} -> {id}");
        assert_eq!(reply.error(401, "UNAUTHORIZED", None)["request_id"], id.as_str());
    }
}

async fn from(app: &TestApp, ip: &str) -> Reply {
    app.send(app.client.get(app.url("/healthz")).header("x-forwarded-for", format!("{ip}, 10.0.0.1"))).await
}

#[tokio::test]
async fn x_forwarded_for_picks_the_client_only_behind_a_trusted_proxy() {
    let limited = |trust: bool| {
        spawn_app_with(move |s| {
            s.http.trust_forwarded_for = trust;
            s.rate_limit.enabled = true;
            s.rate_limit.ip_per_sec = 1.try_into().unwrap();
            s.rate_limit.ip_burst = 1.try_into().unwrap();
        })
    };
    let trusted = limited(true).await;
    assert_eq!(from(&trusted, "203.0.113.1").await.status, 200);
    from(&trusted, "203.0.113.1").await.error(429, "RATE_LIMITED", None);
    assert_eq!(from(&trusted, "203.0.113.2").await.status, 200, "another client behind the proxy");

    // Not behind a trusted proxy: the header is anyone's to forge, so the peer address counts.
    let direct = limited(false).await;
    assert_eq!(from(&direct, "203.0.113.1").await.status, 200);
    from(&direct, "203.0.113.2").await.error(429, "RATE_LIMITED", None);
}

#[tokio::test]
async fn a_request_from_a_disallowed_origin_gets_no_cors_grant() {
    let app = spawn_app_with(|s| s.http.cors_origins = vec!["https://shop.example".into()]).await;
    let request = app.client.get(app.url("/healthz")).header("origin", "https://evil.example");
    let reply = app.send(request).await;
    let body = reply.error(400, "INVALID_REQUEST", None);
    assert!(body["message"].as_str().unwrap().contains("origin"), "{body}");
    assert!(reply.headers.get("access-control-allow-origin").is_none());
    let allowed = app.send(app.client.get(app.url("/healthz")).header("origin", "https://shop.example")).await;
    assert_eq!(allowed.headers["access-control-allow-origin"], "https://shop.example");
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "1.00", 5).await;
    // Hold the product's row lock, so an order for it waits inside the server.
    let db = app.db.clone();
    let lock = sea_orm::TransactionTrait::begin(&db).await.unwrap();
    let sql = format!("SELECT id FROM products WHERE id = '{product}' FOR UPDATE");
    sea_orm::ConnectionTrait::execute_unprepared(&lock, &sql).await.unwrap();
    let order = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&shopper.access)
        .json(&json!({"items": [{"product_id": product, "quantity": 2}]}))
        .send();
    let in_flight = tokio::spawn(order);
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    app.eventually(30, "the order waits for the row lock", || async { app.scalar(waiting).await == 1 }).await;

    let healthz = app.url("/healthz");
    let stopping = tokio::spawn(app.shutdown());
    let closed = || async { reqwest::Client::new().get(&healthz).send().await.is_err() };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !closed().await {
        assert!(std::time::Instant::now() < deadline, "the server stops accepting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.commit().await.unwrap();
    let response = in_flight.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(response.status(), 201);
    stopping.await.unwrap().expect("clean shutdown");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_the_envelope() {
    let app = spawn_app().await;
    app.get("/api/v1/nothing-here", None).await.error(404, "NOT_FOUND", None);
    app.get("/api/v1/auth/login", None).await.error(405, "METHOD_NOT_ALLOWED", None);
}

#[tokio::test]
async fn a_bad_query_parameter_names_itself() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let reply = app.get("/api/v1/admin/users?page_size=lots", admin.token()).await;
    let body = reply.error(400, "INVALID_REQUEST", Some("page_size"));
    assert_eq!(body["message"], "page_size must be a whole number (0 or more)");
}

#[tokio::test]
async fn cors_preflight_allows_the_configured_origin() {
    let app = spawn_app_with(|s| s.http.cors_origins = vec!["https://shop.example".into()]).await;
    let request = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,authorization");
    let reply = app.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["access-control-allow-origin"], "https://shop.example");

    let other = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST");
    let reply = app.send(other).await;
    assert!(reply.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn errors_keep_their_envelope_for_cross_origin_requests() {
    let app = spawn_app_with(|s| s.http.cors_origins = vec!["https://shop.example".into()]).await;
    let request = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("origin", "https://shop.example")
        .json(&json!({"email": "nobody@example.com", "password": "whatever1"}));
    let reply = app.send(request).await;
    reply.error(401, "INVALID_CREDENTIALS", None);
    assert_eq!(reply.headers["access-control-allow-origin"], "https://shop.example");
    let missing = app.client.get(app.url("/api/v1/users/me")).header("origin", "https://shop.example");
    app.send(missing).await.error(401, "UNAUTHORIZED", None);
}

#[tokio::test]
async fn login_is_rate_limited_per_ip_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.rate_limit.enabled = true;
        s.rate_limit.ip_per_sec = 1.try_into().unwrap();
        s.rate_limit.ip_burst = 3.try_into().unwrap();
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let reply = app.login("nobody@example.com", "whatever1").await;
        statuses.push(reply.status.as_u16());
        if reply.status == 429 {
            limited = Some(reply);
        }
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    let limited = limited.expect("a request beyond the burst is refused");
    limited.error(429, "RATE_LIMITED", None);
    let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_parsed() {
    let app = spawn_app_with(|s| s.http.body_limit_bytes = 1024.try_into().unwrap()).await;
    let big = json!({"email": "a@example.com", "password": "x".repeat(5000)});
    let reply = app.post("/api/v1/auth/register", big, None).await;
    reply.error(413, "PAYLOAD_TOO_LARGE", None);
    assert_eq!(reply.headers["connection"], "close", "the unread rest of the body ends the connection");

    // Without a Content-Length (chunked), the limit cuts the body off while reading it.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"{\"email\":\"".to_vec()), Ok(vec![b'a'; 4000]), Ok(b"\"}".to_vec())];
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    app.post_raw("/api/v1/auth/register", body).await.error(413, "PAYLOAD_TOO_LARGE", None);
}

pub(crate) fn policy(timeout: Duration) -> HttpPolicy {
    let limits = RateLimitSettings {
        enabled: false,
        ip_per_sec: NonZeroU32::MIN,
        ip_burst: NonZeroU32::MIN,
        user_per_sec: NonZeroU32::MIN,
        user_burst: NonZeroU32::MIN,
        idle_secs: 60.try_into().unwrap(),
    };
    HttpPolicy {
        limits: Arc::new(Limits::new(&limits)),
        sold_out: Arc::new(service::sales::SoldOutFlags::new(Duration::from_secs(1))),
        timeout,
        body_limit: 1024,
        cors_origins: vec!["*".into()],
        trust_forwarded_for: false,
    }
}

#[handler]
fn boom() -> &'static str {
    panic!("a bug in a handler")
}

#[handler]
async fn slow() -> &'static str {
    std::future::pending::<()>().await;
    "never"
}

#[tokio::test]
async fn a_panic_becomes_a_500_envelope_without_details() {
    let client = TestClient::new(wrap(Route::new().at("/boom", get(boom)), policy(Duration::from_secs(5))));
    let response = client.get("/boom").header("x-request-id", "panic-1").send().await;
    response.assert_status(poem::http::StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = serde_json::from_str(&response.0.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(body["error"], "INTERNAL");
    assert_eq!(body["message"], "internal error");
    assert_eq!(body["request_id"], "panic-1");
    assert!(!body.to_string().contains("a bug in a handler"));
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_cut_off_with_503() {
    let client = TestClient::new(wrap(Route::new().at("/slow", get(slow)), policy(Duration::from_millis(100))));
    let response = client.get("/slow").send().await;
    response.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&response.0.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(body["error"], "REQUEST_TIMEOUT");
}

//! Registration, login, refresh rotation, logout, roles, and attacks on the tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use crate::helpers::{jwt_secret, spawn_app};

#[tokio::test]
async fn registering_returns_the_user_without_secrets() {
    let app = spawn_app().await;
    let reply = app.register("Ann@Example.com", "correct horse").await;
    let user = reply.data(201);
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["role"], "user");
    assert!(user["id"].as_str().unwrap().len() == 36);
    assert!(user.get("password_hash").is_none());
    assert!(!reply.body.to_string().contains("correct horse"));
}

#[tokio::test]
async fn an_email_can_be_registered_once_in_any_case() {
    let app = spawn_app().await;
    app.register("bob@example.com", "correct horse").await.data(201);
    app.register("BOB@example.com", "another pass").await.error(409, "EMAIL_TAKEN", None);
}

#[tokio::test]
async fn bad_registration_input_names_the_field() {
    let app = spawn_app().await;
    app.register("not-an-email", "correct horse").await.error(400, "INVALID_REQUEST", Some("email"));
    app.register("carol@example.com", "short").await.error(400, "INVALID_REQUEST", Some("password"));
    app.post("/api/v1/auth/register", json!({"email": "carol@example.com"}), None).await.error(
        400,
        "INVALID_REQUEST",
        Some("password"),
    );
    app.post("/api/v1/auth/register", json!({"email": 42, "password": "correct horse"}), None).await.error(
        400,
        "INVALID_REQUEST",
        Some("email"),
    );
    app.post_raw("/api/v1/auth/register", "{\"email\": \"carol@").await.error(400, "INVALID_REQUEST", Some("body"));
    app.post_raw("/api/v1/auth/register", "").await.error(400, "INVALID_REQUEST", Some("email"));
    app.post_raw("/api/v1/auth/register", "[1, 2]").await.error(400, "INVALID_REQUEST", Some("body"));
    let form = app.client.post(app.url("/api/v1/auth/register")).header("content-type", "text/plain").body("hi");
    app.send(form).await.error(400, "INVALID_REQUEST", Some("Content-Type"));
}

#[tokio::test]
async fn login_does_not_reveal_which_accounts_exist() {
    let app = spawn_app().await;
    app.register("dave@example.com", "correct horse").await.data(201);
    let unknown = app.login("nobody@example.com", "correct horse").await;
    let wrong = app.login("dave@example.com", "wrong horse!").await;
    unknown.error(401, "INVALID_CREDENTIALS", None);
    wrong.error(401, "INVALID_CREDENTIALS", None);
    assert_eq!(unknown.body["message"], wrong.body["message"]);
}

#[tokio::test]
async fn login_returns_a_bearer_pair_that_opens_users_me() {
    let app = spawn_app().await;
    app.register("erin@example.com", "correct horse").await.data(201);
    let tokens = app.login(" ERIN@example.com ", "correct horse").await.data(200).clone();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], app.settings.jwt.access_ttl_secs.get());
    let me = app.get("/api/v1/users/me", tokens["access_token"].as_str()).await;
    assert_eq!(me.data(200)["email"], "erin@example.com");
}

#[tokio::test]
async fn refreshing_rotates_the_token_and_a_replay_revokes_the_family() {
    let app = spawn_app().await;
    let session = app.shopper().await;
    let first = app.post("/api/v1/auth/refresh", json!({"refresh_token": session.refresh}), None).await;
    let second_refresh = first.data(200)["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, session.refresh);
    assert!(app.get("/api/v1/users/me", first.data(200)["access_token"].as_str()).await.status.is_success());

    // The spent token is replayed (stolen?): refused, and the whole login is revoked.
    app.post("/api/v1/auth/refresh", json!({"refresh_token": session.refresh}), None).await.error(
        401,
        "INVALID_REFRESH_TOKEN",
        None,
    );
    app.post("/api/v1/auth/refresh", json!({"refresh_token": second_refresh}), None).await.error(
        401,
        "INVALID_REFRESH_TOKEN",
        None,
    );
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_have_one_winner() {
    let app = spawn_app().await;
    let session = app.shopper().await;
    let body = json!({"refresh_token": session.refresh});
    let (a, b) = tokio::join!(
        app.post("/api/v1/auth/refresh", body.clone(), None),
        app.post("/api/v1/auth/refresh", body.clone(), None)
    );
    let (winner, loser) = if a.status == 200 { (a, b) } else { (b, a) };
    assert!(winner.data(200)["refresh_token"].is_string(), "one refresh wins: {}", winner.body);
    loser.error(401, "INVALID_REFRESH_TOKEN", None);
}

#[tokio::test]
async fn logout_ends_the_login() {
    let app = spawn_app().await;
    let session = app.shopper().await;
    let reply = app.post("/api/v1/auth/logout", json!({"refresh_token": session.refresh}), None).await;
    assert_eq!(reply.data(200)["logged_out"], true);
    app.post("/api/v1/auth/refresh", json!({"refresh_token": session.refresh}), None).await.error(
        401,
        "INVALID_REFRESH_TOKEN",
        None,
    );
    app.post("/api/v1/auth/logout", json!({"refresh_token": "not-a-token"}), None).await.error(
        401,
        "INVALID_REFRESH_TOKEN",
        None,
    );
}

#[tokio::test]
async fn the_admin_list_is_for_admins_only() {
    let app = spawn_app().await;
    let shopper = app.shopper().await;
    app.get("/api/v1/admin/users", shopper.token()).await.error(403, "FORBIDDEN", None);
    app.get("/api/v1/admin/users", None).await.error(401, "UNAUTHORIZED", None);

    let admin = app.admin().await;
    for i in 0..3 {
        app.register(&format!("user{i}@example.com"), "correct horse").await.data(201);
    }
    let page = app.get("/api/v1/admin/users?page=1&page_size=2&sort=email,asc", admin.token()).await;
    let data = page.data(200);
    assert_eq!(data["total"], 5);
    assert_eq!(data["page_size"], 2);
    let emails: Vec<&str> = data["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
    let mut sorted = emails.clone();
    sorted.sort();
    assert_eq!(emails, sorted);
    assert_eq!(emails.len(), 2);

    app.get("/api/v1/admin/users?sort=password_hash,asc", admin.token()).await.error(
        400,
        "INVALID_REQUEST",
        Some("sort"),
    );
    app.get("/api/v1/admin/users?page_size=101", admin.token()).await.error(400, "INVALID_REQUEST", Some("page_size"));
}

fn forge(claims: serde_json::Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[tokio::test]
async fn forged_and_broken_tokens_are_refused() {
    let app = spawn_app().await;
    let session = app.shopper().await;
    let now = chrono::Utc::now().timestamp();
    let secret = jwt_secret(&app);
    let claims = |role: &str, exp: i64| json!({"sub": session.user_id, "role": role, "iat": now - 10, "exp": exp, "iss": "spike"});

    // A valid token for comparison.
    assert!(app.get("/api/v1/users/me", Some(&forge(claims("user", now + 60), &secret))).await.status.is_success());

    let expired = forge(claims("user", now - 1), &secret);
    let other_key = forge(claims("admin", now + 60), "some-other-secret-that-is-long-enough");
    let mut tampered = session.access.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("admin", now + 60).to_string());
    let alg_none = format!("{header}.{payload}.");
    let mut escalated_parts: Vec<&str> = session.access.split('.').collect();
    let admin_payload = URL_SAFE_NO_PAD.encode(claims("admin", now + 60).to_string());
    escalated_parts[1] = &admin_payload;
    let escalated = escalated_parts.join(".");

    for (name, token) in [
        ("expired", expired.as_str()),
        ("other key", other_key.as_str()),
        ("tampered signature", tampered.as_str()),
        ("alg none", alg_none.as_str()),
        ("edited payload", escalated.as_str()),
        ("garbage", "not.a.jwt"),
    ] {
        let reply = app.get("/api/v1/users/me", Some(token)).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        reply.error(401, "UNAUTHORIZED", None);
        app.get("/api/v1/admin/users", Some(token)).await.error(401, "UNAUTHORIZED", None);
    }
}

#[tokio::test]
async fn admin_create_promotes_an_existing_user() {
    let app = spawn_app().await;
    let session = app.shopper().await;
    let (user, created) = app.services.auth.create_admin(&session.email, "ignored password").await.unwrap();
    assert!(!created);
    assert_eq!(user.role, domain::Role::Admin);
    let tokens = app.login(&session.email, "correct horse").await;
    let me = app.get("/api/v1/users/me", tokens.data(200)["access_token"].as_str()).await;
    assert_eq!(me.data(200)["role"], "admin");
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused() {
    let app = spawn_app().await;
    let session = app.shopper().await;
    let sql = format!(
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE user_id = '{}'",
        session.user_id
    );
    sea_orm::ConnectionTrait::execute_unprepared(&app.db, &sql).await.unwrap();
    app.post("/api/v1/auth/refresh", json!({"refresh_token": session.refresh}), None).await.error(
        401,
        "INVALID_REFRESH_TOKEN",
        None,
    );
}

#[tokio::test]
async fn every_signed_in_route_refuses_a_request_without_a_token() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7();
    let cases = [
        (reqwest::Method::GET, "/api/v1/orders".to_owned(), json!(null)),
        (reqwest::Method::POST, "/api/v1/orders".to_owned(), json!({"items": [{"product_id": id, "quantity": 1}]})),
        (reqwest::Method::GET, format!("/api/v1/orders/{id}"), json!(null)),
        (reqwest::Method::POST, format!("/api/v1/orders/{id}/pay"), json!(null)),
        (reqwest::Method::POST, format!("/api/v1/orders/{id}/cancel"), json!(null)),
        (reqwest::Method::POST, format!("/api/v1/sales/{id}/purchase"), json!({"quantity": 1})),
        (reqwest::Method::GET, format!("/api/v1/reservations/{id}"), json!(null)),
        (reqwest::Method::POST, format!("/api/v1/auctions/{id}/bids"), json!({"amount": "10.00"})),
        (reqwest::Method::GET, "/api/v1/users/me".to_owned(), json!(null)),
    ];
    for (method, path, body) in cases {
        let reply = app.send_json(method.clone(), &path, body, None).await;
        assert_eq!(reply.status, 401, "{method} {path}: {}", reply.body);
        reply.error(401, "UNAUTHORIZED", None);
    }
}

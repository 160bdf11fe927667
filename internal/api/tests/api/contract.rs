//! The contract at the edge: bad input of every kind gets a 4xx naming the field, the
//! OpenAPI document carries the real rules, and a keep-alive connection survives an early
//! refusal.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use crate::sales::{buy, sale};

#[tokio::test]
async fn nul_and_other_control_characters_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let product = app.product(&admin, "10.00", 5).await;

    let path = format!("/api/v1/products/{product}");
    let reply = app.send_json(reqwest::Method::PATCH, &path, json!({"title": "Phone\u{0}X"}), admin.token()).await;
    let body = reply.error(400, "INVALID_REQUEST", Some("title"));
    assert_eq!(body["message"], "title must not contain control characters");
    app.login("ann\u{0}@example.com", "whatever1").await.error(400, "INVALID_REQUEST", Some("email"));
    let escape = json!({"email": "ann@example.com", "password": "correct\u{1b}[31mhorse"});
    app.post("/api/v1/auth/register", escape, None).await.error(400, "INVALID_REQUEST", Some("password"));
    let line = json!({"items": [{"product_id": product, "quantity": 1, "note\u{7f}": 1}]});
    app.post("/api/v1/orders", line, admin.token()).await.error(400, "INVALID_REQUEST", Some("items[0].note\u{7f}"));
    app.get("/api/v1/products?q=a%00b", None).await.error(400, "INVALID_REQUEST", Some("q"));

    // Line breaks and tabs are text, not control: a description may hold them.
    let multiline = json!({"title": "Lamp", "description": "Brass.\n\tWarm light.", "price": "5.00", "stock": 1});
    let created = app.post("/api/v1/products", multiline, admin.token()).await;
    assert_eq!(created.data(201)["description"], "Brass.\n\tWarm light.");
}

#[tokio::test]
async fn a_body_that_is_not_json_text_is_refused_naming_the_body() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"email\":\"\xff\xfe\",\"password\":\"12345678\"}".to_vec()),
        ("a lone surrogate", br#"{"email":"\ud800","password":"12345678"}"#.to_vec()),
        ("deep nesting", format!("{{\"email\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes()),
        ("a number beyond any float", br#"{"email":1e999,"password":"12345678"}"#.to_vec()),
        ("not an object", br#"["ann@example.com"]"#.to_vec()),
        ("trailing garbage", br#"{"email":"a@example.com","password":"12345678"} x"#.to_vec()),
    ];
    for (what, bytes) in cases {
        let reply = app.post_raw("/api/v1/auth/register", bytes).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.body);
        reply.error(400, "INVALID_REQUEST", Some("body"));
    }
}

#[tokio::test]
async fn numbers_out_of_range_and_wrong_types_are_said_in_the_api_words() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sale = sale(&app, &admin, 5, 1, 60).await;
    let purchase = format!("/api/v1/sales/{sale}/purchase");
    let cases = [
        (json!({"quantity": "1"}), "quantity must be an integer"),
        (json!({"quantity": 1.5}), "quantity must be an integer"),
        (json!({"quantity": 9_223_372_036_854_775_808_u64}), "quantity is out of range"),
        (json!({"quantity": 10_001}), "quantity must be between 1 and 10000"),
        (json!({"quantity": null}), "quantity must be an integer"),
    ];
    for (body, message) in cases {
        let reply = app.post(&purchase, body, shopper.token()).await;
        assert_eq!(reply.error(400, "INVALID_REQUEST", Some("quantity"))["message"], message);
    }
    let reply = app.get("/api/v1/sales/not-a-uuid", None).await;
    assert_eq!(reply.error(400, "INVALID_REQUEST", Some("id"))["message"], "id must be a UUID");
    let reply = app.get("/api/v1/products?page_size=101", None).await;
    reply.error(400, "INVALID_REQUEST", Some("page_size"));
    let reply = app.get("/api/v1/products?page=-1", None).await;
    assert_eq!(reply.error(400, "INVALID_REQUEST", Some("page"))["message"], "page must be a whole number (0 or more)");
    let stock = json!({"title": "Too many", "price": "1.00", "stock": 100_000_001});
    app.post("/api/v1/products", stock, admin.token()).await.error(400, "INVALID_REQUEST", Some("stock"));
    let when = json!({"product_id": uuid::Uuid::now_v7(), "price": "1.00", "stock": 1, "start_at": "soon",
                      "end_at": "2026-01-01T00:00:00Z", "payment_timeout_secs": 60});
    let reply = app.post("/api/v1/sales", when, admin.token()).await;
    let message = &reply.error(400, "INVALID_REQUEST", Some("start_at"))["message"];
    assert_eq!(message, "start_at must be an RFC 3339 date-time such as 2026-11-23T18:00:00Z");
}

#[tokio::test]
async fn an_unknown_field_is_refused_where_the_schema_forbids_it() {
    let app = spawn_app().await;
    let body = json!({"email": "eve@example.com", "password": "correct horse", "role": "admin"});
    let reply = app.post("/api/v1/auth/register", body, None).await;
    let message = reply.error(400, "INVALID_REQUEST", Some("role"))["message"].as_str().unwrap().to_owned();
    assert_eq!(message, "role is not a field of this request; expected email or password");
    let shopper = app.shopper().await;
    let typo = json!({"items": [{"product_id": uuid::Uuid::now_v7(), "quantiy": 2}]});
    app.post("/api/v1/orders", typo, shopper.token()).await.error(400, "INVALID_REQUEST", Some("items[0].quantiy"));
}

async fn openapi(app: &TestApp) -> Value {
    let reply = app.get("/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    reply.body
}

#[tokio::test]
async fn the_openapi_document_carries_the_rules_the_server_applies() {
    let app = spawn_app().await;
    let spec = openapi(&app).await;
    let purchase = &spec["paths"]["/sales/{id}/purchase"]["post"];
    let statuses: Vec<&str> = purchase["responses"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(statuses, ["202", "400", "401", "404", "409", "429", "503"]);
    let conflict = purchase["responses"]["409"]["description"].as_str().unwrap();
    for name in ["SOLD_OUT", "LIMIT_REACHED", "NOT_ACTIVE"] {
        assert!(conflict.contains(name), "{conflict}");
    }
    assert_eq!(purchase["requestBody"]["required"], false, "an empty body means quantity 1");

    let schemas = &spec["components"]["schemas"];
    let quantity = &schemas["PurchaseRequest"]["properties"]["quantity"];
    assert_eq!((quantity["minimum"].as_i64(), quantity["maximum"].as_i64()), (Some(1), Some(10_000)));
    assert_eq!(schemas["PurchaseRequest"]["additionalProperties"], false);
    assert_eq!(schemas["CreateProductRequest"]["properties"]["price"]["pattern"], domain::money::MONEY_PATTERN);
    assert_eq!(schemas["CreateProductRequest"]["properties"]["title"]["maxLength"], 200);
    assert_eq!(schemas["RegisterRequest"]["properties"]["email"]["format"], "email");
    assert_eq!(schemas["CreateSaleRequest"]["properties"]["start_at"]["format"], "date-time");
    assert_eq!(
        schemas["CreateSaleRequest"]["required"].as_array().unwrap().len(),
        6,
        "{}",
        schemas["CreateSaleRequest"]
    );
    assert_eq!(
        schemas["SaleResponse"]["properties"]["status"]["enum"],
        json!(["scheduled", "active", "sold_out", "ended"])
    );

    let list = spec["paths"]["/products"]["get"]["parameters"].as_array().unwrap();
    let param = |name: &str| list.iter().find(|p| p["name"] == name).unwrap()["schema"].clone();
    assert_eq!(param("page_size")["maximum"], 100);
    let sort = param("sort")["enum"].as_array().unwrap().clone();
    assert!(sort.contains(&json!("price,desc")) && !sort.contains(&json!("password_hash")), "{sort:?}");

    let docs = app.client.get(app.url("/docs")).send().await.unwrap().text().await.unwrap();
    assert!(docs.contains(domain::money::MONEY_PATTERN.replace('\\', "\\\\").as_str()), "Swagger UI shows the rules");
}

#[tokio::test]
async fn every_request_body_example_is_accepted_as_it_stands() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let spec = openapi(&app).await;
    let example = |name: &str| spec["components"]["schemas"][name]["example"].clone();
    app.post("/api/v1/auth/register", example("RegisterRequest"), None).await.data(201);
    app.post("/api/v1/auth/login", example("LoginRequest"), None).await.data(200);
    let product = app.post("/api/v1/products", example("CreateProductRequest"), admin.token()).await;
    let product = product.data(201)["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/products/{product}");
    app.send_json(reqwest::Method::PATCH, &path, example("UpdateProductRequest"), admin.token()).await.data(200);
    let mut sale = example("CreateSaleRequest");
    sale["product_id"] = json!(product);
    app.post("/api/v1/sales", sale, admin.token()).await.data(201);
    let mut order = example("CreateOrderRequest");
    order["items"][0]["product_id"] = json!(product);
    app.post("/api/v1/orders", order, admin.token()).await.data(201);
    app.post("/api/v1/auctions", example("CreateAuctionRequest"), admin.token()).await.data(201);
}

/// One HTTP/1.1 exchange on a raw connection: the headers in one write and, a moment later,
/// the body in another, as Python's `http.client` and many SDKs send a POST. Returns the
/// status and the `Connection` header, or `None` when the connection was dropped.
async fn exchange(stream: &mut TcpStream, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: spike\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    // Gives the server time to answer before the body is there, as it would on a network.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(body.as_bytes()).await.ok()?;
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let header = |name: &str| {
                head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned)).unwrap_or_default()
            };
            let length: usize = header("content-length").parse().unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                return Some((status, header("connection")));
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.ok()?.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test]
async fn a_keep_alive_connection_survives_every_early_refusal() {
    let app = spawn_app_with(|s| s.sales.sold_out_flag_ms = 60_000).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sold_out = sale(&app, &admin, 1, 1, 60).await;
    buy(&app, &shopper, &sold_out, 1).await.data(202);
    buy(&app, &shopper, &sold_out, 1).await.error(409, "SOLD_OUT", None);
    let open = sale(&app, &admin, 5, 1, 60).await;

    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let token = Some(shopper.access.as_str());
    let refusals = [
        ("the sold-out gate", format!("/api/v1/sales/{sold_out}/purchase"), None, r#"{"quantity":1}"#, 409),
        ("no token", format!("/api/v1/sales/{open}/purchase"), None, r#"{"quantity":1}"#, 401),
        ("a bad path id", "/api/v1/sales/nope/purchase".to_owned(), token, r#"{"quantity":1}"#, 400),
        ("a bad body", format!("/api/v1/sales/{open}/purchase"), token, r#"{"quantity":"x"}"#, 400),
        ("the per-user limit", format!("/api/v1/sales/{open}/purchase"), token, r#"{"quantity":2}"#, 409),
        ("a purchase", format!("/api/v1/sales/{open}/purchase"), token, r#"{"quantity":1}"#, 202),
    ];
    for (what, path, token, body, status) in refusals {
        let answer = exchange(&mut stream, &path, token, body).await;
        assert_eq!(answer.as_ref().map(|a| a.0), Some(status), "{what}: the connection was dropped or misanswered");
        assert_ne!(answer.unwrap().1, "close", "{what}");
    }
}

/// A key that is not ASCII was read as no key at all: two purchases, no protection.
#[tokio::test]
async fn an_idempotency_key_that_is_not_ascii_is_refused_naming_the_header() {
    let app = crate::helpers::spawn_app().await;
    let shopper = app.shopper().await;
    let sale = uuid::Uuid::now_v7();
    let key = reqwest::header::HeaderValue::from_bytes("clé-1".as_bytes()).unwrap();
    let request = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(shopper.token().unwrap())
        .header("Idempotency-Key", key)
        .json(&serde_json::json!({"quantity": 1}));
    app.send(request).await.error(400, "INVALID_REQUEST", Some("Idempotency-Key"));
}

//! The OpenAPI document clients read at `/openapi.json` and in Swagger UI: poem-openapi's,
//! completed with what its derives cannot say — the rules of each field, the values of each
//! enum, which errors each operation can answer, and an example for each request body.
//!
//! I keep these rules here rather than in `#[oai(validator(..))]` attributes because the
//! attributes take literals only; here they come from the parsers' own constants (the money
//! pattern, the lengths, the ranges, the enums' names), so the document cannot drift from
//! what the server accepts. A rule that names a schema, field or operation the document
//! does not have panics when the routes are built, so every test run checks the table.

use domain::auction::{AuctionStatus, MAX_EXTEND_SECS};
use domain::catalog::MAX_STOCK;
use domain::idempotency::MAX_KEY_LEN;
use domain::money::MONEY_PATTERN;
use domain::order::{MAX_ITEMS, MAX_QUANTITY, OrderKind, OrderStatus};
use domain::page::{DESCRIPTION_MAX_CHARS, MAX_PAGE, MAX_PAGE_SIZE, SEARCH_MAX_CHARS, TITLE_MAX_CHARS};
use domain::reservation::{FailureReason, ReservationStatus};
use domain::sale::{MAX_PAYMENT_TIMEOUT_SECS, MAX_PER_USER_LIMIT, MAX_SALE_STOCK, MAX_STOCK_BUCKETS, SaleStatus};
use domain::user::{Password, Role};
use domain::{Sort, user};
use serde_json::{Map, Value, json};

use crate::error::{self as e, Code};

/// Text without control characters other than tab, line feed and carriage return
/// (`domain::page::printable`).
const TEXT: &str = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$";
/// The same, holding at least one character that is not white space (a title).
const NON_BLANK_TEXT: &str = concat!(
    r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*",
    r"[^\s\u0000-\u001F\u007F-\u009F]",
    r"[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
);

/// The document poem-openapi wrote, completed.
pub fn complete(raw: &str) -> String {
    let mut spec: Value = serde_json::from_str(raw).expect("poem-openapi writes JSON");
    for (name, schema) in schemas(&mut spec).iter_mut() {
        if name.ends_with("Request") {
            close_request_object(schema);
        } else {
            mark_optional_nullable(schema);
        }
    }
    for (schema, field, rules) in field_rules() {
        merge(property(&mut spec, schema, field), rules);
    }
    for (schema, example) in examples() {
        object(schema_mut(&mut spec, schema)).insert("example".into(), example);
    }
    for (path, method, operation) in operations(&mut spec) {
        complete_parameters(&path, operation);
        complete_responses(&path, &method, operation);
    }
    add_links(&mut spec);
    spec.to_string()
}

/// A request body may hold only its listed fields (the structs deny unknown ones), and a
/// `null` in an optional field without a default means the same as leaving it out.
fn close_request_object(schema: &mut Value) {
    let schema = object(schema);
    schema.insert("additionalProperties".into(), Value::Bool(false));
    let required: Vec<Value> = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            let property = object(property);
            let optional = !required.contains(&Value::String(name.clone()));
            if optional && !property.contains_key("default") && !property.contains_key("$ref") {
                property.insert("nullable".into(), Value::Bool(true));
            }
        }
    }
}

/// An answer writes an absent optional field as `null` (`current_price` before the first
/// bid).
fn mark_optional_nullable(schema: &mut Value) {
    let schema = object(schema);
    let required: Vec<Value> = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            if !required.contains(&Value::String(name.clone())) {
                object(property).insert("nullable".into(), Value::Bool(true));
            }
        }
    }
}

/// An operation whose answer supplies the `id` of others: (path, method, status, where the
/// id is in the answer, [(link name, path, method)]).
type Link =
    (&'static str, &'static str, &'static str, &'static str, &'static [(&'static str, &'static str, &'static str)]);

/// OpenAPI links: which answer supplies the id another operation needs, so a client
/// generator (and schemathesis's stateful phase) can follow a flow: create a sale, buy in
/// it, poll the reservation.
const LINKS: &[Link] = &[
    (
        "/products",
        "post",
        "201",
        "$response.body#/data/id",
        &[("GetProduct", "/products/{id}", "get"), ("UpdateProduct", "/products/{id}", "patch")],
    ),
    (
        "/sales",
        "post",
        "201",
        "$response.body#/data/id",
        &[("GetSale", "/sales/{id}", "get"), ("Purchase", "/sales/{id}/purchase", "post")],
    ),
    (
        "/sales/{id}/purchase",
        "post",
        "202",
        "$response.body#/data/reservation_id",
        &[("GetReservation", "/reservations/{id}", "get")],
    ),
    (
        "/orders",
        "post",
        "201",
        "$response.body#/data/id",
        &[
            ("GetOrder", "/orders/{id}", "get"),
            ("PayOrder", "/orders/{id}/pay", "post"),
            ("CancelOrder", "/orders/{id}/cancel", "post"),
        ],
    ),
    (
        "/auctions",
        "post",
        "201",
        "$response.body#/data/id",
        &[
            ("GetAuction", "/auctions/{id}", "get"),
            ("Bid", "/auctions/{id}/bids", "post"),
            ("BuyNow", "/auctions/{id}/buy-now", "post"),
            ("ListBids", "/auctions/{id}/bids", "get"),
        ],
    ),
];

fn add_links(spec: &mut Value) {
    for (path, method, status, expression, targets) in LINKS {
        let links: Map<String, Value> = targets
            .iter()
            .map(|(name, to_path, to_method)| {
                let reference = format!("#/paths/{}/{to_method}", to_path.replace('~', "~0").replace('/', "~1"));
                assert!(
                    spec.pointer(&reference[1..]).is_some(),
                    "a link points to {to_method} {to_path}, which is missing"
                );
                (name.to_string(), json!({"operationRef": reference, "parameters": {"id": expression}}))
            })
            .collect();
        let response = spec
            .pointer_mut(&format!("/paths/{}/{method}/responses/{status}", path.replace('/', "~1")))
            .unwrap_or_else(|| panic!("a link starts at {method} {path} {status}, which is missing"));
        object(response).insert("links".into(), Value::Object(links));
    }
}

fn money() -> Value {
    json!({"pattern": MONEY_PATTERN, "example": "199.00"})
}

fn title() -> Value {
    json!({"minLength": 1, "maxLength": TITLE_MAX_CHARS, "pattern": NON_BLANK_TEXT})
}

fn description() -> Value {
    json!({"maxLength": DESCRIPTION_MAX_CHARS, "pattern": TEXT})
}

fn range(minimum: i64, maximum: i64) -> Value {
    json!({"minimum": minimum, "maximum": maximum})
}

fn names(names: &[&str]) -> Value {
    json!({ "enum": names })
}

/// (schema, field, keywords to add).
fn field_rules() -> Vec<(&'static str, &'static str, Value)> {
    let text = json!({ "pattern": TEXT });
    let password = json!({"minLength": Password::MIN_CHARS, "maxLength": Password::MAX_CHARS, "pattern": TEXT});
    let payment_timeout = range(1, MAX_PAYMENT_TIMEOUT_SECS);
    vec![
        ("RegisterRequest", "email", json!({"format": "email", "maxLength": user::EMAIL_MAX_CHARS})),
        ("RegisterRequest", "password", password),
        ("LoginRequest", "email", text.clone()),
        ("LoginRequest", "password", text.clone()),
        ("RefreshRequest", "refresh_token", text),
        ("CreateProductRequest", "title", title()),
        ("CreateProductRequest", "description", description()),
        ("CreateProductRequest", "price", money()),
        ("CreateProductRequest", "stock", range(0, MAX_STOCK)),
        ("UpdateProductRequest", "title", title()),
        ("UpdateProductRequest", "description", description()),
        ("UpdateProductRequest", "price", money()),
        ("UpdateProductRequest", "stock", range(0, MAX_STOCK)),
        ("CreateSaleRequest", "price", money()),
        ("CreateSaleRequest", "stock", range(1, MAX_SALE_STOCK)),
        ("CreateSaleRequest", "per_user_limit", range(1, MAX_PER_USER_LIMIT)),
        ("CreateSaleRequest", "payment_timeout_secs", payment_timeout.clone()),
        ("CreateSaleRequest", "stock_buckets", range(1, MAX_STOCK_BUCKETS)),
        ("PurchaseRequest", "quantity", range(1, MAX_QUANTITY)),
        ("OrderLineRequest", "quantity", range(1, MAX_QUANTITY)),
        ("CreateOrderRequest", "items", json!({"minItems": 1, "maxItems": MAX_ITEMS})),
        ("CreateAuctionRequest", "title", title()),
        ("CreateAuctionRequest", "description", description()),
        ("CreateAuctionRequest", "start_price", money()),
        ("CreateAuctionRequest", "min_increment", money()),
        ("CreateAuctionRequest", "reserve_price", money()),
        ("CreateAuctionRequest", "buy_now_price", money()),
        ("CreateAuctionRequest", "extend_window_secs", range(0, MAX_EXTEND_SECS)),
        ("CreateAuctionRequest", "extend_by_secs", range(0, MAX_EXTEND_SECS)),
        ("CreateAuctionRequest", "payment_timeout_secs", payment_timeout),
        ("BidRequest", "amount", money()),
        ("BidRequest", "max_amount", money()),
        ("UserResponse", "role", names(Role::NAMES)),
        ("TokenResponse", "token_type", names(&["Bearer"])),
        ("OrderResponse", "kind", names(OrderKind::NAMES)),
        ("OrderResponse", "status", names(OrderStatus::NAMES)),
        ("SaleResponse", "status", names(SaleStatus::NAMES)),
        ("QueuedResponse", "status", names(&[ReservationStatus::Queued.as_str()])),
        ("ReservationResponse", "status", names(ReservationStatus::NAMES)),
        ("ReservationResponse", "reason", names(FailureReason::NAMES)),
        ("AuctionResponse", "status", names(AuctionStatus::NAMES)),
    ]
}

/// What Swagger UI's "Try it out" starts from: bodies that work as they are (after filling
/// in a real product id).
fn examples() -> Vec<(&'static str, Value)> {
    vec![
        ("RegisterRequest", json!({"email": "ann@example.com", "password": "correct horse"})),
        ("LoginRequest", json!({"email": "ann@example.com", "password": "correct horse"})),
        ("RefreshRequest", json!({"refresh_token": "the refresh_token from /auth/login"})),
        (
            "CreateProductRequest",
            json!({"title": "Phone X", "description": "128 GB, black", "price": "199.00", "stock": 100}),
        ),
        ("UpdateProductRequest", json!({"price": "179.00", "stock": 120})),
        (
            "CreateSaleRequest",
            json!({
                "product_id": "0191d1a0-0000-7000-8000-000000000000", "price": "99.00", "stock": 10,
                "start_at": "2026-12-01T18:00:00Z", "end_at": "2026-12-01T19:00:00Z",
                "per_user_limit": 1, "payment_timeout_secs": 900
            }),
        ),
        ("PurchaseRequest", json!({"quantity": 1})),
        (
            "CreateOrderRequest",
            json!({"items": [{"product_id": "0191d1a0-0000-7000-8000-000000000000", "quantity": 1}]}),
        ),
        (
            "CreateAuctionRequest",
            json!({
                "title": "Signed poster", "description": "First print", "start_price": "10.00",
                "min_increment": "1.00", "buy_now_price": "80.00",
                "start_at": "2026-12-01T18:00:00Z", "end_at": "2026-12-01T19:00:00Z", "extend_window_secs": 30, "extend_by_secs": 30, "payment_timeout_secs": 900
            }),
        ),
        ("BidRequest", json!({"amount": "12.00"})),
    ]
}

/// Bounds of paging, search and idempotency keys, and the choices of `sort` and `status`.
fn complete_parameters(path: &str, operation: &mut Map<String, Value>) {
    let Some(Value::Array(parameters)) = operation.get_mut("parameters") else {
        return;
    };
    for parameter in parameters {
        let name = parameter["name"].as_str().unwrap_or_default().to_owned();
        let rules = match name.as_str() {
            "page" => range(1, MAX_PAGE as i64),
            "page_size" => range(1, MAX_PAGE_SIZE as i64),
            "q" => json!({"maxLength": SEARCH_MAX_CHARS, "pattern": TEXT}),
            // HTTP drops the spaces around a header's value; the length is in the pattern, so
            // a space counts as nothing there too.
            "Idempotency-Key" => json!({ "pattern": format!("^[ \t]*[!-~]{{1,{MAX_KEY_LEN}}}[ \t]*$") }),
            "sort" => names_of(&Sort::choices(sort_fields(path))),
            "status" => names(OrderStatus::NAMES),
            _ => continue,
        };
        merge(object(parameter).entry("schema").or_insert_with(|| json!({})), rules);
    }
}

fn names_of(choices: &[String]) -> Value {
    json!({ "enum": choices })
}

fn sort_fields(path: &str) -> &'static [&'static str] {
    match path {
        "/products" => service::catalog::SORT_FIELDS,
        "/orders" => service::orders::SORT_FIELDS,
        "/admin/users" => service::auth::USER_SORT_FIELDS,
        other => panic!("no sort fields listed for {other}"),
    }
}

/// Every operation may also be refused by the per-IP limit (429) or run out of time (503).
const ALWAYS: &[Code] = &[e::RATE_LIMITED, e::REQUEST_TIMEOUT];

/// The errors each operation can answer, besides [`ALWAYS`]. A 500 is a bug, not a
/// contract, and is left out; so is 413, which only a body over `http.body_limit_bytes`
/// meets (docs/api.md says so once for every operation).
fn errors_of(method: &str, path: &str) -> &'static [Code] {
    use e::*;
    match (method, path) {
        ("post", "/auth/register") => &[INVALID_REQUEST, EMAIL_TAKEN, SERVICE_UNAVAILABLE],
        ("post", "/auth/login") => &[INVALID_REQUEST, INVALID_CREDENTIALS, SERVICE_UNAVAILABLE],
        ("post", "/auth/refresh" | "/auth/logout") => &[INVALID_REQUEST, INVALID_REFRESH_TOKEN, SERVICE_UNAVAILABLE],
        ("get", "/users/me") => &[UNAUTHORIZED, SERVICE_UNAVAILABLE],
        ("get", "/admin/users") => &[INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN, SERVICE_UNAVAILABLE],
        ("get", "/products" | "/sales" | "/auctions") => &[INVALID_REQUEST, SERVICE_UNAVAILABLE],
        (
            "get",
            "/products/{id}"
            | "/sales/{id}"
            | "/auctions/{id}"
            | "/auctions/{id}/bids"
            | "/auctions/{id}/live"
            | "/users/{id}/name",
        ) => &[INVALID_REQUEST, NOT_FOUND, SERVICE_UNAVAILABLE],
        ("post", "/products" | "/auctions") => &[INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN, SERVICE_UNAVAILABLE],
        ("patch" | "delete", "/products/{id}") => {
            &[INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, SERVICE_UNAVAILABLE]
        }
        ("post", "/orders") => {
            &[INVALID_REQUEST, UNAUTHORIZED, INSUFFICIENT_STOCK, IDEMPOTENCY_KEY_REUSED, SERVICE_UNAVAILABLE]
        }
        ("get", "/orders") => &[INVALID_REQUEST, UNAUTHORIZED, SERVICE_UNAVAILABLE],
        ("get", "/orders/{id}" | "/reservations/{id}") => {
            &[INVALID_REQUEST, UNAUTHORIZED, NOT_FOUND, SERVICE_UNAVAILABLE]
        }
        ("post", "/orders/{id}/pay") => {
            &[INVALID_REQUEST, UNAUTHORIZED, NOT_FOUND, ORDER_NOT_PENDING, ORDER_EXPIRED, SERVICE_UNAVAILABLE]
        }
        ("post", "/orders/{id}/cancel") => {
            &[INVALID_REQUEST, UNAUTHORIZED, NOT_FOUND, ORDER_NOT_PENDING, SERVICE_UNAVAILABLE]
        }
        ("post", "/sales") => &[INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN, INSUFFICIENT_STOCK, SERVICE_UNAVAILABLE],
        ("post", "/sales/{id}/purchase") => &[
            INVALID_REQUEST,
            UNAUTHORIZED,
            NOT_FOUND,
            SOLD_OUT,
            LIMIT_REACHED,
            NOT_ACTIVE,
            IDEMPOTENCY_KEY_REUSED,
            SERVICE_UNAVAILABLE,
        ],
        ("post", "/auctions/{id}/bids") => &[
            INVALID_REQUEST,
            UNAUTHORIZED,
            NOT_FOUND,
            BID_TOO_LOW,
            AUCTION_CLOSED,
            MAX_AMOUNT_LOWERED,
            SERVICE_UNAVAILABLE,
        ],
        ("post", "/auctions/{id}/buy-now") => {
            &[INVALID_REQUEST, UNAUTHORIZED, NOT_FOUND, BUY_NOW_UNAVAILABLE, SERVICE_UNAVAILABLE]
        }
        (method, path) => panic!("errors_of lists no errors for {method} {path}"),
    }
}

/// Replaces the generic list of error statuses with the ones this operation can answer,
/// each naming its `error` values.
fn complete_responses(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let responses = object(operation.entry("responses").or_insert_with(|| json!({})));
    responses.retain(|status, _| !status.starts_with('4') && !status.starts_with('5'));
    let codes: Vec<Code> = errors_of(method, path).iter().chain(ALWAYS).copied().collect();
    let mut statuses: Vec<u16> = codes.iter().map(|code| code.status.as_u16()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let names: Vec<String> =
            codes.iter().filter(|code| code.status.as_u16() == status).map(|code| format!("`{}`", code.name)).collect();
        let description = format!("{}: {}", summary(status), names.join(", "));
        responses.insert(
            status.to_string(),
            json!({
                "description": description,
                "content": {"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }),
        );
    }
}

fn summary(status: u16) -> &'static str {
    match status {
        400 => "Invalid input; `field` names it",
        401 => "Missing, invalid or expired credentials",
        403 => "Signed in, but not allowed",
        404 => "No such resource (or not yours)",
        409 => "A business rule refused the request",
        429 => "Rate limited: retry after `Retry-After` seconds",
        503 => "A dependency is down or the request took too long",
        _ => "Error",
    }
}

fn schemas(spec: &mut Value) -> &mut Map<String, Value> {
    object(&mut spec["components"]["schemas"])
}

fn schema_mut<'a>(spec: &'a mut Value, name: &str) -> &'a mut Value {
    schemas(spec).get_mut(name).unwrap_or_else(|| panic!("the API has no schema {name}"))
}

fn property<'a>(spec: &'a mut Value, schema: &str, field: &str) -> &'a mut Value {
    let schema_value = schema_mut(spec, schema);
    schema_value
        .get_mut("properties")
        .and_then(|properties| properties.get_mut(field))
        .unwrap_or_else(|| panic!("the schema {schema} has no field {field}"))
}

/// (path, method, operation) for every operation.
fn operations(spec: &mut Value) -> Vec<(String, String, &mut Map<String, Value>)> {
    let mut all = Vec::new();
    for (path, item) in object(&mut spec["paths"]).iter_mut() {
        for (method, operation) in object(item).iter_mut() {
            all.push((path.clone(), method.clone(), object(operation)));
        }
    }
    all
}

fn object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("just made an object")
}

/// Adds `rules` to a schema. A field poem-openapi wrote as a `$ref` or `allOf` keeps it and
/// gets the rules beside it.
fn merge(target: &mut Value, rules: Value) {
    let target = object(target);
    if let Value::Object(rules) = rules {
        target.extend(rules);
    }
}

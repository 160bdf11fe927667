//! One purchase's trace, read back by an OTLP/HTTP receiver inside the test: the caller's
//! `traceparent` is honoured, and every hop from the HTTP request to the delayed close is a
//! span of that one trace, with its kind and conventional attributes.
//!
//! The tracer provider is global, and the first app a process starts decides whether it
//! exports: this test needs a process of its own, as cargo-nextest gives every test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::middleware::wrap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::test::TestClient;
use poem::web::Data;
use poem::{EndpointExt, Response, Route, Server, get, handler, post};
use prost::Message;
use serde_json::json;

use crate::helpers::spawn_app_with;
use crate::http::policy;
use crate::sales::{confirmed, sale};

/// The caller's trace and span, as a gateway would send them.
const TRACE_ID: &str = "5eed0000000000000000000000000017";
const CALLER_SPAN: &str = "1234567890abcdef";

type Store = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP (protobuf) trace receiver on a free port, keeping every span it is sent.
struct Receiver {
    endpoint: String,
    spans: Store,
}

impl Receiver {
    async fn start() -> Self {
        let spans = Store::default();
        let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("receiver listens");
        let port = acceptor.local_addr()[0].as_socket_addr().expect("a TCP address").port();
        let app = Route::new().at("/v1/traces", post(export)).data(spans.clone());
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Self { endpoint: format!("http://127.0.0.1:{port}/v1/traces"), spans }
    }

    fn all(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn trace(&self, trace_id: &str) -> Trace {
        Trace(self.all().into_iter().filter(|span| hex(&span.trace_id) == trace_id).collect())
    }
}

#[handler]
fn export(body: Vec<u8>, store: Data<&Store>) -> Response {
    let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf export");
    let spans = request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
    store.lock().unwrap().extend(spans);
    Response::builder().content_type("application/x-protobuf").body(Vec::new())
}

struct Trace(Vec<Span>);

impl Trace {
    fn named(&self, name: &str) -> Option<&Span> {
        self.0.iter().find(|span| span.name == name)
    }

    fn one(&self, name: &str) -> &Span {
        let found: Vec<&Span> = self.0.iter().filter(|span| span.name == name).collect();
        assert_eq!(found.len(), 1, "one span named {name:?} in\n{}", self.tree());
        found[0]
    }

    fn parent_of(&self, span: &Span) -> Option<&Span> {
        self.0.iter().find(|p| p.span_id == span.parent_span_id)
    }

    /// Whether `ancestor` is `span`'s parent, grandparent, ...
    fn descends(&self, span: &Span, ancestor: &Span) -> bool {
        let mut at = self.parent_of(span);
        while let Some(parent) = at {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            at = self.parent_of(parent);
        }
        false
    }

    /// The trace as Jaeger draws it: each span under its parent, in start order.
    fn tree(&self) -> String {
        let mut children: HashMap<&[u8], Vec<&Span>> = HashMap::new();
        for span in &self.0 {
            children.entry(span.parent_span_id.as_slice()).or_default().push(span);
        }
        for list in children.values_mut() {
            list.sort_by_key(|span| span.start_time_unix_nano);
        }
        let start = self.0.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);
        let mut out = String::new();
        let roots = self.0.iter().filter(|span| self.parent_of(span).is_none());
        for root in roots {
            let parent = hex(&root.parent_span_id);
            out.push_str(&format!("(parent {})\n", if parent.is_empty() { "none".into() } else { parent }));
            draw(&mut out, &children, root, 1, start);
        }
        out
    }
}

fn draw(out: &mut String, children: &HashMap<&[u8], Vec<&Span>>, span: &Span, depth: usize, start: u64) {
    let kind = SpanKind::try_from(span.kind).map_or("?".into(), |k| k.as_str_name().replace("SPAN_KIND_", ""));
    let at_ms = (span.start_time_unix_nano - start) as f64 / 1e6;
    let took_ms = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
    let error = if span.status.as_ref().is_some_and(|s| s.code == 2) { " ERROR" } else { "" };
    let keys = ["http.response.status_code", "db.system.name", "messaging.destination.name"];
    let attrs: Vec<String> = keys.iter().filter_map(|key| Some(format!("{key}={}", attr(span, key)?))).collect();
    out.push_str(&format!(
        "{}{} [{kind}{error}] +{at_ms:.1}ms {took_ms:.1}ms {}\n",
        "  ".repeat(depth),
        span.name,
        attrs.join(" ")
    ));
    for child in children.get(span.span_id.as_slice()).into_iter().flatten() {
        draw(out, children, child, depth + 1, start);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn kind(span: &Span) -> SpanKind {
    SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified)
}

#[tokio::test]
async fn one_purchase_is_one_trace_from_the_callers_request_to_the_delayed_close() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint.clone();
    let app = spawn_app_with(move |s| s.telemetry.otlp_endpoint = endpoint).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    // A payment timeout of one second: the close follows soon after the order.
    let sale = sale(&app, &admin, 5, 1, 1).await;
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get(probe, None).await.status, 200, "{probe}");
    }

    let purchase = app
        .client
        .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(&shopper.access)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .header("tracestate", "gateway=1")
        .json(&json!({"quantity": 1}));
    let reply = app.send(purchase).await;
    let reservation = reply.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let traceparent = reply.headers.get("traceparent").expect("a traceparent response header").to_str().unwrap();
    assert!(traceparent.starts_with(&format!("00-{TRACE_ID}-")), "{traceparent}");
    assert!(!traceparent.contains(CALLER_SPAN), "names Spike's span, not the caller's: {traceparent}");

    let order = confirmed(&app, &shopper, &reservation).await["order_id"].as_str().unwrap().to_owned();
    app.eventually(15, "the unpaid order closes", || async { app.order_status(&shopper, &order).await == "closed" })
        .await;
    // A span is exported when it ends; the close's consumer span ends after its ack. Flush
    // (off the runtime: the flush blocks until the receiver, served here, has answered)
    // until it has arrived.
    app.eventually(10, "the close's spans are exported", || async {
        tokio::task::spawn_blocking(platform::telemetry::flush).await.unwrap();
        let trace = receiver.trace(TRACE_ID);
        trace
            .named("process order.close")
            .is_some_and(|close| trace.0.iter().any(|s| s.name == "UPDATE orders" && trace.descends(s, close)))
    })
    .await;

    let trace = receiver.trace(TRACE_ID);
    let tree = trace.tree();
    eprintln!("{tree}");

    let server = trace.one("POST /api/v1/sales/{id}/purchase");
    assert_eq!(kind(server), SpanKind::Server);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN, "the HTTP span is the caller's span's child");
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attr(server, "http.route").as_deref(), Some("/api/v1/sales/{id}/purchase"));
    assert_eq!(attr(server, "http.response.status_code").as_deref(), Some("202"));
    assert!(traceparent.contains(&hex(&server.span_id)), "{traceparent}");
    assert_eq!(server.trace_state, "gateway=1", "the caller's tracestate is kept");
    // The span's fields are what the JSON logs print with each line of the request.
    let request_id = reply.headers["x-request-id"].to_str().unwrap();
    assert_eq!(attr(server, "request_id").as_deref(), Some(request_id));
    assert_eq!(attr(server, "trace_id").as_deref(), Some(TRACE_ID));

    let reserve = trace.one("EVALSHA reserve_stock");
    assert_eq!(kind(reserve), SpanKind::Client);
    assert!(trace.descends(reserve, server), "{tree}");
    assert_eq!(attr(reserve, "db.system.name").as_deref(), Some("redis"));

    let publish = trace.one("publish sale.reserve");
    assert_eq!(kind(publish), SpanKind::Producer);
    assert!(trace.descends(publish, server), "{tree}");
    assert_eq!(attr(publish, "messaging.system").as_deref(), Some("rabbitmq"));
    assert!(trace.0.iter().any(|s| s.name == "confirm" && s.parent_span_id == publish.span_id), "{tree}");

    let consume = trace.one("process sale.reservations");
    assert_eq!(kind(consume), SpanKind::Consumer);
    assert_eq!(consume.parent_span_id, publish.span_id, "{tree}");
    assert_eq!(attr(consume, "messaging.system").as_deref(), Some("rabbitmq"));
    assert!(trace.descends(trace.one("EVALSHA claim_reservations"), consume), "{tree}");
    assert!(trace.descends(trace.one("EVALSHA settle_reservations"), consume), "{tree}");

    let insert_orders = trace.one("INSERT orders");
    assert_eq!(kind(insert_orders), SpanKind::Client);
    assert!(trace.descends(insert_orders, consume), "{tree}");
    assert_eq!(attr(insert_orders, "db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(attr(insert_orders, "db.operation.name").as_deref(), Some("INSERT"));

    // The relay's publishes are children of the statement that wrote their rows.
    let created = trace.one("publish order.created");
    assert_eq!(kind(created), SpanKind::Producer);
    let outbox = trace.parent_of(created).expect("the span that wrote the row");
    assert_eq!(outbox.name, "INSERT outbox", "{tree}");
    assert!(trace.descends(outbox, consume), "{tree}");
    let delayed = trace.0.iter().find(|s| s.name.ends_with(".delay.order.close.1000")).expect("the delayed close");
    assert_eq!(kind(delayed), SpanKind::Producer);
    assert_eq!(delayed.parent_span_id, outbox.span_id, "{tree}");
    let relay = receiver
        .all()
        .into_iter()
        .find(|s| s.name == "outbox.publish" && s.links.iter().any(|l| hex(&l.trace_id) == TRACE_ID));
    assert!(relay.is_some(), "the relay's round links to the purchase's trace");

    let close = trace.one("process order.close");
    assert_eq!(kind(close), SpanKind::Consumer);
    assert_eq!(close.parent_span_id, delayed.span_id, "{tree}");

    // Quiet: no probe is traced, and no span carries thread, code or busy/idle attributes.
    let everything = receiver.all();
    for span in &everything {
        let path = attr(span, "url.path").unwrap_or_default();
        assert!(!["/healthz", "/readyz", "/metrics"].contains(&path.as_str()), "a probe was traced: {}", span.name);
        for kv in &span.attributes {
            let noise = ["busy_ns", "idle_ns"].contains(&kv.key.as_str())
                || kv.key.starts_with("thread.")
                || kv.key.starts_with("code.");
            assert!(!noise, "{} carries {}", span.name, kv.key);
        }
    }
}

#[handler]
fn boom() -> &'static str {
    panic!("a bug in a handler")
}

#[tokio::test]
async fn a_5xx_marks_the_server_span_as_failed_and_a_4xx_does_not() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint.clone();
    let app = spawn_app_with(move |s| s.telemetry.otlp_endpoint = endpoint).await;
    let missing = uuid::Uuid::now_v7();
    app.get(&format!("/api/v1/sales/{missing}"), None).await.error(404, "NOT_FOUND", None);
    let client = TestClient::new(wrap(Route::new().at("/boom", get(boom)), policy(Duration::from_secs(5))));
    client.get("/boom").send().await.assert_status(poem::http::StatusCode::INTERNAL_SERVER_ERROR);

    let failed = |span: &Span| span.status.as_ref().is_some_and(|status| status.code == 2);
    app.eventually(10, "both server spans are exported", || async {
        tokio::task::spawn_blocking(platform::telemetry::flush).await.unwrap();
        let spans = receiver.all();
        let not_found = spans.iter().find(|s| s.name == "GET /api/v1/sales/{id}").cloned();
        // A panic loses the route (the panic is caught outside the router): the span is `GET`.
        let panicked = spans.iter().find(|s| attr(s, "url.path").as_deref() == Some("/boom")).cloned();
        match (not_found, panicked) {
            (Some(not_found), Some(panicked)) => {
                assert_eq!(attr(&not_found, "http.response.status_code").as_deref(), Some("404"));
                assert!(!failed(&not_found), "a 4xx is the client's error, not the server's");
                assert_eq!(attr(&panicked, "http.response.status_code").as_deref(), Some("500"));
                assert!(failed(&panicked), "a 5xx is a failed server span");
                true
            }
            _ => false,
        }
    })
    .await;
}

#[tokio::test]
async fn with_a_zero_sample_ratio_only_callers_sampled_traces_are_exported() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint.clone();
    let app = spawn_app_with(move |s| {
        s.telemetry.otlp_endpoint = endpoint;
        s.telemetry.sample_ratio = 0.0;
    })
    .await;
    let unsampled = app.get("/api/v1/sales", None).await;
    assert_eq!(unsampled.status, 200);
    let traceparent = unsampled.headers["traceparent"].to_str().unwrap();
    assert!(traceparent.ends_with("-00"), "not sampled, and says so: {traceparent}");

    let sampled =
        app.client.get(app.url("/api/v1/sales")).header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"));
    assert_eq!(app.send(sampled).await.status, 200);
    app.eventually(10, "the caller's trace is exported", || async {
        tokio::task::spawn_blocking(platform::telemetry::flush).await.unwrap();
        !receiver.trace(TRACE_ID).0.is_empty()
    })
    .await;
    // The unsampled request ended first: had it been sampled, this flush would have sent it.
    let others: Vec<String> =
        receiver.all().iter().filter(|s| hex(&s.trace_id) != TRACE_ID).map(|s| s.name.clone()).collect();
    assert!(others.is_empty(), "only the caller's trace: {others:?}");
}

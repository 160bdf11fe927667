//! The HTTP pipeline around every route, outermost first:
//!
//! 1. the request context: takes or makes the `X-Request-Id`, opens the request's tracing
//!    span (a child of the caller's `traceparent`), echoes the request id and the trace's
//!    `traceparent`, and records the request metrics;
//! 2. CORS (from `http.cors_origins`);
//! 3. the error envelope: every error from inside (ours, poem's, poem-openapi's, a caught
//!    panic) becomes `{"code","error","message","request_id"}`;
//! 4. the body size limit: a declared `Content-Length` above it is refused at once (and the
//!    connection closed);
//! 5. the request timeout, which covers all that follows, reading the body included;
//! 6. reading the body, up to the limit, so that no refusal below leaves a body unread on
//!    a keep-alive connection;
//! 7. the per-IP rate limit, then the sold-out gate: a purchase of a sale this instance
//!    knows is sold out is refused here, before authentication and body parsing — after a
//!    sell-out nearly every request is one of these, and they all get the same answer;
//! 8. panic catching.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use poem::PathPattern;
use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError};
use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::middleware::{CatchPanic, Cors};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use poem_openapi::error::{
    AuthorizationError, ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{self, ApiError};
use crate::rate_limit::Limits;
use service::sales::SoldOutFlags;

/// The request id of the current request, as request data.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Settings the pipeline needs.
pub struct HttpPolicy {
    pub limits: Arc<Limits>,
    /// Sales this instance knows are sold out: purchases of them are refused before any
    /// other work (see [`wrap`]).
    pub sold_out: Arc<SoldOutFlags>,
    pub timeout: Duration,
    pub body_limit: usize,
    pub cors_origins: Vec<String>,
    pub trust_forwarded_for: bool,
}

/// Marks the response the panic handler made, with the panic's message, so the outer layer
/// can envelope it and log it once with the request id.
#[derive(Clone)]
struct Panicked(String);

pub fn wrap(routes: impl Endpoint + 'static, policy: HttpPolicy) -> impl Endpoint {
    let cors = cors(&policy.cors_origins);
    let policy = Arc::new(policy);
    routes
        .with(CatchPanic::new().with_handler(on_panic))
        .around(move |ep, req| guard(policy.clone(), ep, req))
        .around(envelope_errors)
        .with(cors)
        .around(request_context)
}

/// Steps 4 to 7 in one layer, since each layer adds to every request's cost.
async fn guard<E: Endpoint>(policy: Arc<HttpPolicy>, ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let declared = req.header("content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > policy.body_limit) {
        return Ok(too_large(&req, policy.body_limit));
    }
    let timeout = policy.timeout;
    let answer = async move {
        let req = match read_body(req, policy.body_limit).await? {
            Ok(req) => req,
            Err(too_large) => return Ok(too_large),
        };
        if let Some(ip) = client_ip(&req, policy.trust_forwarded_for) {
            policy.limits.check_ip(ip)?;
        }
        // poem reads a header that is not visible ASCII as absent: such a key would be
        // ignored, and a retry would buy or bid twice.
        if req.headers().get("idempotency-key").is_some_and(|key| key.to_str().is_err()) {
            return Err(ApiError::invalid("Idempotency-Key", "must be 1 to 200 printable ASCII characters").into());
        }
        if let Some(sale_id) = purchase_of(&req)
            && policy.sold_out.is_sold_out(sale_id)
        {
            metrics::counter!("purchases_total", "outcome" => "sold_out_flag").increment(1);
            return Err(ApiError::new(error::SOLD_OUT, "sold out").into());
        }
        ep.call(req).await.map(IntoResponse::into_response)
    };
    match tokio::time::timeout(timeout, answer).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::new(error::REQUEST_TIMEOUT, "the request took too long").into()),
    }
}

/// Reads the whole body (at most `limit` bytes) before anything can refuse the request.
/// A refusal that leaves the body unread makes hyper close the connection without saying
/// so, and a client that sends the body after the headers (many SDKs do) then finds the
/// connection broken on its next request. `Err` holds the 413 for a body over the limit.
async fn read_body(mut req: Request, limit: usize) -> poem::Result<Result<Request, Response>> {
    match req.take_body().into_bytes_limit(limit).await {
        Ok(bytes) => {
            req.set_body(bytes);
            Ok(Ok(req))
        }
        Err(ReadBodyError::PayloadTooLarge) => Ok(Err(too_large(&req, limit))),
        Err(err) => Err(ApiError::invalid("body", format!("could not be read: {err}")).into()),
    }
}

/// 413, and the connection closes: the rest of the body is not worth reading.
fn too_large(req: &Request, limit: usize) -> Response {
    let request_id = req.data::<RequestId>().map_or("", |id| id.0.as_str());
    let message = format!("the request body is larger than {limit} bytes");
    let mut response = ApiError::new(error::PAYLOAD_TOO_LARGE, message).to_response(request_id);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The sale id of `POST /api/v1/sales/{id}/purchase`, if this is one.
fn purchase_of(req: &Request) -> Option<Uuid> {
    if req.method() != Method::POST {
        return None;
    }
    let path = req.uri().path();
    path.strip_prefix("/api/v1/sales/")?.strip_suffix("/purchase")?.parse().ok()
}

fn cors(origins: &[String]) -> Cors {
    let cors = Cors::new()
        .allow_headers([
            "authorization",
            "content-type",
            "idempotency-key",
            "x-request-id",
            "traceparent",
            "tracestate",
        ])
        .expose_headers(["x-request-id", "retry-after", "traceparent"])
        .max_age(600);
    if origins.iter().any(|o| o == "*") { cors } else { cors.allow_origins(origins.iter().map(String::as_str)) }
}

fn on_panic(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    let mut response = Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).finish();
    response.set_data(Panicked(what));
    response
}

/// The client's IP: the socket peer, or the first `X-Forwarded-For` entry when the
/// service runs behind a proxy we trust.
fn client_ip(req: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = req
            .header("x-forwarded-for")
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse().ok())
    {
        return Some(ip);
    }
    req.remote_addr().as_socket_addr().map(|addr| addr.ip())
}

/// A usable incoming request id: short, printable, no spaces.
fn accepted_request_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Turns every error from inside (ours, poem's, poem-openapi's, a caught panic) into the
/// error envelope, with the request id, before the CORS layer sees it: poem's CORS turns an
/// error into a plain-text response.
async fn envelope_errors<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let request_id = req.data::<RequestId>().cloned().unwrap_or_else(|| RequestId(String::new()));
    match ep.call(req).await.map(IntoResponse::into_response) {
        Ok(response) if response.data::<Panicked>().is_some() => {
            let what = response.data::<Panicked>().map_or("", |panicked| panicked.0.as_str());
            let panic = anyhow::anyhow!("a handler panicked: {what}");
            let mut enveloped = ApiError::internal(panic).to_response(&request_id.0);
            if let Some(pattern) = response.data::<PathPattern>() {
                enveloped.set_data(pattern.clone());
            }
            Ok(enveloped)
        }
        Ok(response) => Ok(response),
        Err(err) => {
            let pattern = err.data::<PathPattern>().cloned();
            let mut response = to_api_error(err).to_response(&request_id.0);
            if let Some(pattern) = pattern {
                response.set_data(pattern);
            }
            Ok(response)
        }
    }
}

async fn request_context<E: Endpoint>(ep: Arc<E>, mut req: Request) -> poem::Result<Response> {
    let request_id = req
        .header("x-request-id")
        .filter(|value| accepted_request_id(value))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    req.set_data(RequestId(request_id.clone()));
    let method = req.method().clone();
    let span = server_span(&req, &request_id);
    let started = Instant::now();

    let (mut response, pattern) = match ep.call(req).instrument(span.clone()).await.map(IntoResponse::into_response) {
        Ok(response) => {
            let pattern = response.data::<PathPattern>().map(|p| p.0.clone());
            (response, pattern)
        }
        // Only the CORS layer can still fail (an origin it does not allow).
        Err(err) => {
            let _entered = span.enter();
            (to_api_error(err).to_response(&request_id), None)
        }
    };

    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    if let Some(value) = platform::telemetry::traceparent_of(&span).and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("traceparent", value);
    }
    if !span.is_disabled() {
        close_server_span(&span, &method, pattern.as_deref().map(route_template).as_deref(), response.status());
    }
    record_request(&method, pattern.as_deref(), response.status(), started.elapsed());
    Ok(response)
}

/// The request metrics of one method, route and status.
struct RequestMetrics {
    method: Method,
    status: StatusCode,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Counts a request and records its duration, labelled with its method, route template
/// (`unmatched` when no route matched) and status. Each label set's handles are looked up
/// once: building three label strings and finding them in the registry on every request
/// was a measurable share of the cheapest requests (docs/benchmarks.md).
fn record_request(method: &Method, pattern: Option<&str>, status: StatusCode, took: Duration) {
    type ByPattern = HashMap<Box<str>, Vec<RequestMetrics>>;
    static KNOWN: LazyLock<RwLock<ByPattern>> = LazyLock::new(RwLock::default);
    let key = pattern.unwrap_or("");
    let record = |found: &RequestMetrics| {
        found.requests.increment(1);
        found.duration.record(took.as_secs_f64());
    };
    let find = |known: &ByPattern| -> bool {
        let found = known.get(key).and_then(|all| all.iter().find(|m| m.method == *method && m.status == status));
        found.map(record).is_some()
    };
    if find(&KNOWN.read().unwrap_or_else(PoisonError::into_inner)) {
        return;
    }
    let route = pattern.map_or_else(|| "unmatched".to_owned(), route_template);
    let labels = [("method", method.to_string()), ("route", route), ("status", status.as_u16().to_string())];
    let new = RequestMetrics {
        method: method.clone(),
        status,
        requests: metrics::counter!("http_requests_total", &labels),
        duration: metrics::histogram!("http_request_duration_seconds", &labels),
    };
    record(&new);
    let mut known = KNOWN.write().unwrap_or_else(PoisonError::into_inner);
    let all = known.entry(key.into()).or_default();
    if !all.iter().any(|m| m.method == *method && m.status == status) {
        all.push(new);
    }
}

/// The request's SERVER span, a child of the caller's `traceparent`/`tracestate` when it
/// sent them. Its name and route are filled in once routing has found the route. Probes and
/// `/metrics` get none: they are called every few seconds and say nothing about a request.
fn server_span(req: &Request, request_id: &str) -> tracing::Span {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return tracing::Span::none();
    }
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "http",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        request_id,
        trace_id = tracing::field::Empty,
        http.request.method = method,
        url.path = path,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let incoming: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), req.header(name)?.to_owned())))
        .collect();
    platform::telemetry::adopt_trace_headers(&span, &incoming);
    // In the JSON logs, next to the request id: the way from a complaint to the trace.
    if let Some(trace_id) = platform::telemetry::trace_id_of(&span) {
        span.record("trace_id", trace_id);
    }
    span
}

/// Names the server span `METHOD /route/{template}` and records the outcome: an error status
/// only for a 5xx (a 4xx is the client's error, not the server's, per the conventions).
fn close_server_span(span: &tracing::Span, method: &Method, route: Option<&str>, status: StatusCode) {
    if let Some(route) = route {
        span.record("http.route", route);
        platform::telemetry::rename(span, format!("{method} {route}"));
    }
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// poem's `/sales/:param0/purchase` as OpenAPI and OpenTelemetry write it:
/// `/sales/{id}/purchase`. poem-openapi names path parameters by position (`param0`); in
/// this API the only path parameter of every route is the resource's id.
fn route_template(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment.strip_prefix(':') {
            Some("param0") => "{id}".to_owned(),
            Some(name) => format!("{{{name}}}"),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every error that can come out of the routes, as our error type.
pub fn to_api_error(err: poem::Error) -> ApiError {
    if err.is::<ApiError>() {
        return err.downcast::<ApiError>().unwrap_or_else(|e| ApiError::internal(anyhow::anyhow!("{e}")));
    }
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return ApiError::invalid(e.name, readable(&e.reason));
    }
    if let Some(e) = err.downcast_ref::<ParsePathError>() {
        // poem-openapi names path parameters by position (`param0`); in this API the only
        // path parameter of every route is the resource's id.
        let name = if e.name == "param0" { "id" } else { e.name };
        return ApiError::invalid(name, readable(&e.reason));
    }
    if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        return ApiError::invalid("body", &e.reason);
    }
    if err.is::<ContentTypeError>() {
        return ApiError::invalid("Content-Type", "must be application/json");
    }
    if err.is::<AuthorizationError>() {
        return ApiError::new(error::UNAUTHORIZED, "missing or invalid access token");
    }
    if err.is::<NotFoundError>() {
        return ApiError::new(error::NOT_FOUND, "no such route");
    }
    if err.is::<MethodNotAllowedError>() {
        return ApiError::new(error::METHOD_NOT_ALLOWED, "method not allowed on this route");
    }
    match err.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(error::PAYLOAD_TOO_LARGE, "the request body is too large"),
        StatusCode::NOT_FOUND => ApiError::new(error::NOT_FOUND, "not found"),
        status if status.is_client_error() => ApiError::new(error::INVALID_REQUEST, err.to_string()),
        _ => ApiError::internal(anyhow::anyhow!("{err}")),
    }
}

/// poem-openapi says `failed to parse "integer(uint64)": invalid digit found in string
/// (occurred while parsing "optional_integer(uint64)")`; a client needs "must be an
/// integer".
fn readable(reason: &str) -> String {
    let reason = reason.split(" (occurred while parsing").next().unwrap_or(reason);
    let Some((expected, _why)) = reason.strip_prefix("failed to parse \"").and_then(|rest| rest.split_once('"')) else {
        return reason.to_owned();
    };
    match expected {
        "string_uuid" => "must be a UUID".to_owned(),
        "boolean" => "must be true or false".to_owned(),
        integer if integer.starts_with("integer(u") => "must be a whole number (0 or more)".to_owned(),
        integer if integer.starts_with("integer") => "must be an integer".to_owned(),
        other => format!("must be {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_failures_read_as_what_was_expected() {
        assert_eq!(
            readable(
                r#"failed to parse "integer(uint64)": invalid digit found in string (occurred while parsing "optional_integer(uint64)")"#
            ),
            "must be a whole number (0 or more)"
        );
        assert_eq!(readable(r#"failed to parse "string_uuid": invalid character: expected ..."#), "must be a UUID");
        assert_eq!(readable(r#"failed to parse "boolean": invalid"#), "must be true or false");
        assert_eq!(readable("something else"), "something else");
    }

    #[test]
    fn route_templates_name_their_parameters_in_braces() {
        assert_eq!(route_template("/api/v1/sales/:param0/purchase"), "/api/v1/sales/{id}/purchase");
        assert_eq!(route_template("/docs/:name"), "/docs/{name}");
        assert_eq!(route_template("/healthz"), "/healthz");
    }

    #[test]
    fn request_ids_must_be_short_and_printable() {
        assert!(accepted_request_id("abc-123"));
        assert!(!accepted_request_id(""));
        assert!(!accepted_request_id("has space"));
        assert!(!accepted_request_id(&"x".repeat(129)));
    }
}

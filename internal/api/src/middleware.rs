//! The HTTP pipeline around every route, outermost first:
//!
//! 1. CORS (from `http.cors_origins`);
//! 2. the request context: takes or makes the `X-Request-Id`, opens the request's tracing
//!    span, turns every error (ours, poem's, poem-openapi's, a caught panic) into the error
//!    envelope, echoes the request id, and records the request metrics;
//! 3. the per-IP rate limit;
//! 4. the request timeout;
//! 5. panic catching;
//! 6. the body size limit (a declared `Content-Length` above it is refused here; a chunked
//!    body is cut off by [`crate::envelope::JsonBody`] while it is read).

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::PathPattern;
use poem::error::{MethodNotAllowedError, NotFoundError};
use poem::http::{HeaderValue, StatusCode};
use poem::middleware::{CatchPanic, Cors};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use poem_openapi::error::{
    AuthorizationError, ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{self, ApiError};
use crate::rate_limit::Limits;

/// The request id of the current request, as request data.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Settings the pipeline needs.
pub struct HttpPolicy {
    pub limits: Arc<Limits>,
    pub timeout: Duration,
    pub body_limit: usize,
    pub cors_origins: Vec<String>,
    pub trust_forwarded_for: bool,
}

/// The largest request body accepted, as request data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Marks the response the panic handler made, so the outer layer can envelope it with
/// the request id.
#[derive(Clone)]
struct Panicked;

pub fn wrap(routes: impl Endpoint + 'static, policy: HttpPolicy) -> impl Endpoint {
    let limits = policy.limits.clone();
    let trust_forwarded_for = policy.trust_forwarded_for;
    let timeout = policy.timeout;
    let body_limit = policy.body_limit;
    routes
        .around(move |ep, mut req| async move {
            let declared = req.header("content-length").and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|length| length > body_limit) {
                return Err(ApiError::new(
                    error::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {body_limit} bytes"),
                )
                .into());
            }
            req.set_data(BodyLimit(body_limit));
            ep.call(req).await.map(IntoResponse::into_response)
        })
        .with(CatchPanic::new().with_handler(on_panic))
        .around(move |ep, req| async move {
            match tokio::time::timeout(timeout, ep.call(req)).await {
                Ok(result) => result.map(IntoResponse::into_response),
                Err(_) => Err(ApiError::new(error::REQUEST_TIMEOUT, "the request took too long").into()),
            }
        })
        .around(move |ep, req| {
            let limits = limits.clone();
            async move {
                if let Some(ip) = client_ip(&req, trust_forwarded_for) {
                    limits.check_ip(ip)?;
                }
                ep.call(req).await.map(IntoResponse::into_response)
            }
        })
        .around(request_context)
        // Outermost: poem's CORS layer turns an error it sees into a plain-text response, so it
        // must only ever see the envelope responses `request_context` already made.
        .with(cors(&policy.cors_origins))
}

fn cors(origins: &[String]) -> Cors {
    let cors = Cors::new()
        .allow_headers(["authorization", "content-type", "idempotency-key", "x-request-id"])
        .expose_headers(["x-request-id", "retry-after"])
        .max_age(600);
    if origins.iter().any(|o| o == "*") { cors } else { cors.allow_origins(origins.iter().map(String::as_str)) }
}

fn on_panic(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(panic = %what, "a handler panicked");
    let mut response = Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).finish();
    response.set_data(Panicked);
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

async fn request_context<E: Endpoint>(ep: Arc<E>, mut req: Request) -> poem::Result<Response> {
    let request_id = req
        .header("x-request-id")
        .filter(|value| accepted_request_id(value))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    req.set_data(RequestId(request_id.clone()));
    let method = req.method().clone();
    let span = tracing::info_span!("http", request_id = %request_id, method = %method, path = %req.uri().path());
    let started = Instant::now();

    let (mut response, route) = match ep.call(req).instrument(span.clone()).await.map(IntoResponse::into_response) {
        Ok(response) => {
            let route = response.data::<PathPattern>().map(|p| p.0.to_string());
            let response = if response.data::<Panicked>().is_some() {
                ApiError::new(error::INTERNAL, "internal error").to_response(&request_id)
            } else {
                response
            };
            (response, route)
        }
        Err(err) => {
            let route = err.data::<PathPattern>().map(|p| p.0.to_string());
            let _entered = span.enter();
            (to_api_error(err).to_response(&request_id), route)
        }
    };

    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16().to_string();
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    let labels = [("method", method.to_string()), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    Ok(response)
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
    if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        return ApiError::invalid("Content-Type", e.to_string());
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
/// (occurred while parsing "optional_integer(uint64)")`; a client needs "expected
/// integer(uint64): invalid digit found in string".
fn readable(reason: &str) -> String {
    let reason = reason.split(" (occurred while parsing").next().unwrap_or(reason);
    match reason.strip_prefix("failed to parse \"").and_then(|rest| rest.split_once("\": ")) {
        Some((expected, why)) => format!("expected {expected}: {why}"),
        None => reason.to_owned(),
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
            "expected integer(uint64): invalid digit found in string"
        );
        assert_eq!(readable("something else"), "something else");
    }

    #[test]
    fn request_ids_must_be_short_and_printable() {
        assert!(accepted_request_id("abc-123"));
        assert!(!accepted_request_id(""));
        assert!(!accepted_request_id("has space"));
        assert!(!accepted_request_id(&"x".repeat(129)));
    }
}

//! `GET /healthz`, `GET /readyz` and `GET /metrics`: plain poem handlers outside the
//! OpenAPI prefix, for probes and scrapers.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{IntoResponse, Response, handler};
use serde_json::json;
use service::Services;

use crate::error::{ApiError, SERVICE_UNAVAILABLE};
use crate::middleware::RequestId;

#[handler]
pub fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"code": 0, "message": "OK", "data": {"status": "alive"}}))
}

/// 200 when Postgres, Redis and RabbitMQ all answer; otherwise 503 naming the failing ones.
#[handler]
pub async fn readyz(services: Data<&Arc<Services>>, request_id: Data<&RequestId>) -> Response {
    let checks = service::health::readiness(&services.deps).await;
    let details: serde_json::Map<String, serde_json::Value> =
        checks.iter().map(|c| (c.service.to_owned(), json!(c.problem.as_deref().unwrap_or("ok")))).collect();
    let failing: Vec<String> =
        checks.iter().filter_map(|c| c.problem.as_ref().map(|p| format!("{} ({p})", c.service))).collect();
    if failing.is_empty() {
        return json_response(StatusCode::OK, json!({"code": 0, "message": "OK", "data": details}));
    }
    ApiError::new(SERVICE_UNAVAILABLE, format!("not ready: {} unreachable", failing.join(", ")))
        .with_details(details.into())
        .to_response(&request_id.0.0)
}

/// Prometheus text format: request counts and latency histograms by route and status,
/// connection pool gauges, and the pipeline's own counters.
#[handler]
pub fn metrics(services: Data<&Arc<Services>>) -> Response {
    service::metrics::record_gauges(services.0.as_ref());
    Response::builder().content_type("text/plain; version=0.0.4").body(platform::metrics::handle().render())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    poem::web::Json(body).with_status(status).into_response()
}

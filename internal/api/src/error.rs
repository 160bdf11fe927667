//! The error half of the envelope: every failure becomes
//! `{"code", "error", "message", "request_id"}` with a real HTTP status.
//!
//! Handlers return [`ApiError`]; poem's and poem-openapi's own errors (bad JSON, unknown
//! route, panic, timeout) are converted by [`crate::middleware`], which also fills in the
//! request id. A 5xx is logged with its whole cause chain and answered with a generic
//! message only.

use poem::http::StatusCode;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};
use service::Error;

/// One row of docs/errors.md: a stable name, a stable number and the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub name: &'static str,
    pub number: i32,
    pub status: StatusCode,
}

macro_rules! codes {
    ($($ident:ident = ($number:expr, $status:ident);)*) => {
        $(pub const $ident: Code = Code { name: stringify!($ident), number: $number, status: StatusCode::$status };)*
        /// Every code, for docs and tests.
        pub const ALL: &[Code] = &[$($ident),*];
    };
}

codes! {
    INVALID_REQUEST = (1000, BAD_REQUEST);
    PAYLOAD_TOO_LARGE = (1001, PAYLOAD_TOO_LARGE);
    UNAUTHORIZED = (1100, UNAUTHORIZED);
    INVALID_CREDENTIALS = (1101, UNAUTHORIZED);
    INVALID_REFRESH_TOKEN = (1102, UNAUTHORIZED);
    FORBIDDEN = (1200, FORBIDDEN);
    NOT_FOUND = (1300, NOT_FOUND);
    METHOD_NOT_ALLOWED = (1301, METHOD_NOT_ALLOWED);
    EMAIL_TAKEN = (1400, CONFLICT);
    INSUFFICIENT_STOCK = (1401, CONFLICT);
    ORDER_NOT_PENDING = (1402, CONFLICT);
    ORDER_EXPIRED = (1403, CONFLICT);
    IDEMPOTENCY_KEY_REUSED = (1404, CONFLICT);
    SOLD_OUT = (1410, CONFLICT);
    LIMIT_REACHED = (1411, CONFLICT);
    NOT_ACTIVE = (1412, CONFLICT);
    BID_TOO_LOW = (1420, CONFLICT);
    AUCTION_CLOSED = (1421, CONFLICT);
    BUY_NOW_UNAVAILABLE = (1422, CONFLICT);
    MAX_AMOUNT_LOWERED = (1424, CONFLICT);
    RATE_LIMITED = (1500, TOO_MANY_REQUESTS);
    SERVICE_UNAVAILABLE = (1600, SERVICE_UNAVAILABLE);
    REQUEST_TIMEOUT = (1601, SERVICE_UNAVAILABLE);
    INTERNAL = (1700, INTERNAL_SERVER_ERROR);
}

/// The body of every error response. Serialized with serde directly (not through
/// poem-openapi's JSON values): an error is the common answer of a busy sale.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct ErrorBody {
    /// Stable non-zero number of the error (docs/errors.md).
    pub code: i32,
    /// Stable name of the error, e.g. `SOLD_OUT`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The request's `X-Request-Id`, to find it in the logs.
    pub request_id: String,
    /// The input that was wrong, for `INVALID_REQUEST`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Facts that help the client retry, e.g. the current price for `BID_TOO_LOW`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub field: Option<String>,
    pub details: Option<Box<serde_json::Value>>,
    pub retry_after_secs: Option<u64>,
    /// The cause of a 5xx, logged and never shown.
    pub source: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), field: None, details: None, retry_after_secs: None, source: None }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field} {}", message.into());
        Self { field: Some(field), ..Self::new(INVALID_REQUEST, message) }
    }

    pub fn internal(source: anyhow::Error) -> Self {
        Self { source: Some(source), ..Self::new(INTERNAL, "internal error") }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    pub fn body(&self, request_id: &str) -> ErrorBody {
        ErrorBody {
            code: self.code.number,
            error: self.code.name.to_owned(),
            message: self.message.clone(),
            request_id: request_id.to_owned(),
            field: self.field.clone(),
            details: self.details.as_deref().cloned(),
        }
    }

    /// One event per 5xx: the message, the request id and the whole cause chain on one line
    /// (`{:#}` of an `anyhow::Error`). A bug is an ERROR; a dependency that is down or a
    /// request that ran out of time is a WARN.
    ///
    /// The stack trace of the error only with `RUST_LIB_BACKTRACE=1`, std's switch for the
    /// backtraces of errors: many machines set `RUST_BACKTRACE=1` for panics, and a
    /// 140-frame trace per failed request buries the log. The cause chain says where.
    fn log(&self, request_id: &str) {
        let cause = self.source.as_ref().map(|source| format!("{source:#}"));
        let cause = cause.as_deref().unwrap_or("");
        let backtrace = self
            .source
            .as_ref()
            .filter(|_| error_backtraces_wanted())
            .map(|source| source.backtrace())
            .filter(|trace| trace.status() == std::backtrace::BacktraceStatus::Captured)
            .map(|trace| format!("\n{trace}"));
        let backtrace = backtrace.as_deref().unwrap_or("");
        if self.code == INTERNAL {
            tracing::error!(request_id, cause, "{}{backtrace}", self.message);
        } else {
            tracing::warn!(request_id, cause, "{}{backtrace}", self.message);
        }
    }

    /// The response, with the request id known at this point (the middleware's job).
    pub fn to_response(&self, request_id: &str) -> poem::Response {
        if self.code.status.is_server_error() {
            self.log(request_id);
        }
        let mut response = poem::Response::builder()
            .status(self.code.status)
            .content_type("application/json; charset=utf-8")
            .body(serde_json::to_vec(&self.body(request_id)).unwrap_or_default());
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert("retry-after", secs.into());
        }
        response
    }
}

fn error_backtraces_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| std::env::var("RUST_LIB_BACKTRACE").is_ok_and(|value| value != "0"))
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for poem::Error {
    fn from(err: ApiError) -> Self {
        let status = err.code.status;
        poem::Error::new(err, status)
    }
}

impl From<domain::Invalid> for ApiError {
    fn from(err: domain::Invalid) -> Self {
        ApiError::invalid(err.field, err.message)
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let code = match &err {
            Error::Invalid(invalid) => {
                return ApiError::invalid(invalid.field.clone(), invalid.message.clone());
            }
            Error::Unauthenticated => UNAUTHORIZED,
            Error::BadCredentials => INVALID_CREDENTIALS,
            Error::BadRefreshToken => INVALID_REFRESH_TOKEN,
            Error::Forbidden => FORBIDDEN,
            Error::NotFound(_) => NOT_FOUND,
            Error::EmailTaken => EMAIL_TAKEN,
            Error::InsufficientStock { product_id, available, requested } => {
                return ApiError::new(INSUFFICIENT_STOCK, message).with_details(serde_json::json!({
                    "product_id": product_id, "available": available, "requested": requested
                }));
            }
            Error::OrderNotPending { .. } => ORDER_NOT_PENDING,
            Error::OrderExpired => ORDER_EXPIRED,
            Error::IdempotencyKeyReused => IDEMPOTENCY_KEY_REUSED,
            Error::SoldOut(_) => SOLD_OUT,
            Error::LimitReached { .. } => LIMIT_REACHED,
            Error::NotActive(_) => NOT_ACTIVE,
            Error::BuyNowUnavailable(_) => BUY_NOW_UNAVAILABLE,
            Error::BidTooLow { current, minimum } => {
                return ApiError::new(BID_TOO_LOW, message).with_details(serde_json::json!({
                    "current_price": current.map(|m| m.to_string()),
                    "min_bid": minimum.to_string(),
                }));
            }
            Error::MaxAmountLowered { maximum } => {
                return ApiError::new(MAX_AMOUNT_LOWERED, message)
                    .with_details(serde_json::json!({ "max_amount": maximum.to_string() }));
            }
            Error::AuctionClosed { current } => {
                return ApiError::new(AUCTION_CLOSED, message)
                    .with_details(serde_json::json!({ "current_price": current.map(|m| m.to_string()) }));
            }
            Error::Rebuilding => {
                return ApiError { retry_after_secs: Some(1), ..ApiError::new(SERVICE_UNAVAILABLE, message) };
            }
            Error::Unavailable { .. } => {
                let Error::Unavailable { cause, .. } = err else { unreachable!() };
                return ApiError { source: cause, ..ApiError::new(SERVICE_UNAVAILABLE, message) };
            }
            Error::Internal(_) => {
                let Error::Internal(source) = err else { unreachable!() };
                return ApiError::internal(source);
            }
        };
        ApiError::new(code, message)
    }
}

/// Lets handlers return `Result<XxxResponse, ApiError>`: Swagger UI then lists every error
/// status with the [`ErrorBody`] schema.
impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        let responses = [
            (400, "Invalid input: `field` names it"),
            (401, "Missing, invalid or expired credentials"),
            (403, "Authenticated, but not allowed"),
            (404, "No such resource (or not yours)"),
            (409, "A business rule refused the request: see `error`"),
            (413, "The request body is too large"),
            (429, "Rate limited: retry after `Retry-After` seconds"),
            (500, "Unexpected failure"),
            (503, "A dependency is down or the request timed out"),
        ];
        MetaResponses {
            responses: responses
                .into_iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_documented() {
        let doc = include_str!("../../../docs/errors.md");
        for code in ALL {
            let row = format!("| {} | `{}` | {} |", code.number, code.name, code.status.as_u16());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
        }
    }

    #[test]
    fn error_codes_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.number, b.number, "{} and {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
    }

    /// The log lines `f` writes, as plain text.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_server_error_logs_its_cause_chain_once_on_one_line() {
        let cause = anyhow::anyhow!("connection reset by peer").context("loading sale 7");
        let lines = logged(|| drop(ApiError::internal(cause).to_response("r-42")));
        if !error_backtraces_wanted() {
            assert_eq!(lines.len(), 1, "{lines:#?}");
        }
        let line = &lines[0];
        assert!(line.contains("ERROR") && line.contains("r-42"), "{line}");
        assert!(line.contains("loading sale 7: connection reset by peer"), "{line}");
        assert!(!line.contains("Caused by") && !line.contains("Stack backtrace"), "{line}");
    }

    #[test]
    fn a_dependency_that_is_down_is_a_warning_with_its_cause() {
        let down = Error::Unavailable { service: "redis", cause: Some(anyhow::anyhow!("connection refused")) };
        let lines = logged(|| drop(ApiError::from(down).to_response("r-43")));
        if !error_backtraces_wanted() {
            assert_eq!(lines.len(), 1, "{lines:#?}");
        }
        assert!(lines[0].contains("WARN") && lines[0].contains("redis is unavailable"), "{}", lines[0]);
        assert!(lines[0].contains("connection refused"), "{}", lines[0]);
    }

    #[test]
    fn a_client_error_logs_nothing() {
        assert!(logged(|| drop(ApiError::invalid("quantity", "must be an integer").to_response("r-44"))).is_empty());
    }

    #[test]
    fn a_server_error_hides_its_cause() {
        let err = ApiError::internal(anyhow::anyhow!("password=hunter2 in a SQL error"));
        let body = err.body("r-1");
        assert_eq!(body.message, "internal error");
        assert!(!format!("{body:?}").contains("hunter2"));
    }
}

//! The success half of the envelope (`{"code":0,"message":"OK","data":...}`), page
//! wrappers, and [`JsonBody`], the request-body extractor whose errors name the field.

use chrono::{DateTime, Utc};
use poem::{Request, RequestBody};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::{ParseFromJSON, ToJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, Object};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Object)]
pub struct Envelope<T: ParseFromJSON + ToJSON + Send + Sync> {
    /// Always 0 on success.
    pub code: i32,
    /// Always "OK" on success.
    pub message: String,
    pub data: T,
}

/// `Json(Envelope { code: 0, message: "OK", data })`.
pub fn ok<T: ParseFromJSON + ToJSON + Send + Sync>(data: T) -> Json<Envelope<T>> {
    Json(Envelope { code: 0, message: "OK".to_owned(), data })
}

#[derive(Debug, Object)]
pub struct PageOf<T: ParseFromJSON + ToJSON + Send + Sync> {
    pub items: Vec<T>,
    pub page: u64,
    pub page_size: u64,
    pub total: u64,
}

impl<T: ParseFromJSON + ToJSON + Send + Sync> PageOf<T> {
    pub fn new<R>(rows: service::Page<R>, request: domain::PageRequest, map: impl FnMut(R) -> T) -> Self {
        Self {
            items: rows.items.into_iter().map(map).collect(),
            page: request.page,
            page_size: request.page_size,
            total: rows.total,
        }
    }
}

/// A JSON request body parsed with serde, so that a bad body is answered with the path of
/// the offending field and a sentence in the API's words (`items[0].quantity must be an
/// integer`) rather than poem-openapi's message, which names only the type. The schema
/// shown in Swagger UI still comes from `T`'s `Object` derive.
pub struct JsonBody<T>(pub T);

impl<'a, T> ApiExtractor<'a> for JsonBody<T>
where
    T: Type + DeserializeOwned + Send,
{
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType { content_type: "application/json", schema: T::schema_ref() }],
            // An empty body counts as `{}` (see `parse_json`), so the body may be left out
            // exactly when `{}` is a valid one.
            required: serde_json::from_str::<T>("{}").is_err(),
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        if let Some(content_type) = request.content_type()
            && !content_type.starts_with("application/json")
        {
            return Err(ApiError::invalid("Content-Type", "must be application/json").into());
        }
        // The middleware has read the body already, within `http.body_limit_bytes`.
        let bytes = body.take()?.into_bytes().await.map_err(|err| ApiError::invalid("body", err.to_string()))?;
        parse_json(&bytes).map(JsonBody).map_err(Into::into)
    }
}

/// Parses a body; an empty body counts as `{}`, so an operation whose fields all have
/// defaults (`POST /sales/{id}/purchase`) can be called without one, and any other
/// operation names the first field it misses.
///
/// serde_json refuses invalid UTF-8, lone surrogates and nesting deeper than 128 levels
/// while parsing; then every string passes [`domain::page::printable`], then serde builds
/// `T`, whose unknown fields are refused by `deny_unknown_fields`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| ApiError::invalid("body", format!("is not valid JSON: {}", strip_position(&err.to_string()))))?;
    if !value.is_object() {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    check_strings(&value, "")?;
    serde_path_to_error::deserialize(&value).map_err(|err| {
        let path = err.path().to_string();
        let message = strip_position(&err.into_inner().to_string());
        let at = |name: &str| if path == "." { name.to_owned() } else { format!("{path}.{name}") };
        if let Some(name) = quoted_after(&message, "missing field `") {
            return ApiError::invalid(at(&name), "is required");
        }
        if let Some(name) = quoted_after(&message, "unknown field `") {
            let known = message.split_once(", expected ").map(|(_, known)| known.replace('`', ""));
            let hint = known.map(|known| format!("; expected {known}")).unwrap_or_default();
            // serde_path_to_error's path ends with the unknown key already.
            let field = if path.ends_with(name.as_str()) { path } else { at(&name) };
            return ApiError::invalid(field, format!("is not a field of this request{hint}"));
        }
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(field, in_api_words(&message))
    })
}

/// Every string (and key) in the body must be printable text, wherever it sits.
fn check_strings(value: &Value, path: &str) -> Result<(), ApiError> {
    let field = |path: &str| if path.is_empty() { "body".to_owned() } else { path.to_owned() };
    match value {
        Value::String(text) => domain::page::printable(&field(path), text).map_err(ApiError::from),
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(index, item)| check_strings(item, &format!("{path}[{index}]")))
        }
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            domain::page::printable(&field(path.as_str()), key).map_err(ApiError::from)?;
            check_strings(item, &path)
        }),
        _ => Ok(()),
    }
}

/// serde's "invalid type: string \"1\", expected i64" as the API says it: "must be an
/// integer". serde names what it expected after ", expected ".
fn in_api_words(message: &str) -> String {
    let expected = message.rsplit_once(", expected ").map_or("", |(_, expected)| expected);
    let integer = ["i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"].contains(&expected);
    if integer && message.starts_with("invalid value: integer") {
        "is out of range".to_owned()
    } else if integer {
        "must be an integer".to_owned()
    } else if message.contains("UUID") {
        "must be a UUID".to_owned()
    } else if expected == "a string" {
        "must be a string".to_owned()
    } else if expected == "a boolean" {
        "must be true or false".to_owned()
    } else if expected == "a sequence" {
        "must be an array".to_owned()
    } else if expected.starts_with("struct ") || expected == "a map" {
        "must be an object".to_owned()
    } else {
        message.to_owned()
    }
}

/// The name in serde's "missing field `email`" (with `prefix` = "missing field `").
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_owned())
}

/// Drops serde_json's " at line 1 column 17" suffix, which means nothing to a client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// `#[serde(deserialize_with = "date_time")]`: an RFC 3339 time, with a message a person
/// can act on (chrono's own says only "input contains invalid characters").
pub fn date_time<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    const EXPECTED: &str = "must be an RFC 3339 date-time such as 2026-11-23T18:00:00Z";
    let value = Value::deserialize(deserializer)?;
    let parsed = value.as_str().and_then(|text| DateTime::parse_from_rfc3339(text).ok());
    parsed.map(|time| time.with_timezone(&Utc)).ok_or_else(|| serde::de::Error::custom(EXPECTED))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        product_id: String,
        quantity: i64,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Order {
        items: Vec<Item>,
    }

    fn field_of(body: &str) -> String {
        parse_json::<Order>(body.as_bytes()).unwrap_err().field.unwrap()
    }

    #[test]
    fn a_missing_field_is_named() {
        assert_eq!(field_of("{}"), "items");
        assert_eq!(field_of(r#"{"items":[{"product_id":"x"}]}"#), "items[0].quantity");
    }

    #[test]
    fn a_wrong_type_is_named_by_its_path() {
        assert_eq!(field_of(r#"{"items":[{"product_id":"x","quantity":"2"}]}"#), "items[0].quantity");
    }

    #[test]
    fn malformed_json_is_blamed_on_the_body_and_an_empty_body_on_the_first_missing_field() {
        assert_eq!(field_of(r#"{"items": ["#), "body");
        assert_eq!(field_of(""), "items");
        let err = parse_json::<Order>(b"{nope}").unwrap_err();
        assert!(err.message.starts_with("body is not valid JSON"), "{}", err.message);
        assert!(!err.message.contains("line 1"));
    }

    fn message_of(body: &str) -> String {
        parse_json::<Order>(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn type_errors_are_said_in_the_api_words() {
        assert_eq!(
            message_of(r#"{"items":[{"product_id":"x","quantity":"1"}]}"#),
            "items[0].quantity must be an integer"
        );
        assert_eq!(
            message_of(r#"{"items":[{"product_id":"x","quantity":1.5}]}"#),
            "items[0].quantity must be an integer"
        );
        assert_eq!(
            message_of(r#"{"items":[{"product_id":"x","quantity":99999999999999999999}]}"#),
            "items[0].quantity must be an integer"
        );
        assert_eq!(
            message_of(r#"{"items":[{"product_id":"x","quantity":9223372036854775808}]}"#),
            "items[0].quantity is out of range"
        );
        assert_eq!(message_of(r#"{"items":{}}"#), "items must be an array");
        assert_eq!(message_of(r#"{"items":[{"product_id":5,"quantity":1}]}"#), "items[0].product_id must be a string");
    }

    #[test]
    fn control_characters_anywhere_are_refused_by_path() {
        assert_eq!(field_of(r#"{"items":[{"product_id":"a\u0000","quantity":1}]}"#), "items[0].product_id");
        assert_eq!(
            message_of(r#"{"items":[{"product_id":"a\u001b","quantity":1}]}"#),
            "items[0].product_id must not contain control characters"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        quantity: i64,
    }

    #[test]
    fn an_unknown_field_is_named_with_the_known_ones() {
        let err = parse_json::<Strict>(br#"{"quantity":1,"quantiy":2}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("quantiy"));
        assert_eq!(err.message, "quantiy is not a field of this request; expected quantity");
    }
}

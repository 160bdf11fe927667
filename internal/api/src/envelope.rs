//! The success half of the envelope (`{"code":0,"message":"OK","data":...}`), page
//! wrappers, and [`JsonBody`], the request-body extractor whose errors name the field.

use poem::error::ReadBodyError;
use poem::{Request, RequestBody};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::{ParseFromJSON, ToJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, Object};
use serde::de::DeserializeOwned;

use crate::error::{self, ApiError};
use crate::middleware::BodyLimit;

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
/// the offending field (`items[0].quantity: invalid type: string "2", expected i64`)
/// rather than poem-openapi's message, which names only the type. The schema shown in
/// Swagger UI still comes from `T`'s `Object` derive.
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
            required: true,
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
        let limit = request.data::<BodyLimit>().map_or(usize::MAX, |limit| limit.0);
        let bytes = body.take()?.into_bytes_limit(limit).await.map_err(|err| match err {
            ReadBodyError::PayloadTooLarge => {
                ApiError::new(error::PAYLOAD_TOO_LARGE, format!("the request body is larger than {limit} bytes"))
            }
            other => ApiError::invalid("body", other.to_string()),
        })?;
        parse_json(&bytes).map(JsonBody).map_err(Into::into)
    }
}

/// Parses a body; an empty body counts as `{}`, so an operation whose fields all have
/// defaults (`POST /sales/{id}/purchase`) can be called without one, and any other
/// operation names the first field it misses.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = strip_position(&inner.to_string());
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid("body", format!("malformed JSON ({message})"));
        }
        match missing_field(&message) {
            Some(name) if path == "." => ApiError::invalid(name, "is required"),
            Some(name) => ApiError::invalid(format!("{path}.{name}"), "is required"),
            None if path == "." => ApiError::invalid("body", message),
            None => ApiError::invalid(path, message),
        }
    })
}

/// serde says "missing field `email`"; the field goes into `field`, the rest is noise.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Drops serde_json's " at line 1 column 17" suffix, which means nothing to a client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
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
        assert!(err.message.starts_with("body: malformed JSON"), "{}", err.message);
        assert!(!err.message.contains("line 1"));
    }
}

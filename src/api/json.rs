//! `AppJson<T>`: JSON bodies in, JSON out, with the API's error shape for every bad body.
//!
//! axum's own `Json` answers rejections as plain text; this extractor answers them like every
//! other error and names the field a value was refused in (`items[0].quantity`).

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ApiError;

/// The largest body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Fields of an order the service sets; a client that sends one is told so by name.
const READ_ONLY_FIELDS: &[&str] = &[
    "order_id",
    "order_number",
    "status",
    "total_amount",
    "total_price",
    "created_at",
    "updated_at",
    "created_by",
];

/// A JSON request body, or a JSON response.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: MAX_BODY_BYTES,
                }
            } else {
                ApiError::BadRequest {
                    code: "unreadable_body",
                    message: rejection.body_text(),
                }
            }
        })?;
        parse(&body).map(AppJson)
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn is_json(req: &Request) -> bool {
    let Some(value) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > "application/+json".len()
            && essence.to_ascii_lowercase().starts_with("application/")
            && essence.to_ascii_lowercase().ends_with("+json"))
}

/// Parses a body, telling malformed JSON (400) from well-formed JSON with bad content (422).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    use serde_json::error::Category;
    let malformed = |e: &serde_json::Error| ApiError::BadRequest {
        code: "malformed_json",
        message: format!("the body is not valid JSON: {e}"),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            // serde_json reports some wrong types as syntax: an enum given anything but a string
            // or an object is "expected value". JSON that parses is not malformed: its content
            // is refused at the field, as any other wrong type.
            Category::Syntax | Category::Eof
                if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() =>
            {
                wrong_type(&path)
            }
            Category::Syntax | Category::Eof | Category::Io => malformed(&inner),
            Category::Data => data_error(&path, &inner),
        }
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

/// A field given a kind of value it never takes (an array or a number where one of some names is
/// expected).
fn wrong_type(path: &str) -> ApiError {
    let message = if path == "." {
        "the body is not an object of this request's fields"
    } else {
        "not a kind of value this field takes"
    };
    invalid_field(path, message.to_owned())
}

fn data_error(path: &str, err: &serde_json::Error) -> ApiError {
    // serde_json appends " at line L column C"; the path says where more usefully.
    let text = err.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m)
        .to_owned();
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        // The path already ends in the unknown field's name.
        let field = if path == "." {
            name.to_owned()
        } else {
            path.to_owned()
        };
        return if READ_ONLY_FIELDS.contains(&name) {
            ApiError::Unprocessable {
                code: "read_only_field",
                message: format!("`{name}` is set by the service and may not be sent"),
                details: json!({ "field": field }),
            }
        } else {
            ApiError::Unprocessable {
                code: "unknown_field",
                message,
                details: json!({ "field": field }),
            }
        };
    }
    invalid_field(path, message)
}

/// 422 `invalid_field`: `message` about the field at `path` (`.`, the body itself).
fn invalid_field(path: &str, message: String) -> ApiError {
    let field = if path == "." { "" } else { path };
    ApiError::Unprocessable {
        code: "invalid_field",
        message: if field.is_empty() {
            message
        } else {
            format!("{field}: {message}")
        },
        details: json!({ "field": field }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Line>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        quantity: u32,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        Gift,
    }

    fn code(e: ApiError) -> (&'static str, serde_json::Value) {
        match e {
            ApiError::Unprocessable { code, details, .. } => (code, details),
            ApiError::BadRequest { code, .. } => (code, serde_json::Value::Null),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn names_the_field_and_the_class_of_error() {
        let (c, _) = code(parse::<Body>(b"{").unwrap_err());
        assert_eq!(c, "malformed_json");
        let (c, d) = code(parse::<Body>(br#"{"items":[{"quantity":-1}]}"#).unwrap_err());
        assert_eq!(
            (c, d["field"].as_str()),
            ("invalid_field", Some("items[0].quantity"))
        );
        let (c, d) = code(parse::<Body>(br#"{"items":[],"status":"paid"}"#).unwrap_err());
        assert_eq!(
            (c, d["field"].as_str()),
            ("read_only_field", Some("status"))
        );
        let (c, _) = code(parse::<Body>(br#"{"items":[],"colour":1}"#).unwrap_err());
        assert_eq!(c, "unknown_field");
        let (c, _) = code(parse::<Body>(br#"{"items":[]} trailing"#).unwrap_err());
        assert_eq!(c, "malformed_json");
        // serde_json calls an enum given an array "expected value", a syntax error; the body is
        // JSON all the same.
        let body = br#"{"items":[{"quantity":1,"kind":[]}]}"#;
        let (c, d) = code(parse::<Body>(body).unwrap_err());
        assert_eq!(
            (c, d["field"].as_str()),
            ("invalid_field", Some("items[0].kind"))
        );
    }
}

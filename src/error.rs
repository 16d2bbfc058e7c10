//! The one error type of the HTTP API and its JSON shape.
//!
//! Every rejection answers `{"error": code, "message": ..., "details": ...}` with a 4xx status.
//! A 5xx is logged with its cause, and the client sees only that something failed on our side.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Refusal;
use crate::commands::CommandError;
use crate::domain::OrderError;
use crate::store::StoreError;

/// The JSON body of every error answer.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `insufficient_stock`; each answer's codes are listed with it.
    pub error: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Facts about it (the field, the stock short, the limit), or null.
    pub details: Value,
}

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, a bad path or query parameter).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid credentials, not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource, or not one the caller may see.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// 409: the request conflicts with the resource's current state.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What conflicts.
        message: String,
        /// Facts the client needs to resolve it.
        details: Value,
    },
    /// 413: the body is larger than allowed.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 415: the body is not `application/json`.
    #[error("the request body must be sent as Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422: well-formed JSON whose content is not acceptable.
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
        /// Where: usually `{"field": "items[0].quantity"}`.
        details: Value,
    },
    /// 408: the request took longer than `REQUEST_TIMEOUT` (a body sent too slowly, or a
    /// command that waited too long); what it did not finish was not applied.
    #[error("the request took longer than {seconds} s")]
    RequestTimeout {
        /// The limit in seconds.
        seconds: u64,
    },
    /// 429: the caller sent more writes than its limit; `Retry-After` says when to try again.
    #[error("too many writes from this caller; retry in {retry_after} s")]
    TooManyRequests {
        /// Seconds until the next write is allowed.
        retry_after: u64,
        /// The sustained limit, writes per second.
        limit: u32,
        /// The burst allowed.
        burst: u32,
    },
    /// 500: our failure; the cause is logged, not answered.
    #[error("internal error: {0}")]
    Internal(String),
    /// 503: a component the request needs (the broker) cannot be reached now.
    #[error("{message}")]
    Unavailable {
        /// Machine-readable code.
        code: &'static str,
        /// What cannot be reached.
        message: String,
    },
}

impl ApiError {
    /// A 422 about one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            code: "invalid_field",
            message: message.into(),
            details: json!({ "field": field }),
        }
    }

    /// A 404 for an order that does not exist or that the caller may not see; the two are
    /// answered alike so that order ids cannot be probed.
    pub fn order_not_found(order_id: uuid::Uuid) -> ApiError {
        ApiError::NotFound(format!("no order {order_id}"))
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (message, details) = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    "the request failed on our side; it was not applied".to_owned(),
                    Value::Null,
                )
            }
            ApiError::Conflict { details, .. } | ApiError::Unprocessable { details, .. } => {
                (self.to_string(), details.clone())
            }
            ApiError::PayloadTooLarge { limit } => {
                (self.to_string(), json!({ "limit_bytes": limit }))
            }
            ApiError::RequestTimeout { seconds } => {
                (self.to_string(), json!({ "timeout_seconds": seconds }))
            }
            ApiError::TooManyRequests {
                retry_after,
                limit,
                burst,
            } => (
                self.to_string(),
                json!({ "retry_after_seconds": retry_after, "limit_per_second": limit, "burst": burst }),
            ),
            _ => (self.to_string(), Value::Null),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.code(),
                message,
                details,
            }),
        )
            .into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*retry_after),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::IdempotencyKeyTaken(key) => ApiError::Conflict {
                code: "idempotency_key_in_use",
                message: "another request with this Idempotency-Key was answered meanwhile; retry to get its answer".into(),
                details: json!({ "idempotency_key": key }),
            },
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        ApiError::from(StoreError::from(e))
    }
}

impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> ApiError {
        match e {
            Refusal::Unauthenticated(message) => ApiError::Unauthorized(message),
            Refusal::NotAllowed(message) => ApiError::Forbidden(message),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        let message = e.to_string();
        match e {
            CommandError::Forbidden(_) => ApiError::Forbidden(message),
            CommandError::InvalidField { field, message } => {
                ApiError::invalid_field(&field, message)
            }
            CommandError::OrderNotFound(order_id) => ApiError::order_not_found(order_id),
            CommandError::InsufficientStock(short) => {
                let items: Vec<_> = short
                    .iter()
                    .map(|s| {
                        json!({
                            "product_id": s.product_id,
                            "requested": s.requested,
                            "available": s.available.max(0),
                        })
                    })
                    .collect();
                ApiError::Conflict {
                    code: "insufficient_stock",
                    message,
                    details: json!({ "items": items }),
                }
            }
            CommandError::UnpricedProducts(items) => {
                let items: Vec<_> = items
                    .iter()
                    .map(|i| json!({ "field": i.field, "product_id": i.product_id }))
                    .collect();
                ApiError::Unprocessable {
                    code: "unpriced_product",
                    message,
                    details: json!({ "items": items }),
                }
            }
            CommandError::WrongPrices(items) => {
                let items: Vec<_> = items
                    .iter()
                    .map(|i| {
                        json!({
                            "field": i.field,
                            "product_id": i.product_id,
                            "unit_price": i.unit_price,
                            "currency": i.currency,
                            "catalogue_unit_price": i.catalogue_unit_price,
                            "catalogue_currency": i.catalogue_currency,
                        })
                    })
                    .collect();
                ApiError::Unprocessable {
                    code: "price_mismatch",
                    message,
                    details: json!({ "items": items }),
                }
            }
            CommandError::NothingToChange(_) => unprocessable("nothing_to_change", message),
            CommandError::CustomerCancelsOnlyPending(status) => ApiError::Conflict {
                code: "order_not_pending",
                message,
                details: json!({ "current_status": status }),
            },
            CommandError::OverrideNotAllowed(status) => ApiError::Conflict {
                code: "invalid_status",
                message,
                details: json!({ "current_status": status }),
            },
            CommandError::TooManyChatLinks { limit } => ApiError::Conflict {
                code: "too_many_chat_links",
                message,
                details: json!({ "limit": limit }),
            },
            CommandError::Order(e) => ApiError::from(e),
            CommandError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> ApiError {
        let message = e.to_string();
        match e {
            OrderError::InvalidTransition { from, to } => ApiError::Conflict {
                code: "invalid_status_transition",
                message,
                details: json!({ "current_status": from, "requested_status": to }),
            },
            OrderError::NotPending(status) => ApiError::Conflict {
                code: "order_not_pending",
                message,
                details: json!({ "current_status": status }),
            },
            OrderError::NoItems => unprocessable("no_items", message),
            OrderError::TooManyItems(_) => unprocessable("too_many_items", message),
            OrderError::DuplicateProduct(id) => ApiError::Unprocessable {
                code: "duplicate_product",
                message,
                details: json!({ "product_id": id }),
            },
            OrderError::TotalTooLarge => unprocessable("total_too_large", message),
            OrderError::UnknownProduct(id) => ApiError::Unprocessable {
                code: "unknown_product",
                message,
                details: json!({ "product_id": id }),
            },
            OrderError::ProductAlreadyInOrder(id) => ApiError::Unprocessable {
                code: "product_already_in_order",
                message,
                details: json!({ "product_id": id }),
            },
        }
    }
}

fn unprocessable(code: &'static str, message: String) -> ApiError {
    ApiError::Unprocessable {
        code,
        message,
        details: Value::Null,
    }
}

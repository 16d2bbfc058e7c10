//! Ids in the path, refused with a JSON 400 when they are not UUIDs.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;

/// The `{id}` of a path, as a UUID.
#[derive(Debug, Clone, Copy)]
pub struct OrderId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for OrderId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<OrderId, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_path",
                message: e.body_text(),
            })?;
        Uuid::parse_str(&raw)
            .map(OrderId)
            .map_err(|_| ApiError::BadRequest {
                code: "invalid_id",
                message: format!("`{raw}` in the path is not a UUID"),
            })
    }
}

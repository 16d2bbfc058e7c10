//! The query string, refused with the API's JSON 400 (`invalid_query`) when it does not parse.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The query string as `T`; a query that does not parse is a 400 `invalid_query`.
#[derive(Debug, Clone)]
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<AppQuery<T>, ApiError> {
        let Query(query) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| invalid_query(e.body_text()))?;
        Ok(AppQuery(query))
    }
}

/// A 400 `invalid_query` saying what is wrong with a parameter.
pub fn invalid_query(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_query",
        message: message.into(),
    }
}

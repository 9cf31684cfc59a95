//! Types that make handlers describe themselves to the OpenAPI document (`aide`):
//! a JSON body passed on raw ([`JsonBody`]), a 201-or-200 reply ([`Created`]), and
//! [`ApiError`] as every operation's error response.

use std::marker::PhantomData;

use aide::generate::GenContext;
use aide::openapi::{MediaType, Operation, Response, SchemaObject};
use aide::{OperationInput, OperationOutput};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use schemars::JsonSchema;

use super::{ApiError, ErrorBody};

/// A request body documented as JSON of `T`, handed to the handler as the raw bytes
/// (the service decodes them, with its size limit and error messages). An empty body
/// is passed on as empty: handlers with an optional body decide.
pub struct JsonBody<T>(pub Bytes, PhantomData<T>);

impl<S: Send + Sync, T> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| ApiError::from(e))?;
        Ok(Self(bytes, PhantomData))
    }
}

impl<T: JsonSchema> OperationInput for JsonBody<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<T>::operation_input(ctx, operation);
    }
}

/// A reply that is `201 Created` when something was created, else `200 OK`, both
/// with `T` as JSON.
pub struct Created<T>(pub bool, pub T);

impl<T: serde::Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> axum::response::Response {
        let code = if self.0 {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (code, Json(self.1)).into_response()
    }
}

fn json_response<T: JsonSchema>(ctx: &mut GenContext, description: &str) -> Response {
    let schema = ctx.schema.subschema_for::<T>();
    Response {
        description: description.into(),
        content: [(
            "application/json".to_string(),
            MediaType {
                schema: Some(SchemaObject {
                    json_schema: schema,
                    example: None,
                    external_docs: None,
                }),
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

impl<T: JsonSchema> OperationOutput for Created<T> {
    type Inner = T;

    fn inferred_responses(
        ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Vec<(Option<aide::openapi::StatusCode>, Response)> {
        vec![
            (
                Some(aide::openapi::StatusCode::Code(201)),
                json_response::<T>(ctx, "created"),
            ),
            (
                Some(aide::openapi::StatusCode::Code(200)),
                json_response::<T>(ctx, "nothing new: it existed already"),
            ),
        ]
    }
}

impl OperationOutput for ApiError {
    type Inner = ErrorBody;

    /// Registers the error body's schema; which statuses an operation answers with is
    /// added per route by `openapi::finish` (from its path, method and role).
    fn inferred_responses(
        ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Vec<(Option<aide::openapi::StatusCode>, Response)> {
        let _ = ctx.schema.subschema_for::<ErrorBody>();
        Vec::new()
    }
}

//! Extractors that answer bad input with the JSON error shape: `Json`, `Path`, `Query`, and
//! `Auth<A>`, which authenticates the caller for a route's [`Access`] level.

use crate::error::ApiError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use daena_app::Daena;
use daena_app::auth::{Access, Principal};
use daena_app::error::ErrorCode;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::sync::Arc;

pub type AppState = Arc<Daena>;

pub const API_KEY_HEADER: &str = "x-api-key";
pub const TENANT_HEADER: &str = "x-tenant-id";

/// A JSON body; rejections become `invalid_json` (400), `payload_too_large` (413) or
/// `unsupported_media_type` (415).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let refused = |e: &serde_json::Error, text: String| {
            let what = if e.is_syntax() || e.is_eof() {
                "Failed to parse the request body as JSON"
            } else {
                "Failed to deserialize the JSON body into the target type"
            };
            ApiError::new(ErrorCode::InvalidJson, format!("{what}: {text}"))
        };
        let value =
            serde_path_to_error::deserialize(ObjectsOnly(&mut de)).map_err(|e| refused(e.inner(), e.to_string()))?;
        de.end().map_err(|e| refused(&e, e.to_string()))?;
        Ok(Json(value))
    }
}

/// A JSON deserializer that reads a struct from an object only: serde's derived structs also
/// take an array of their fields in order (`[true]` for `{"dry_run": true}`), which no client
/// means and the OpenAPI document does not allow. Bodies that are arrays by design (a batch of
/// interactions) are enums or sequences and read as before.
struct ObjectsOnly<'a, 'de>(&'a mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>);

impl<'de> serde::Deserializer<'de> for ObjectsOnly<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_map(visitor)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_option(visitor)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// A JSON body's bytes, unparsed: the `Content-Type` and size checks of [`Json`] (415,
/// 413), with parsing left to the handler.
pub struct JsonBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "expected Content-Type: application/json"));
        }
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(JsonBytes(bytes)),
            Err(r) if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(ErrorCode::PayloadTooLarge, "request body exceeds server.request_body_limit_bytes"))
            }
            Err(r) => Err(ApiError::new(ErrorCode::InvalidRequest, r.body_text())),
        }
    }
}

/// `application/json` or `application/*+json`, as axum's `Json` accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else { return false };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub.get(sub.len() - 5..).is_some_and(|t| t.eq_ignore_ascii_case("+json")))
}

/// Path parameters; rejections become `invalid_request` (400).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e: PathRejection| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
    }
}

/// Query parameters; rejections become `invalid_request` (400).
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
    }
}

/// The access level a route requires, as a type.
pub trait AccessLevel {
    const ACCESS: Access;
}

/// `ops` keys only.
pub struct OpsOnly;
/// `ops` and `auditor` keys.
pub struct ReadAccess;
/// `ops` and `agent` keys.
pub struct DataAccess;
/// Any valid key.
pub struct AnyKey;

impl AccessLevel for OpsOnly {
    const ACCESS: Access = Access::Ops;
}
impl AccessLevel for ReadAccess {
    const ACCESS: Access = Access::Read;
}
impl AccessLevel for DataAccess {
    const ACCESS: Access = Access::Data;
}
impl AccessLevel for AnyKey {
    const ACCESS: Access = Access::Any;
}

/// The authenticated caller of a route that requires `A`.
pub struct Auth<A>(pub Principal, pub PhantomData<A>);

fn header<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ApiError> {
    match parts.headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("header {name} is not valid text"))),
    }
}

/// The API key a request presents: `X-API-Key`, else `Authorization: Bearer <key>` (what
/// Prometheus and most HTTP clients send).
pub fn presented_key(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    fn text<'a>(name: &str, v: &'a axum::http::HeaderValue) -> Result<&'a str, ApiError> {
        v.to_str().map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("header {name} is not valid text")))
    }
    if let Some(v) = headers.get(API_KEY_HEADER) {
        return text(API_KEY_HEADER, v).map(Some);
    }
    match headers.get(axum::http::header::AUTHORIZATION) {
        None => Ok(None),
        Some(v) => {
            let v = text("authorization", v)?;
            match v.split_once(' ') {
                Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
                    Ok(Some(key.trim()))
                }
                _ => Err(ApiError::new(ErrorCode::InvalidRequest, "Authorization must be \"Bearer <API key>\"")),
            }
        }
    }
}

/// The caller as a middleware already authenticated it from this request's headers (any
/// role), so later steps check the role instead of looking the key up again. Only server
/// code can put it in a request's extensions.
#[derive(Clone)]
pub struct Authenticated(pub Principal);

/// Authenticates the request's headers for `access`.
pub fn authenticate(state: &AppState, parts: &Parts, access: Access) -> Result<Principal, ApiError> {
    if let Some(Authenticated(who)) = parts.extensions.get::<Authenticated>() {
        access.check(who.role())?;
        return Ok(who.clone());
    }
    let key = presented_key(&parts.headers)?;
    let tenant = header(parts, TENANT_HEADER)?;
    Ok(state.governance().api_keys().authenticate(key, tenant, access)?)
}

impl<A: AccessLevel + Send + Sync> FromRequestParts<AppState> for Auth<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(state, parts, A::ACCESS).map(|p| Auth(p, PhantomData))
    }
}

/// The caller if the request carries a valid key (any role), for routes that are public
/// but show more to authenticated callers.
pub struct MaybeAuth(pub Option<Principal>);

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(MaybeAuth(authenticate(state, parts, Access::Any).ok()))
    }
}

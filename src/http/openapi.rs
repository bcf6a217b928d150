//! The OpenAPI document: generated from the same route registrations that build the router
//! (`utoipa_axum::routes!` in each resource module), so a route cannot be served undocumented.

use std::sync::OnceLock;

use axum::body::Bytes;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The name of the bearer JWT security scheme that operations refer to.
pub const BEARER: &str = "bearer";

/// Common error descriptions (each lists the codes that status can carry there).
pub const E400_BODY: &str = "`invalid_json`: the body is not JSON or not sent as \
     `Content-Type: application/json`; `invalid_request`: a field is missing, unknown, out of \
     range or malformed, or the body is not a JSON object.";
pub const E400_SKU: &str = "`invalid_request`: the sku is not a number in 1..=4294967295.";
pub const E400_KEY: &str = "`invalid_request`: a malformed `Idempotency-Key`, or a key reused \
     with a different request.";
pub const E401: &str = "`unauthenticated`: no, malformed, bad or expired bearer token, or one \
     its account no longer honours: the account was deleted, or its password or role changed \
     since the token was issued.";
pub const E403: &str = "`forbidden`: the token is a customer's; this route is for admins.";
pub const E413: &str = "`payload_too_large`: the body is larger than the configured limit.";
pub const E404_SKU: &str = "`not_found`: no product with that sku.";
const E500: &str = "`internal`: a bug; logged with its cause, answered without it.";
const E429: &str = "`rate_limited`: too many requests from this customer or client \
     address; nothing was changed. Retry after the `Retry-After` seconds.";
const E429_LOGIN: &str = "`rate_limited`: too many attempts from this client address, or \
     too many failed logins for this username from this address (or from everywhere, a much \
     higher ceiling); nothing was changed. Retry after the `Retry-After` seconds.";
const E503: &str = "`unavailable`: Redis or MySQL is unreachable; nothing was changed. \
     Retry after the `Retry-After` seconds. `outcome_unknown` (no `Retry-After`): the change was \
     sent but its answer was lost; it may have happened: read (the cart, the orders, the stock) \
     before repeating it, or repeat it with the same `Idempotency-Key`.";
const E503_LOGIN: &str = "`unavailable`: Redis or MySQL is unreachable (while Redis cannot \
     count sign-in attempts, logins and sign-ups are refused rather than let through unlimited); \
     nothing was changed. Retry after the `Retry-After` seconds.";

/// The 429 of the routes that count requests per customer and per client address.
#[derive(IntoResponses)]
#[response(status = 429, description = E429,
    headers(("Retry-After" = u32, description = "Seconds to wait.")))]
pub struct RateLimited(pub ErrorEnvelope);

/// The 500 every route can answer.
#[derive(IntoResponses)]
#[response(status = 500, description = E500)]
pub struct Internal(pub ErrorEnvelope);

/// The 503 of the routes that read Redis or MySQL.
#[derive(IntoResponses)]
#[response(status = 503, description = E503,
    headers(("Retry-After" = u32, description = "Seconds to wait: 1.")))]
pub struct Unavailable(pub ErrorEnvelope);

/// [`RateLimited`] of sign-up and sign-in, which also count failed logins.
#[derive(IntoResponses)]
#[response(status = 429, description = E429_LOGIN,
    headers(("Retry-After" = u32, description = "Seconds to wait.")))]
pub struct LoginRateLimited(pub ErrorEnvelope);

/// [`Unavailable`] of sign-up and sign-in, refused while attempts cannot be counted.
#[derive(IntoResponses)]
#[response(status = 503, description = E503_LOGIN,
    headers(("Retry-After" = u32, description = "Seconds to wait: 1.")))]
pub struct LoginUnavailable(pub ErrorEnvelope);

const DESCRIPTION: &str = "\
A flash-sale back end: atomic Redis reservations, MySQL as the source of truth.

JSON in, JSON out. Money is an integer in minor units. Times are RFC 3339 UTC. Counts are \
positive integers (1..=65535 per request line). `sku` is an unsigned 32-bit integer; `order_id` \
and `user_id` are unsigned 64-bit integers.

**Errors.** Every non-2xx answer has the body `ErrorEnvelope`: \
`{\"error\": {\"code\", \"message\", \"order_id\"?}}`; `code` is stable (clients switch on it). \
Each operation lists the statuses and codes it can answer with. Besides those, any path that is \
not served answers 404 `not_found`, and a served path asked with another method answers \
405 `method_not_allowed`, and any request that is not complete within the configured deadline \
(a body sent too slowly, say) answers 408 `request_timeout`.

**Auth.** `Authorization: Bearer <token>` from `POST /v1/auth/token`. Roles: `customer` and \
`admin`; routes for admins answer a customer's token with 403 `forbidden`; routes for customers \
accept any valid token (an admin's too) and act on the caller's own cart and orders. A token \
ends with its account: deleting the account or changing its role or password refuses every \
token issued before (401 `unauthenticated`); requests go by the account's current role.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = DESCRIPTION,
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    tags(
        (name = "Auth", description = "Accounts and tokens."),
        (name = "Catalog and stock", description = "Products, warehouses, stock and sale windows."),
        (name = "Cart",
            description = "The caller's cart: adding a line reserves its units at once."),
        (name = "Orders", description = "The caller's orders: checkout, buy-now, pay, cancel. \
            Every POST accepts an `Idempotency-Key`."),
        (name = "Live stock", description = "Available counts pushed to shoppers' pages as \
            they change (Server-Sent Events)."),
        (name = "Operations", description = "Liveness, readiness, metrics and this document."),
    ),
    components(schemas(ErrorEnvelope, ErrorBody, ErrorCode)),
    modifiers(&BearerScheme),
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A token from `POST /v1/auth/token`, sent as \
                         `Authorization: Bearer <token>`. Each operation's description says \
                         whether it needs an admin's token or any signed-in user's.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's base: info, tags, the error envelope and the bearer scheme. Paths are added by
/// the resource modules' `router()`s.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The whole document, as built by the same registrations as the router.
pub fn document() -> utoipa::openapi::OpenApi {
    super::api().into_openapi()
}

static JSON: OnceLock<Bytes> = OnceLock::new();

/// Unsigned integers are documented with the registry's formats `uint8`..`uint64` (utoipa's
/// `non_strict_integers`), so that a u32 sku above 2147483647 or a u64 id above 2^63-1 is not
/// out of its documented `int32`/`int64` range. utoipa 6 spells them `u-int32` and the like
/// (its format names are kebab-cased); this puts the registry's names in. The replacement is
/// exact: an unescaped `"format":"u-int32"` cannot occur inside a JSON string.
fn to_bytes(doc: &utoipa::openapi::OpenApi) -> Bytes {
    let mut json = doc.to_json().expect("the OpenAPI document serializes");
    for bits in ["8", "16", "32", "64"] {
        json = json.replace(
            &format!("\"format\":\"u-int{bits}\""),
            &format!("\"format\":\"uint{bits}\""),
        );
    }
    Bytes::from(json)
}

/// Keeps the document split off the router being built (`super::router`) for serving. Every
/// router of the process is built by the same `api()`, so the first one stands for all.
pub fn publish(doc: &utoipa::openapi::OpenApi) {
    JSON.get_or_init(|| to_bytes(doc));
}

/// The document as served at `GET /openapi.json`.
pub fn document_json() -> Bytes {
    JSON.get_or_init(|| to_bytes(&document())).clone()
}

/// The body of every non-2xx answer (built by `AppError::to_body`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({"error": {"code": "out_of_stock", "message": "sku 42: 0 available, 3 requested"}}),
    json!({"error": {
        "code": "out_of_stock",
        "message": "sku 42: 0 available, 3 requested; order 17 failed and holds nothing",
        "order_id": 17
    }})
))]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// For people: its wording may change.
    pub message: String,
    /// Only on a checkout that had reserved some of its lines when one was refused (stock, limit
    /// or sale window): the order it recorded as `failed`, which holds nothing.
    #[serde(default)]
    #[schema(value_type = u64, required = false)]
    pub order_id: Option<u64>,
}

/// The stable error code (see each response's description for the codes it can carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    OutOfStock,
    LimitExceeded,
    SaleNotActive,
    OrderNotPayable,
    OrderNotCancellable,
    AlreadyExists,
    CartEmpty,
    RequestInProgress,
    CartFull,
    CartChanged,
    RequestTimeout,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    OutcomeUnknown,
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AppError;

    /// Every error the code can build fits the documented envelope, with a documented code.
    #[test]
    fn every_error_body_fits_the_schema() {
        let m = || "m".to_string();
        let errors = vec![
            AppError::InvalidJson(m()),
            AppError::InvalidRequest(m()),
            AppError::Unauthenticated(m()),
            AppError::Forbidden(m()),
            AppError::NotFound(m()),
            AppError::MethodNotAllowed(m()),
            AppError::OutOfStock(m()),
            AppError::LimitExceeded(m()),
            AppError::SaleNotActive(m()),
            AppError::OrderNotPayable(m()),
            AppError::OrderNotCancellable(m()),
            AppError::AlreadyExists(m()),
            AppError::CartEmpty(m()),
            AppError::RequestInProgress(m()),
            AppError::CartFull(m()),
            AppError::CartChanged(m()),
            AppError::RequestTimeout(m()),
            AppError::PayloadTooLarge(m()),
            AppError::RateLimited {
                message: m(),
                retry_after_secs: 1,
            },
            AppError::Unavailable(m()),
            AppError::OutcomeUnknown(m()),
            AppError::CheckoutFailed {
                code: "limit_exceeded",
                message: m(),
                order_id: 7,
            },
            AppError::internal("boom"),
        ];
        for e in errors {
            let body = e.to_body();
            let parsed: ErrorEnvelope =
                serde_json::from_value(body.clone()).unwrap_or_else(|err| panic!("{body}: {err}"));
            assert_eq!(
                serde_json::to_value(e.code()).unwrap(),
                body["error"]["code"],
                "{body}"
            );
            assert_eq!(
                parsed.error.order_id.is_some(),
                matches!(e, AppError::CheckoutFailed { .. })
            );
        }
    }

    #[test]
    fn unsigned_integers_have_the_registry_formats() {
        let doc: serde_json::Value = serde_json::from_slice(&to_bytes(&document())).unwrap();
        let text = doc.to_string();
        assert!(!text.contains("u-int"), "utoipa's format names left over");
        let sku = &doc["paths"]["/v1/products/{sku}"]["get"]["parameters"][0]["schema"];
        assert_eq!(sku["format"], "uint32", "{sku}");
        assert_eq!(sku["minimum"], 1, "{sku}");
        assert_eq!(sku["maximum"], 4294967295_u64, "{sku}");
        let order_id = &doc["paths"]["/v1/orders/{order_id}"]["get"]["parameters"][0]["schema"];
        assert_eq!(order_id["format"], "uint64", "{order_id}");
        let product = &doc["components"]["schemas"]["ProductView"]["properties"];
        assert_eq!(product["sku"]["format"], "uint32");
        assert_eq!(product["price"]["format"], "uint64");
    }

    #[test]
    fn the_document_has_the_envelope_and_the_bearer_scheme() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
        assert!(doc["components"]["schemas"]["ProductView"].is_object());
    }
}

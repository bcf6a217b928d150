//! The authorization matrix: every routed operation x {no token, expired token, forged token,
//! customer, other customer, admin} answers as docs/API.md's "who" column says; and no
//! customer reaches another customer's cart or order.

use std::collections::BTreeSet;

use flashsale::auth::Jwt;
use flashsale::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};
use crate::openapi::documented_routes;

/// Every (method, path template) the router serves, from the OpenAPI document built from the
/// same registrations: a new route cannot escape the matrix.
fn routed_operations() -> BTreeSet<(String, String)> {
    let (_, doc) = flashsale::http::api().split_for_parts();
    let doc = serde_json::to_value(doc).unwrap();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

struct Fixture {
    /// A product on sale (customers buy it).
    sku: u64,
    /// A product the admin routes change (so the sale above stays as it is).
    admin_sku: u64,
    warehouse: u64,
    /// Customer A's order, awaiting payment.
    order_id: u64,
}

/// The request one matrix row sends: its concrete path and body.
fn request_for(method: &str, template: &str, f: &Fixture) -> (String, Option<Value>) {
    let sku = if matches!(
        (method, template),
        ("PATCH", "/v1/products/{sku}")
            | ("POST", "/v1/products/{sku}/stock")
            | ("PUT", "/v1/products/{sku}/sale")
            | ("DELETE", "/v1/products/{sku}/sale")
    ) {
        f.admin_sku
    } else {
        f.sku
    };
    let path = template
        .replace("{sku}", &sku.to_string())
        .replace("{order_id}", &f.order_id.to_string());
    let now = chrono::Utc::now();
    let body = match (method, template) {
        ("POST", "/v1/users") => {
            Some(json!({"username": "matrix-user", "password": "matrix-password"}))
        }
        ("POST", "/v1/auth/token") => {
            Some(json!({"username": "owner", "password": "owner-password"}))
        }
        ("POST", "/v1/products") => Some(json!({"name": "Matrix product", "price": 100})),
        ("PATCH", "/v1/products/{sku}") => Some(json!({"name": "Renamed"})),
        ("POST", "/v1/warehouses") => Some(json!({"name": "Matrix warehouse"})),
        ("POST", "/v1/products/{sku}/stock") => {
            Some(json!({"warehouse_id": f.warehouse, "delta": 1}))
        }
        ("PUT", "/v1/products/{sku}/sale") => Some(json!({
            "sale_price": 50,
            "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
            "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "per_customer_limit": null
        })),
        ("POST", "/v1/cart/items") | ("POST", "/v1/orders/buy-now") => {
            Some(json!({"sku": f.sku, "count": 1}))
        }
        ("POST", "/v1/orders/{order_id}/pay") => Some(json!({})),
        _ => None,
    };
    (path, body)
}

#[tokio::test]
async fn every_route_answers_each_identity_as_documented() {
    let app = spawn_app().await;
    let (owner_id, owner) = app.register("owner").await;
    let (_, other) = app.register("other").await;
    let sku = app.sale_product(1_000, None).await;
    let admin_sku = app.sale_product(10, None).await;
    let warehouse = app.warehouse("matrix-wh").await;
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&owner),
            json!({"sku": sku, "count": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let order_id = r.body["order_id"].as_u64().unwrap();
    let f = Fixture {
        sku,
        admin_sku,
        warehouse,
        order_id,
    };

    let expired = app
        .state
        .jwt
        .issue_with_times(owner_id, Role::Customer, 1_000, 2_000)
        .unwrap();
    let forged = Jwt::new(
        b"not-this-deployment-secret-0123456789",
        app.state.jwt.ttl(),
    )
    .issue(owner_id, Role::Admin)
    .unwrap();
    let identities: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("expired token", Some(expired)),
        ("forged token", Some(forged)),
        ("other customer", Some(other)),
        ("customer", Some(owner)),
        ("admin", Some(app.admin_token.clone())),
    ];

    let documented = documented_routes();
    let routed = routed_operations();
    let doc_keys: BTreeSet<_> = documented.keys().cloned().collect();
    assert_eq!(
        routed, doc_keys,
        "the router and docs/API.md list the same routes"
    );

    let mut checked = 0;
    for (method, template) in &routed {
        let who = documented[&(method.clone(), template.clone())].who.as_str();
        let (path, body) = request_for(method, template, &f);
        for (identity, token) in &identities {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let r = app.request(m, &path, token.as_deref(), body.clone()).await;
            let ctx = format!(
                "{method} {path} as {identity} ({who} route): {} {:?}",
                r.status, r.body
            );
            assert!(r.status.as_u16() < 500, "{ctx}");
            let bad_token = matches!(*identity, "no token" | "expired token" | "forged token");
            match who {
                "anyone" => assert!(
                    r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
                    "{ctx}"
                ),
                "customer" if bad_token => {
                    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{ctx}");
                    assert_eq!(r.code(), "unauthenticated", "{ctx}");
                }
                "customer" => assert!(
                    r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
                    "{ctx}"
                ),
                "admin" if bad_token => {
                    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{ctx}");
                    assert_eq!(r.code(), "unauthenticated", "{ctx}");
                }
                "admin" if *identity == "admin" => assert!(
                    r.status.is_success() || r.status == StatusCode::CONFLICT,
                    "{ctx}"
                ),
                "admin" => {
                    assert_eq!(r.status, StatusCode::FORBIDDEN, "{ctx}");
                    assert_eq!(r.code(), "forbidden", "{ctx}");
                }
                other => panic!("unknown who {other:?}"),
            }
            // Another customer's order does not exist for them (nor for an admin's own view).
            if template.contains("{order_id}") && matches!(*identity, "other customer" | "admin") {
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{ctx}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routed.len() * identities.len());
    assert!(routed.len() >= 25, "{} routes", routed.len());
}

async fn cart_of(app: &TestApp, token: &str) -> Value {
    let r = app.get("/v1/cart", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK);
    r.body["items"].clone()
}

#[tokio::test]
async fn no_customer_reaches_another_customers_cart_or_order() {
    let app = spawn_app().await;
    let (_, alice) = app.register("alice").await;
    let (_, mallory) = app.register("mallory").await;
    let sku = app.sale_product(100, None).await;
    let r = app
        .post(
            "/v1/orders/buy-now",
            Some(&alice),
            json!({"sku": sku, "count": 2}),
        )
        .await;
    let order_id = r.body["order_id"].as_u64().unwrap();
    let r = app
        .post(
            "/v1/cart/items",
            Some(&alice),
            json!({"sku": sku, "count": 3}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let alice_cart = cart_of(&app, &alice).await;
    let before = app
        .get(&format!("/v1/orders/{order_id}"), Some(&alice))
        .await;

    // Mallory tries everything on Alice's order: it does not exist for her.
    let attempts = [
        (Method::GET, format!("/v1/orders/{order_id}"), None),
        (
            Method::POST,
            format!("/v1/orders/{order_id}/pay"),
            Some(json!({})),
        ),
        (Method::POST, format!("/v1/orders/{order_id}/cancel"), None),
    ];
    for (m, path, body) in attempts {
        let r = app.request(m.clone(), &path, Some(&mallory), body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {path}: {:?}", r.body);
        assert_eq!(r.code(), "not_found");
        // The same answer as for an order that does not exist at all.
        let missing = path.replace(&order_id.to_string(), "999999999");
        let r = app.request(m, &missing, Some(&mallory), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let listed = app.get("/v1/orders", Some(&mallory)).await;
    assert_eq!(
        listed.body["items"],
        json!([]),
        "her list has none of Alice's"
    );

    // Her cart operations act on her cart only.
    let r = app.get("/v1/cart", Some(&mallory)).await;
    assert_eq!(r.body["items"], json!([]));
    app.post(
        "/v1/cart/items",
        Some(&mallory),
        json!({"sku": sku, "count": 1}),
    )
    .await;
    app.delete(&format!("/v1/cart/items/{sku}?count=1"), Some(&mallory))
        .await;
    app.delete(&format!("/v1/cart/items/{sku}"), Some(&mallory))
        .await;
    let r = app.delete("/v1/cart", Some(&mallory)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.post_empty("/v1/orders", Some(&mallory)).await;
    assert_eq!(
        r.code(),
        "cart_empty",
        "her checkout never takes Alice's cart"
    );

    // Alice's cart and order are as they were.
    let after_cart = cart_of(&app, &alice).await;
    assert_eq!(after_cart[0]["count"], alice_cart[0]["count"]);
    assert_eq!(after_cart[0]["sku"], alice_cart[0]["sku"]);
    let after = app
        .get(&format!("/v1/orders/{order_id}"), Some(&alice))
        .await;
    assert_eq!(after.body["status"], "awaiting_payment");
    assert_eq!(after.body, before.body);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.held, b.reserved), (3, 2));
}

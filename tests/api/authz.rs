//! The authorization matrix: every routed operation x {no token, expired token, forged token,
//! alg=none token, other customer, customer, admin} answers as docs/API.md's "who" column says,
//! with the exact status a served caller gets; and no customer reaches another customer's cart
//! or order.

use std::collections::BTreeSet;

use flashsale::auth::Jwt;
use flashsale::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, spawn_app};
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

/// Who may call a route (docs/API.md's "who" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anyone,
    Customer,
    Admin,
}

impl Who {
    fn documented(self) -> &'static str {
        match self {
            Who::Anyone => "anyone",
            Who::Customer => "customer",
            Who::Admin => "admin",
        }
    }
}

/// One row of the matrix: a routed operation, the concrete request sent for it, and the answer
/// a caller it serves gets.
struct Row {
    method: Method,
    template: &'static str,
    path: String,
    who: Who,
    body: Option<Value>,
    /// Sign-up: each caller sends its own new username.
    new_user: bool,
    /// Checkout: the caller (when signed in) first puts one unit in its cart.
    fill_cart: bool,
    /// The path names customer A's order: anyone else gets 404 `not_found`.
    a_order: bool,
    /// The answer to a caller the route serves (anyone on a public route, A on a customer
    /// route, the admin on an admin route).
    ok: StatusCode,
}

fn row(method: Method, template: &'static str, path: String, who: Who, ok: u16) -> Row {
    Row {
        method,
        template,
        path,
        who,
        body: None,
        new_user: false,
        fill_cart: false,
        a_order: false,
        ok: StatusCode::from_u16(ok).unwrap(),
    }
}

impl Row {
    fn body(mut self, body: Value) -> Row {
        self.body = Some(body);
        self
    }
    fn new_user(mut self) -> Row {
        self.new_user = true;
        self
    }
    fn fill_cart(mut self) -> Row {
        self.fill_cart = true;
        self
    }
    fn a_order(mut self) -> Row {
        self.a_order = true;
        self
    }
}

/// The ids the matrix's requests name.
struct Fixture {
    /// On sale, plenty of stock, no per-customer limit: every caller buys it.
    sku: u64,
    /// The product the admin routes change (so the sale above stays as it is).
    admin_sku: u64,
    warehouse: u64,
    /// An account the admin deletes, and one whose role the admin sets.
    doomed: u64,
    demoted: u64,
    /// Customer A's orders awaiting payment: one to read, one to pay, one to cancel.
    view_order: u64,
    pay_order: u64,
    cancel_order: u64,
}

/// A sku the admin's `POST /v1/products` creates: its 201 shows nobody created it before.
const NEW_SKU: u64 = 4_000_000_001;

/// The matrix, in the order it runs.
fn rows(f: &Fixture) -> Vec<Row> {
    use Method as M;
    use Who::*;
    let (sku, admin_sku) = (f.sku, f.admin_sku);
    let now = chrono::Utc::now();
    vec![
        // Auth
        row(M::POST, "/v1/users", "/v1/users".into(), Anyone, 201).new_user(),
        row(
            M::POST,
            "/v1/auth/token",
            "/v1/auth/token".into(),
            Anyone,
            200,
        )
        .body(json!({"username": "alice", "password": "alice-password"})),
        row(M::GET, "/v1/users/me", "/v1/users/me".into(), Customer, 200),
        // A wrong current password: every caller it serves gets 400 and keeps its password
        // (and its tokens, which the rest of the matrix needs).
        row(
            M::PUT,
            "/v1/users/me/password",
            "/v1/users/me/password".into(),
            Customer,
            400,
        )
        .body(json!({"current_password": "not-the-password", "new_password": "matrix-new-pw"})),
        row(
            M::PUT,
            "/v1/users/{user_id}/role",
            format!("/v1/users/{}/role", f.demoted),
            Admin,
            200,
        )
        .body(json!({"role": "customer"})),
        row(
            M::DELETE,
            "/v1/users/{user_id}",
            format!("/v1/users/{}", f.doomed),
            Admin,
            204,
        ),
        // Catalog and stock
        row(M::POST, "/v1/products", "/v1/products".into(), Admin, 201)
            .body(json!({"sku": NEW_SKU, "name": "Matrix product", "price": 100})),
        row(
            M::GET,
            "/v1/products",
            "/v1/products?limit=200".into(),
            Anyone,
            200,
        ),
        row(
            M::GET,
            "/v1/products/{sku}",
            format!("/v1/products/{sku}"),
            Anyone,
            200,
        ),
        row(
            M::PATCH,
            "/v1/products/{sku}",
            format!("/v1/products/{admin_sku}"),
            Admin,
            200,
        )
        .body(json!({"name": "Renamed"})),
        row(
            M::POST,
            "/v1/warehouses",
            "/v1/warehouses".into(),
            Admin,
            201,
        )
        .body(json!({"name": "Matrix warehouse"})),
        row(
            M::POST,
            "/v1/products/{sku}/stock",
            format!("/v1/products/{admin_sku}/stock"),
            Admin,
            200,
        )
        .body(json!({"warehouse_id": f.warehouse, "delta": 1})),
        row(
            M::GET,
            "/v1/products/{sku}/stocks",
            format!("/v1/products/{sku}/stocks"),
            Anyone,
            200,
        ),
        row(
            M::PUT,
            "/v1/products/{sku}/sale",
            format!("/v1/products/{admin_sku}/sale"),
            Admin,
            200,
        )
        .body(json!({
            "sale_price": 50,
            "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
            "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "per_customer_limit": null
        })),
        row(
            M::DELETE,
            "/v1/products/{sku}/sale",
            format!("/v1/products/{admin_sku}/sale"),
            Admin,
            204,
        ),
        row(
            M::GET,
            "/v1/products/{sku}/sales-report",
            format!("/v1/products/{sku}/sales-report"),
            Admin,
            200,
        ),
        // Cart
        row(M::GET, "/v1/cart", "/v1/cart".into(), Customer, 200),
        row(
            M::POST,
            "/v1/cart/items",
            "/v1/cart/items".into(),
            Customer,
            200,
        )
        .body(json!({"sku": sku, "count": 1})),
        row(
            M::DELETE,
            "/v1/cart/items/{sku}",
            format!("/v1/cart/items/{sku}?count=1"),
            Customer,
            200,
        ),
        row(M::DELETE, "/v1/cart", "/v1/cart".into(), Customer, 204),
        // Orders
        row(M::POST, "/v1/orders", "/v1/orders".into(), Customer, 201).fill_cart(),
        row(
            M::POST,
            "/v1/orders/buy-now",
            "/v1/orders/buy-now".into(),
            Customer,
            201,
        )
        .body(json!({"sku": sku, "count": 1})),
        row(
            M::GET,
            "/v1/orders",
            "/v1/orders?limit=100".into(),
            Customer,
            200,
        ),
        row(
            M::GET,
            "/v1/orders/{order_id}",
            format!("/v1/orders/{}", f.view_order),
            Customer,
            200,
        )
        .a_order(),
        row(
            M::POST,
            "/v1/orders/{order_id}/pay",
            format!("/v1/orders/{}/pay", f.pay_order),
            Customer,
            200,
        )
        .body(json!({"payment_ref": "matrix"}))
        .a_order(),
        row(
            M::POST,
            "/v1/orders/{order_id}/cancel",
            format!("/v1/orders/{}/cancel", f.cancel_order),
            Customer,
            200,
        )
        .a_order(),
        // Live stock (event streams: the status and headers are the answer)
        row(
            M::GET,
            "/v1/products/{sku}/stock/stream",
            format!("/v1/products/{sku}/stock/stream"),
            Anyone,
            200,
        ),
        row(
            M::GET,
            "/v1/sales/live",
            "/v1/sales/live".into(),
            Anyone,
            200,
        ),
        // Operations
        row(M::GET, "/healthz", "/healthz".into(), Anyone, 200),
        row(M::GET, "/readyz", "/readyz".into(), Anyone, 200),
        row(M::GET, "/openapi.json", "/openapi.json".into(), Anyone, 200),
    ]
}

/// A caller of the matrix: `user` is the account a valid token names (None for a token the
/// service must refuse).
struct Caller {
    name: &'static str,
    token: Option<String>,
    user: Option<u64>,
    admin: bool,
}

/// What `caller` must get from `row`: the status, and the error code when it is an error of the
/// authorization (401, 403, or the 404 that hides another customer's order).
fn expected(row: &Row, caller: &Caller, a_id: u64) -> (StatusCode, Option<&'static str>) {
    match (row.who, caller.user) {
        // A public route ignores the Authorization header, whatever it holds.
        (Who::Anyone, _) => (row.ok, None),
        (_, None) => (StatusCode::UNAUTHORIZED, Some("unauthenticated")),
        (Who::Admin, Some(_)) if !caller.admin => (StatusCode::FORBIDDEN, Some("forbidden")),
        (Who::Admin, Some(_)) => (row.ok, None),
        (Who::Customer, Some(id)) if row.a_order && id != a_id => {
            (StatusCode::NOT_FOUND, Some("not_found"))
        }
        (Who::Customer, Some(_)) => (row.ok, None),
    }
}

/// An error answer is exactly the envelope `{"error": {"code", "message"}}` with `code`.
fn assert_envelope(r: &Resp, code: &str, ctx: &str) {
    assert_eq!(r.code(), code, "{ctx}");
    let outer = r.body.as_object().expect(ctx);
    assert_eq!(outer.len(), 1, "only `error`: {ctx}");
    let message = r.body["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "a message: {ctx}");
}

/// Customer A's cart and orders, as A sees them.
async fn a_view(app: &TestApp, a: &str) -> (Value, Value) {
    let cart = app.get("/v1/cart", Some(a)).await;
    assert_eq!(cart.status, StatusCode::OK);
    let orders = app.get("/v1/orders?limit=100", Some(a)).await;
    assert_eq!(orders.status, StatusCode::OK);
    (cart.body, orders.body)
}

/// The admin-only state an admin row may change, as the public and the admin see it.
async fn admin_view(app: &TestApp, f: &Fixture) -> (Value, Value, Value) {
    let product = app
        .get(&format!("/v1/products/{}", f.admin_sku), None)
        .await;
    let list = app.get("/v1/products?limit=200", None).await;
    let report = app
        .get(
            &format!("/v1/products/{}/sales-report", f.admin_sku),
            Some(&app.admin_token),
        )
        .await;
    assert_eq!(report.status, StatusCode::OK);
    (product.body, list.body, report.body)
}

#[tokio::test]
async fn every_route_answers_each_identity_as_documented() {
    let app = spawn_app().await;
    let (a_id, alice) = app.register("alice").await;
    let (b_id, bob) = app.register("bob").await;
    let me = app.get("/v1/users/me", Some(&app.admin_token)).await;
    assert_eq!(me.body["role"], "admin");
    let admin_id = me.body["user_id"].as_u64().unwrap();

    let sku = app.sale_product(1_000, None).await;
    let a_sku = app.sale_product(1_000, None).await;
    let admin_sku = app.sale_product(10, None).await;
    // Only customer A ever puts a_sku in a cart: it must never show in anyone else's.
    let f = Fixture {
        sku,
        admin_sku,
        warehouse: app.warehouse("matrix-wh").await,
        doomed: app.register("doomed").await.0,
        demoted: app.register("demoted").await.0,
        view_order: app.buy_now(&alice, sku, 1).await.order_id,
        pay_order: app.buy_now(&alice, sku, 1).await.order_id,
        cancel_order: app.buy_now(&alice, sku, 1).await.order_id,
    };

    // Refused tokens, each claiming the admin (the strongest claim): expired, signed with
    // another secret, and the admin's own valid claims re-headed with alg=none, unsigned.
    let expired = app
        .state
        .jwt
        .issue_with_times(admin_id, Role::Admin, 0, 1_000, 2_000)
        .unwrap();
    let forged = Jwt::new(
        b"not-this-deployment-secret-0123456789",
        app.state.jwt.ttl(),
    )
    .issue(admin_id, Role::Admin, 0)
    .unwrap();
    let claims = app.admin_token.split('.').nth(1).unwrap();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    let refused = |name, token: Option<String>| Caller {
        name,
        token,
        user: None,
        admin: false,
    };
    let callers = vec![
        refused("no token", None),
        refused("expired token", Some(expired)),
        refused("forged token", Some(forged)),
        refused("alg=none token", Some(alg_none)),
        Caller {
            name: "other customer",
            token: Some(bob),
            user: Some(b_id),
            admin: false,
        },
        Caller {
            name: "customer",
            token: Some(alice.clone()),
            user: Some(a_id),
            admin: false,
        },
        Caller {
            name: "admin",
            token: Some(app.admin_token.clone()),
            user: Some(admin_id),
            admin: true,
        },
    ];

    // The table covers exactly the routed operations, and agrees with docs/API.md's who column.
    let table = rows(&f);
    let documented = documented_routes();
    let routed = routed_operations();
    let in_table: BTreeSet<_> = table
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_string()))
        .collect();
    assert_eq!(in_table.len(), table.len(), "one row per operation");
    assert_eq!(
        in_table, routed,
        "the matrix has a row for every routed operation"
    );
    for r in &table {
        let doc = &documented[&(r.method.to_string(), r.template.to_string())];
        assert_eq!(
            doc.who,
            r.who.documented(),
            "{} {}: docs/API.md's who",
            r.method,
            r.template
        );
    }

    let mut cells = 0;
    for r in &table {
        // A holds a line of a_sku throughout (her own cart requests may have emptied it).
        let cart = app.get("/v1/cart", Some(&alice)).await;
        let lines = cart.body["items"].as_array().cloned().unwrap_or_default();
        if !lines.iter().any(|l| l["sku"] == a_sku) {
            let add = app.try_cart_add(&alice, a_sku, 2).await;
            assert_eq!(add.status, StatusCode::OK, "{:?}", add.body);
        }
        let admin_before = admin_view(&app, &f).await;
        for c in &callers {
            let token = c.token.as_deref();
            if r.fill_cart && c.user.is_some() {
                let add = app
                    .post("/v1/cart/items", token, json!({"sku": sku, "count": 1}))
                    .await;
                assert_eq!(add.status, StatusCode::OK, "{:?}", add.body);
            }
            if r.who == Who::Admin && c.admin {
                assert_eq!(
                    admin_view(&app, &f).await,
                    admin_before,
                    "{} {}: the refused callers changed nothing",
                    r.method,
                    r.path
                );
            }
            let a_before = a_view(&app, &alice).await;
            let body = if r.new_user {
                let name = c.name.replace(['=', ' '], "-");
                Some(json!({"username": format!("matrix-{name}"), "password": "matrix-password"}))
            } else {
                r.body.clone()
            };
            let resp = app.request(r.method.clone(), &r.path, token, body).await;
            let ctx = format!(
                "{} {} as {} ({} route): {} {:?}",
                r.method,
                r.path,
                c.name,
                r.who.documented(),
                resp.status,
                resp.body
            );
            let (status, code) = expected(r, c, a_id);
            assert_eq!(resp.status, status, "{ctx}");
            if let Some(code) = code {
                assert_envelope(&resp, code, &ctx);
            }
            if let (Who::Customer, Some(own)) = (r.who, c.user) {
                // The caller's own data only: accounts and orders name the caller; no cart
                // but A's holds A's line.
                let mut users: Vec<&Value> = vec![&resp.body["user_id"]];
                if let Some(items) = resp.body["items"].as_array() {
                    users.extend(items.iter().map(|o| &o["user_id"]));
                }
                for u in users.into_iter().filter(|u| !u.is_null()) {
                    assert_eq!(u.as_u64(), Some(own), "{ctx}");
                }
                if own != a_id && r.path.starts_with("/v1/cart") {
                    let lines = resp.body["items"].as_array().cloned().unwrap_or_default();
                    assert!(lines.iter().all(|l| l["sku"] != a_sku), "{ctx}");
                }
            }
            if c.user != Some(a_id) {
                assert_eq!(
                    a_view(&app, &alice).await,
                    a_before,
                    "A's cart and orders unchanged by {ctx}"
                );
            }
            cells += 1;
        }
    }
    assert_eq!(cells, table.len() * callers.len());
    assert!(table.len() >= 28, "{} routes", table.len());

    // A's orders went only where A took them.
    for (order, status) in [
        (f.view_order, "awaiting_payment"),
        (f.pay_order, "paid"),
        (f.cancel_order, "cancelled"),
    ] {
        let r = app.try_order(&alice, order).await;
        assert_eq!(r.body["status"], status, "order {order}: {:?}", r.body);
    }
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
    let order_id = app.buy_now(&alice, sku, 2).await.order_id;
    app.cart_add(&alice, sku, 3).await;
    let alice_cart = cart_of(&app, &alice).await;
    let before = app.try_order(&alice, order_id).await;

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
    app.try_cart_add(&mallory, sku, 1).await;
    app.delete(&format!("/v1/cart/items/{sku}?count=1"), Some(&mallory))
        .await;
    app.delete(&format!("/v1/cart/items/{sku}"), Some(&mallory))
        .await;
    let r = app.delete("/v1/cart", Some(&mallory)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.try_checkout(&mallory).await;
    assert_eq!(
        r.code(),
        "cart_empty",
        "her checkout never takes Alice's cart"
    );

    // Alice's cart and order are as they were.
    let after_cart = cart_of(&app, &alice).await;
    assert_eq!(after_cart[0]["count"], alice_cart[0]["count"]);
    assert_eq!(after_cart[0]["sku"], alice_cart[0]["sku"]);
    let after = app.try_order(&alice, order_id).await;
    assert_eq!(after.body["status"], "awaiting_payment");
    assert_eq!(after.body, before.body);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.held, b.reserved), (3, 2));
}

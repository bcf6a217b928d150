//! Catalog and stock routes: products, warehouses, stock adjustments, sale windows, reports.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("not RFC 3339: {v:?}: {e}"))
}

/// The only warehouse holding stock of `sku` (as `sale_product` makes it).
async fn only_warehouse(app: &TestApp, sku: u64) -> u64 {
    let stocks = app.stocks(sku).await;
    assert_eq!(stocks.len(), 1, "{stocks:?}");
    stocks[0].0
}

#[tokio::test]
async fn create_product_with_and_without_sku() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());

    let r = app
        .post(
            "/v1/products",
            admin,
            json!({"sku": 4242, "name": "Television", "price": 15000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"sku": 4242, "name": "Television", "price": 15000, "available": 0, "sale": null})
    );

    let r = app
        .post(
            "/v1/products",
            admin,
            json!({"name": "  Radio  ", "price": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let assigned = r.body["sku"].as_u64().expect("an assigned sku");
    assert!(assigned > 0 && assigned <= u64::from(u32::MAX));
    assert_ne!(assigned, 4242);
    assert_eq!(r.body["name"], "Radio", "names are trimmed");
    assert_eq!(r.body["price"], 0, "a free product is allowed");
    assert_eq!(r.body["available"], 0);
    assert_eq!(r.body["sale"], Value::Null);

    let r = app
        .post("/v1/products", admin, json!({"name": "Lamp", "price": 1}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let third = r.body["sku"].as_u64().unwrap();
    assert!(third != assigned && third != 4242);

    // The largest sku and the largest price are accepted.
    let r = app
        .post(
            "/v1/products",
            admin,
            json!({"sku": u32::MAX, "name": "Max", "price": 10_000_000_000_000u64}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["sku"], u32::MAX);
    assert_eq!(r.body["price"], 10_000_000_000_000u64);

    // Each reads back as created.
    let r = app.get("/v1/products/4242", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "Television");
    let r = app.get(&format!("/v1/products/{assigned}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "Radio");
}

/// Once a product has the largest sku the AUTO_INCREMENT counter has nowhere to go: products
/// without a sku get the lowest free one instead of a 500 (found by scripts/fuzz).
#[tokio::test]
async fn skus_are_still_assigned_once_the_largest_is_taken() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    for sku in [1, 2, u64::from(u32::MAX)] {
        let r = app
            .post(
                "/v1/products",
                admin,
                json!({"sku": sku, "name": "Taken", "price": 1}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    for expected in [3, 4] {
        let r = app
            .post("/v1/products", admin, json!({"name": "Next", "price": 1}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(r.body["sku"], expected, "{:?}", r.body);
        assert_eq!(r.body["name"], "Next");
    }
    let r = app.get("/v1/products/3", None).await;
    assert_eq!(r.body["name"], "Next", "{:?}", r.body);
}

#[tokio::test]
async fn duplicate_sku_conflicts() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let r = app
        .post(
            "/v1/products",
            admin,
            json!({"sku": 77, "name": "First", "price": 100}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let r = app
        .post(
            "/v1/products",
            admin,
            json!({"sku": 77, "name": "Second", "price": 200}),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "already_exists", "");

    // The first one is untouched.
    let r = app.get("/v1/products/77", None).await;
    assert_eq!(
        r.body,
        json!({"sku": 77, "name": "First", "price": 100, "available": 0, "sale": null})
    );
}

#[tokio::test]
async fn admin_routes_refuse_customers_and_anonymous_callers() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let w = only_warehouse(&app, sku).await;
    let (_, registered) = app.register("mallory").await;
    let unregistered = app.customer_token(12345);
    let before = app.sales_report(sku).await;
    let before_product = app.get(&format!("/v1/products/{sku}"), None).await.body;

    let sale = json!({
        "sale_price": 1,
        "starts_at": "2020-01-01T00:00:00Z",
        "ends_at": "2035-01-01T00:00:00Z",
        "per_customer_limit": null,
    });
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/products".into(),
            Some(json!({"name": "Sneaky", "price": 1})),
        ),
        (
            Method::PATCH,
            format!("/v1/products/{sku}"),
            Some(json!({"price": 1})),
        ),
        (
            Method::POST,
            "/v1/warehouses".into(),
            Some(json!({"name": "sneaky"})),
        ),
        (
            Method::POST,
            format!("/v1/products/{sku}/stock"),
            Some(json!({"warehouse_id": w, "delta": -5})),
        ),
        (Method::PUT, format!("/v1/products/{sku}/sale"), Some(sale)),
        (Method::DELETE, format!("/v1/products/{sku}/sale"), None),
        (
            Method::GET,
            format!("/v1/products/{sku}/sales-report"),
            None,
        ),
    ];
    for (method, path, body) in routes {
        for token in [&registered, &unregistered] {
            let r = app
                .request(method.clone(), &path, Some(token), body.clone())
                .await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {path}: {:?}",
                r.body
            );
            assert_eq!(r.code(), "forbidden", "{method} {path}");
        }
        let r = app.request(method.clone(), &path, None, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {:?}",
            r.body
        );
        assert_eq!(r.code(), "unauthenticated", "{method} {path}");
    }

    // Nothing changed.
    assert_eq!(app.sales_report(sku).await, before);
    let after_product = app.get(&format!("/v1/products/{sku}"), None).await.body;
    assert_eq!(after_product, before_product);
    let r = app.get("/v1/products", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{:?}", r.body);
    let r = app
        .post(
            "/v1/warehouses",
            Some(&app.admin_token),
            json!({"name": "sneaky"}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the refused warehouse was not created"
    );
}

#[tokio::test]
async fn bad_product_fields_are_invalid_requests() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let cases = [
        json!({"name": "Neg", "price": -1}),
        json!({"name": "Big", "price": 10_000_000_000_001u64}),
        json!({"name": "Str", "price": "100"}),
        json!({"name": "Frac", "price": 1.5}),
        json!({"name": "NoPrice"}),
        json!({"price": 100}),
        json!({"name": "", "price": 100}),
        json!({"name": "    ", "price": 100}),
        json!({"name": "x".repeat(201), "price": 100}),
        json!({"name": "bad\u{0007}name", "price": 100}),
        json!({"sku": 0, "name": "Zero", "price": 100}),
        json!({"sku": -3, "name": "Neg", "price": 100}),
        json!({"sku": u64::from(u32::MAX) + 1, "name": "Huge", "price": 100}),
        json!({"sku": "12", "name": "Str", "price": 100}),
        json!({"name": "Extra", "price": 100, "colour": "red"}),
    ];
    for body in cases {
        let r = app.post("/v1/products", admin, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{body}: {:?}", r.body);
    }
    let r = app
        .post_raw("/v1/products", admin, "application/json", "{\"name\": ")
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_json", "");

    // A 200-character name is fine; nothing refused was created.
    let r = app
        .post(
            "/v1/products",
            admin,
            json!({"name": "y".repeat(200), "price": 100}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app.get("/v1/products", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{:?}", r.body);
}

#[tokio::test]
async fn get_product_by_sku() {
    let app = spawn_app().await;
    let sku = app.product("Kettle", 2500).await;

    let r = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"sku": sku, "name": "Kettle", "price": 2500, "available": 0, "sale": null})
    );
    // A customer may read it too.
    let t = app.customer_token(1);
    let r = app.get(&format!("/v1/products/{sku}"), Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK);

    let r = app.get(&format!("/v1/products/{}", sku + 1000), None).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");

    for bad in [
        "abc",
        "-1",
        "1.5",
        "0",
        "4294967296",
        "99999999999999999999999",
    ] {
        let r = app.get(&format!("/v1/products/{bad}"), None).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", bad);
    }
}

#[tokio::test]
async fn list_products_paginates() {
    let app = spawn_app().await;

    let r = app.get("/v1/products", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body, json!({"items": [], "next_after_sku": null}));

    let mut skus = Vec::new();
    for i in 0..5 {
        skus.push(app.product(&format!("Item {i}"), 100 + i).await);
    }
    skus.sort_unstable();

    // Default: everything, ascending by sku.
    let r = app.get("/v1/products", None).await;
    let got: Vec<u64> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_u64().unwrap())
        .collect();
    assert_eq!(got, skus);
    assert_eq!(r.body["next_after_sku"], Value::Null);
    assert_eq!(r.body["items"][0]["available"], 0);
    assert_eq!(r.body["items"][0]["sale"], Value::Null);

    // Pages of 2: 2, 2, 1.
    let mut seen = Vec::new();
    let mut after: Option<u64> = None;
    let mut pages = 0;
    loop {
        let path = match after {
            Some(a) => format!("/v1/products?limit=2&after_sku={a}"),
            None => "/v1/products?limit=2".to_string(),
        };
        let r = app.get(&path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["sku"].as_u64().unwrap()));
        pages += 1;
        match r.body["next_after_sku"].as_u64() {
            Some(n) => {
                assert_eq!(
                    Some(n),
                    seen.last().copied(),
                    "next_after_sku is the last sku"
                );
                after = Some(n);
            }
            None => {
                assert_eq!(r.body["next_after_sku"], Value::Null);
                break;
            }
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, skus);

    // Exactly a full page: no next page.
    let r = app.get("/v1/products?limit=5", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 5);
    assert_eq!(r.body["next_after_sku"], Value::Null);
    let r = app.get("/v1/products?limit=4", None).await;
    assert_eq!(r.body["next_after_sku"], skus[3]);

    // After the last sku: empty.
    let r = app
        .get(&format!("/v1/products?after_sku={}", skus[4]), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"items": [], "next_after_sku": null}));

    // Limits 1 and 200 are fine.
    let r = app.get("/v1/products?limit=1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["next_after_sku"], skus[0]);
    let r = app.get("/v1/products?limit=200", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 5);

    for bad in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=abc",
        "after_sku=xyz",
        "after_sku=-5",
    ] {
        let r = app.get(&format!("/v1/products?{bad}"), None).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", bad);
    }
}

#[tokio::test]
async fn list_products_refuses_unknown_parameters() {
    let app = spawn_app().await;
    app.product("Thing", 1).await;
    let r = app.get("/v1/products?page=2", None).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
}

#[tokio::test]
async fn patch_product() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let sku = app.product("Old name", 1000).await;
    let path = format!("/v1/products/{sku}");

    let r = app.patch(&path, admin, json!({"name": "New name"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sku"], sku);
    assert_eq!(r.body["name"], "New name");
    assert_eq!(r.body["price"], 1000, "an absent price is unchanged");
    assert_eq!(r.body["available"], 0);

    let r = app.patch(&path, admin, json!({"price": 1234})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["name"], "New name", "an absent name is unchanged");
    assert_eq!(r.body["price"], 1234);

    let r = app.get(&path, None).await;
    assert_eq!(r.body["name"], "New name");
    assert_eq!(r.body["price"], 1234);

    let r = app
        .patch(&path, admin, json!({"name": " Both ", "price": 0}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app.get(&path, None).await;
    assert_eq!(r.body["name"], "Both");
    assert_eq!(r.body["price"], 0);

    // Invalid changes: nothing changes.
    for body in [
        json!({}),
        json!({"name": null, "price": null}),
        json!({"name": ""}),
        json!({"name": "x".repeat(201)}),
        json!({"price": -1}),
        json!({"price": 10_000_000_000_001u64}),
        json!({"sku": 5}),
        json!({"name": "Ok", "stock": 5}),
    ] {
        let r = app.patch(&path, admin, body.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", &body);
    }
    let r = app.get(&path, None).await;
    assert_eq!(r.body["name"], "Both");
    assert_eq!(r.body["price"], 0);

    let r = app
        .patch(
            &format!("/v1/products/{}", sku + 1000),
            admin,
            json!({"name": "Ghost"}),
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app.get(&format!("/v1/products/{}", sku + 1000), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "a PATCH does not create");
}

#[tokio::test]
async fn patched_price_is_what_a_cart_charges_outside_a_sale() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let admin = Some(app.admin_token.as_str());
    // The sale price is charged while the sale is open, the new name is shown.
    let r = app
        .patch(
            &format!("/v1/products/{sku}"),
            admin,
            json!({"name": "Renamed", "price": 20_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body["sale"]["sale_price"], 5_000,
        "the sale survives a PATCH"
    );
    let t = app.customer_token(777);
    let r = app.try_cart_add(&t, sku, 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["name"], "Renamed");
    assert_eq!(r.body["items"][0]["unit_price"], 5_000);
}

#[tokio::test]
async fn warehouses() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());

    let r = app
        .post("/v1/warehouses", admin, json!({"name": "North"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let north = r.body["warehouse_id"].as_u64().expect("warehouse_id");
    assert_eq!(r.body, json!({"warehouse_id": north, "name": "North"}));

    let r = app
        .post("/v1/warehouses", admin, json!({"name": "  South "}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let south = r.body["warehouse_id"].as_u64().unwrap();
    assert_ne!(north, south);
    assert_eq!(r.body["name"], "South");

    let r = app
        .post("/v1/warehouses", admin, json!({"name": "North"}))
        .await;
    r.assert_error(StatusCode::CONFLICT, "already_exists", "");

    for body in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "w".repeat(101)}),
        json!({}),
        json!({"name": 5}),
        json!({"name": "East", "city": "x"}),
    ] {
        let r = app.post("/v1/warehouses", admin, body.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", &body);
    }
    let r = app
        .post("/v1/warehouses", admin, json!({"name": "East"}))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the refused East was not created"
    );
}

#[tokio::test]
async fn adjust_stock() {
    let app = spawn_app().await;
    let sku = app.product("Blender", 4000).await;
    let w = app.warehouse("Main").await;

    let r = app.add_stock(sku, w, 10).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"sku": sku, "warehouse_id": w, "on_hand": 10, "available": 10})
    );
    assert_eq!(app.available(sku).await, 10);

    let r = app.add_stock(sku, w, 5).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["on_hand"], 15);
    assert_eq!(r.body["available"], 15);

    let r = app.add_stock(sku, w, -4).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"sku": sku, "warehouse_id": w, "on_hand": 11, "available": 11})
    );
    assert_eq!(app.available(sku).await, 11);
    let rep = app.sales_report(sku).await;
    assert_eq!(rep.on_hand, 11);
    assert_eq!(rep.available, 11);
    app.assert_identity(sku).await;

    // Removing exactly what is available empties it.
    let r = app.add_stock(sku, w, -11).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["on_hand"], 0);
    assert_eq!(r.body["available"], 0);
    assert_eq!(app.available(sku).await, 0);

    // Unknown warehouse, unknown sku.
    let r = app.add_stock(sku, w + 1000, 5).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app.add_stock(sku + 1000, w, 5).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");

    // Bad deltas.
    for delta in [0i64, 1_000_000_001, -1_000_000_001] {
        let r = app.add_stock(sku, w, delta).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", delta);
    }
    let path = format!("/v1/products/{sku}/stock");
    for body in [
        json!({"warehouse_id": w}),
        json!({"delta": 5}),
        json!({"warehouse_id": w, "delta": 1.5}),
        json!({"warehouse_id": w, "delta": "5"}),
        json!({"warehouse_id": -1, "delta": 5}),
        json!({"warehouse_id": w, "delta": 5, "reason": "x"}),
    ] {
        let r = app.post(&path, Some(&app.admin_token), body.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", &body);
    }
    let r = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(
        r.body["available"], 0,
        "no refused adjustment changed stock"
    );
    assert_eq!(app.sales_report(sku).await.on_hand, 0);
}

#[tokio::test]
async fn removing_more_than_available_changes_nothing() {
    let app = spawn_app().await;
    let sku = app.product("Toaster", 3000).await;
    let w = app.warehouse("Only").await;
    let other = app.warehouse("Empty").await;
    assert_eq!(app.add_stock(sku, w, 5).await.status, StatusCode::OK);
    let before = app.sales_report(sku).await;
    assert_eq!(before.on_hand, 5);
    assert_eq!(before.available, 5);

    let r = app.add_stock(sku, w, -6).await;
    r.assert_error(StatusCode::CONFLICT, "out_of_stock", "");

    // From a warehouse that has none of it.
    let r = app.add_stock(sku, other, -1).await;
    r.assert_error(StatusCode::CONFLICT, "out_of_stock", "");

    assert_eq!(app.available(sku).await, 5);
    assert_eq!(app.sales_report(sku).await, before);
    let r = app.get(&format!("/v1/products/{sku}/stocks"), None).await;
    assert_eq!(
        r.body["stocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["count"].as_i64().unwrap())
            .sum::<i64>(),
        5
    );
    app.assert_identity(sku).await;

    // A product with no stock at all.
    let bare = app.product("Bare", 1).await;
    let r = app.add_stock(bare, w, -1).await;
    r.assert_error(StatusCode::CONFLICT, "out_of_stock", "");
    assert_eq!(app.available(bare).await, 0);
    assert_eq!(app.sales_report(bare).await.on_hand, 0);
}

#[tokio::test]
async fn units_held_in_a_cart_cannot_be_removed() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let w = only_warehouse(&app, sku).await;
    let t = app.customer_token(12345);

    app.cart_add(&t, sku, 2).await;
    assert_eq!(app.available(sku).await, 3);
    let before = app.sales_report(sku).await;
    assert_eq!(before.on_hand, 5);
    assert_eq!(before.held, 2);

    for delta in [-5, -4] {
        let r = app.add_stock(sku, w, delta).await;
        r.assert_error(StatusCode::CONFLICT, "out_of_stock", delta);
    }
    assert_eq!(app.sales_report(sku).await, before, "nothing changed");
    assert_eq!(app.available(sku).await, 3);
    app.assert_identity(sku).await;

    // The unheld units can go; the held ones stay.
    let r = app.add_stock(sku, w, -3).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["on_hand"], 2);
    assert_eq!(r.body["available"], 0);
    let rep = app.sales_report(sku).await;
    assert_eq!(rep.on_hand, 2);
    assert_eq!(rep.held, 2);
    assert_eq!(rep.available, 0);
    let r = app.add_stock(sku, w, -1).await;
    r.assert_error(StatusCode::CONFLICT, "out_of_stock", "");
    app.assert_identity(sku).await;

    // The cart still holds its units.
    let r = app.get("/v1/cart", Some(&t)).await;
    assert_eq!(r.body["items"][0]["count"], 2);
}

#[tokio::test]
async fn stocks_per_warehouse() {
    let app = spawn_app().await;
    let sku = app.product("Fridge", 90_000).await;
    let a = app.warehouse("A").await;
    let b = app.warehouse("B").await;
    let c = app.warehouse("C").await;

    let r = app.get(&format!("/v1/products/{sku}/stocks"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sku"], sku);
    assert_eq!(
        r.body["stocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["count"].as_i64().unwrap())
            .sum::<i64>(),
        0
    );

    assert_eq!(app.add_stock(sku, a, 3).await.status, StatusCode::OK);
    assert_eq!(app.add_stock(sku, b, 4).await.status, StatusCode::OK);

    // (stocks checks the status and that the answer names the sku)
    let mut stocks = app.stocks(sku).await;
    stocks.sort_unstable();
    assert_eq!(stocks, vec![(a, 3), (b, 4)]);
    assert!(
        stocks.iter().all(|(w, _)| *w != c),
        "a warehouse without the sku is not listed"
    );
    assert_eq!(app.available(sku).await, 7);
    let rep = app.sales_report(sku).await;
    assert_eq!(rep.on_hand, 7);
    assert_eq!(rep.available, 7);
    app.assert_identity(sku).await;

    let r = app
        .get(&format!("/v1/products/{}/stocks", sku + 1000), None)
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app.get("/v1/products/abc/stocks", None).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
}

#[tokio::test]
async fn stocks_count_only_what_can_still_be_bought() {
    let app = spawn_app().await;
    let sku = app.sale_product(6, None).await;
    let w = only_warehouse(&app, sku).await;
    let t = app.customer_token(4242);
    app.cart_add(&t, sku, 4).await;
    let r = app.get(&format!("/v1/products/{sku}/stocks"), None).await;
    assert_eq!(
        r.body,
        json!({"sku": sku, "stocks": [{"warehouse_id": w, "count": 2}]})
    );
}

#[tokio::test]
async fn put_and_delete_a_sale() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let sku = app.product("Console", 50_000).await;
    let path = format!("/v1/products/{sku}/sale");

    let r = app
        .put(
            &path,
            admin,
            json!({
                "sale_price": 30_000,
                "starts_at": "2020-01-01T00:00:00Z",
                "ends_at": "2035-01-01T00:00:00Z",
                "per_customer_limit": 2,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sale_price"], 30_000);
    assert_eq!(
        time(&r.body["starts_at"]),
        time(&json!("2020-01-01T00:00:00Z"))
    );
    assert_eq!(
        time(&r.body["ends_at"]),
        time(&json!("2035-01-01T00:00:00Z"))
    );
    assert_eq!(r.body["per_customer_limit"], 2);
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body.as_object().unwrap().len(), 5, "{:?}", r.body);

    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["price"], 50_000, "the regular price stays");
    assert_eq!(p.body["sale"], r.body, "the product shows the same sale");

    // Replaced by a second PUT; times in another offset are normalised to UTC and kept to the
    // millisecond; no limit.
    let r = app
        .put(
            &path,
            admin,
            json!({
                "sale_price": 25_000,
                "starts_at": "2020-06-01T02:00:00.123456+02:00",
                "ends_at": "2035-06-01T00:00:00Z",
                "per_customer_limit": null,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sale_price"], 25_000);
    assert_eq!(
        time(&r.body["starts_at"]),
        time(&json!("2020-06-01T00:00:00.123Z"))
    );
    assert!(r.body["starts_at"].as_str().unwrap().ends_with('Z'), "UTC");
    assert_eq!(r.body["per_customer_limit"], Value::Null);
    assert_eq!(r.body["active"], true);
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"]["sale_price"], 25_000);
    assert_eq!(p.body["sale"]["per_customer_limit"], Value::Null);

    let r = app.delete(&path, admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(r.body, Value::Null, "204 has no body");
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"], Value::Null);
    assert_eq!(p.body["price"], 50_000);

    // A sale on an unknown product.
    let r = app
        .put(
            &format!("/v1/products/{}/sale", sku + 1000),
            admin,
            json!({
                "sale_price": 1,
                "starts_at": "2020-01-01T00:00:00Z",
                "ends_at": "2035-01-01T00:00:00Z",
                "per_customer_limit": null,
            }),
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app
        .delete(&format!("/v1/products/{}/sale", sku + 1000), admin)
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
}

#[tokio::test]
async fn bad_sale_windows_are_invalid_requests() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let sku = app.product("Phone", 80_000).await;
    let path = format!("/v1/products/{sku}/sale");
    let cases = [
        // ends_at before, or equal to, starts_at
        json!({"sale_price": 1, "starts_at": "2030-01-02T00:00:00Z",
               "ends_at": "2030-01-01T00:00:00Z", "per_customer_limit": null}),
        json!({"sale_price": 1, "starts_at": "2030-01-01T00:00:00Z",
               "ends_at": "2030-01-01T00:00:00Z", "per_customer_limit": null}),
        // limit out of range
        json!({"sale_price": 1, "starts_at": "2020-01-01T00:00:00Z",
               "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": 0}),
        json!({"sale_price": 1, "starts_at": "2020-01-01T00:00:00Z",
               "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": 65536}),
        // price out of range
        json!({"sale_price": -1, "starts_at": "2020-01-01T00:00:00Z",
               "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": null}),
        json!({"sale_price": 10_000_000_000_001u64, "starts_at": "2020-01-01T00:00:00Z",
               "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": null}),
        // times that are not RFC 3339, missing fields, unknown fields
        json!({"sale_price": 1, "starts_at": "yesterday",
               "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": null}),
        json!({"sale_price": 1, "starts_at": 1_700_000_000,
               "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": null}),
        json!({"sale_price": 1, "ends_at": "2035-01-01T00:00:00Z"}),
        json!({"starts_at": "2020-01-01T00:00:00Z", "ends_at": "2035-01-01T00:00:00Z"}),
        json!({"sale_price": 1, "starts_at": "2020-01-01T00:00:00Z",
               "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": null, "x": 1}),
    ];
    for body in cases {
        let r = app.put(&path, admin, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{body}: {:?}", r.body);
    }
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"], Value::Null, "no refused sale was set");

    // The limit bounds are inclusive.
    let r = app
        .put(
            &path,
            admin,
            json!({"sale_price": 1, "starts_at": "2020-01-01T00:00:00Z",
                   "ends_at": "2035-01-01T00:00:00Z", "per_customer_limit": 65535}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["per_customer_limit"], 65535);
}

#[tokio::test]
async fn sale_activity_follows_its_window() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let sku = app.product("Headphones", 9_000).await;
    let w = app.warehouse("Central").await;
    assert_eq!(app.add_stock(sku, w, 10).await.status, StatusCode::OK);
    let path = format!("/v1/products/{sku}/sale");
    let t = app.customer_token(12345);
    let now = Utc::now();

    // A future window: not active, and nothing can be added to a cart.
    let r = app
        .put(
            &path,
            admin,
            json!({
                "sale_price": 4_000,
                "starts_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
                "per_customer_limit": null,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["active"], false);
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"]["active"], false);
    assert_eq!(p.body["sale"]["sale_price"], 4_000);
    let r = app.try_cart_add(&t, sku, 1).await;
    r.assert_error(StatusCode::CONFLICT, "sale_not_active", "");
    assert_eq!(app.available(sku).await, 10, "nothing was held");

    // A past window: not active either.
    let r = app
        .put(
            &path,
            admin,
            json!({
                "sale_price": 4_000,
                "starts_at": (now - chrono::Duration::hours(2)).to_rfc3339(),
                "ends_at": (now - chrono::Duration::hours(1)).to_rfc3339(),
                "per_customer_limit": null,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["active"], false);
    let r = app.try_cart_add(&t, sku, 1).await;
    r.assert_error(StatusCode::CONFLICT, "sale_not_active", "");

    // Open now: active, and the sale price is charged.
    app.open_sale(sku, 4_000, Some(3)).await;
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"]["active"], true);
    assert_eq!(p.body["sale"]["per_customer_limit"], 3);
    let r = app.try_cart_add(&t, sku, 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["unit_price"], 4_000);
    assert_eq!(app.available(sku).await, 9);

    // Moved to the future again: the product says so and new holds are refused.
    let r = app
        .put(
            &path,
            admin,
            json!({
                "sale_price": 4_000,
                "starts_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
                "per_customer_limit": 3,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"]["active"], false);
    let r = app
        .post(
            "/v1/cart/items",
            Some(&app.customer_token(999)),
            json!({"sku": sku, "count": 1}),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "sale_not_active", "");
    app.assert_identity(sku).await;
}

#[tokio::test]
async fn sales_report_counts_every_bucket() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let a = app.customer_token(12345);
    let b = app.customer_token(23456);

    // (sales_report checks that the answer names the sku)
    let r = app.sales_report(sku).await;
    assert_eq!(r.on_hand, 10);
    assert_eq!(r.available, 10);
    assert_eq!(r.held, 0);
    assert_eq!(r.reserved, 0);
    assert_eq!(r.sold, 0);

    for (t, n) in [(&a, 2), (&b, 3)] {
        app.cart_add(t, sku, n).await;
    }
    let r = app.sales_report(sku).await;
    assert_eq!(r.on_hand, 10);
    assert_eq!(r.available, 5);
    assert_eq!(r.held, 5);
    assert_eq!(r.reserved, 0);
    assert_eq!(r.sold, 0);
    let buckets = app.assert_identity(sku).await;
    assert_eq!(r.available, buckets.available);
    assert_eq!(r.held, buckets.held);

    // b checks out: its 3 units move from held to reserved.
    let order_id = app.checkout(&b).await.order_id;
    let r = app.sales_report(sku).await;
    assert_eq!(r.on_hand, 10);
    assert_eq!(r.available, 5);
    assert_eq!(r.held, 2);
    assert_eq!(r.reserved, 3);
    assert_eq!(r.sold, 0);
    app.assert_identity(sku).await;

    // b pays: reserved becomes sold.
    let r = app
        .post(&format!("/v1/orders/{order_id}/pay"), Some(&b), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "paid");
    let r = app.sales_report(sku).await;
    assert_eq!(r.available, 5);
    assert_eq!(r.held, 2);
    assert_eq!(r.reserved, 0);
    let on_hand = r.on_hand;
    let sold = r.sold;
    assert_eq!(
        sold + (10 - on_hand),
        3,
        "3 sold, whether or not written back to on_hand: {r:?}"
    );
    assert_eq!(
        on_hand,
        r.available + r.held + r.reserved + sold,
        "on_hand = available + held + reserved + sold: {r:?}"
    );
    let buckets = app.assert_identity(sku).await;
    assert_eq!(buckets.on_hand, on_hand);
    assert_eq!(buckets.sold, sold);

    // Unknown sku, customers.
    let r = app
        .get(
            &format!("/v1/products/{}/sales-report", sku + 1000),
            Some(&app.admin_token),
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app
        .get(&format!("/v1/products/{sku}/sales-report"), Some(&a))
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden", "");
}

#[tokio::test]
async fn sales_report_has_the_documented_fields() {
    let app = spawn_app().await;
    let sku = app.sale_product(3, None).await;
    let r = app
        .get(
            &format!("/v1/products/{sku}/sales-report"),
            Some(&app.admin_token),
        )
        .await
        .body;
    let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "available",
            "held",
            "on_hand",
            "reserved",
            "sku",
            "sold",
            "sold_total"
        ],
        "docs/API.md: {{sku, on_hand, available, held, reserved, sold, sold_total}}; got {r:?}"
    );
}

#[tokio::test]
async fn a_window_shorter_than_a_millisecond_is_refused() {
    // Times are kept to the millisecond, so a window of 100 microseconds would be stored as
    // [t, t): empty, a sale that can never be active.
    let app = spawn_app().await;
    let sku = app.product("Blink", 100).await;
    let r = app
        .put(
            &format!("/v1/products/{sku}/sale"),
            Some(&app.admin_token),
            json!({"sale_price": 1, "starts_at": "2030-01-01T00:00:00Z",
                   "ends_at": "2030-01-01T00:00:00.0001Z", "per_customer_limit": null}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
}

#[tokio::test]
async fn sale_times_outside_1970_to_2038_are_not_internal_errors() {
    // API.md puts no bound on sale times. A window ending past 2038-01-19T03:14:07Z (the end of
    // MySQL's TIMESTAMP range) is an ordinary request; one starting before 1970 is either kept
    // or refused as invalid_request, never a 500.
    let app = spawn_app().await;
    let sku = app.product("Long sale", 100).await;
    let path = format!("/v1/products/{sku}/sale");
    let r = app
        .put(
            &path,
            Some(&app.admin_token),
            json!({"sale_price": 1, "starts_at": "2020-01-01T00:00:00Z",
                   "ends_at": "2099-01-01T00:00:00Z", "per_customer_limit": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "ends 2099: {:?}", r.body);
    assert_eq!(
        time(&r.body["ends_at"]),
        time(&json!("2099-01-01T00:00:00Z"))
    );
    assert_eq!(r.body["active"], true);
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"]["active"], true);

    let r = app
        .put(
            &path,
            Some(&app.admin_token),
            json!({"sale_price": 1, "starts_at": "1960-01-01T00:00:00Z",
                   "ends_at": "2030-01-01T00:00:00Z", "per_customer_limit": null}),
        )
        .await;
    assert!(
        r.status == StatusCode::OK
            || (r.status == StatusCode::BAD_REQUEST && r.code() == "invalid_request"),
        "starts 1960: {} {:?}",
        r.status,
        r.body
    );
}

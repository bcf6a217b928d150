//! Input that used to slip through: sale times outside what MySQL and Redis can keep, a stock
//! delta of i64::MIN, names made only of invisible characters. Each is a 400 that changes
//! nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn sale_times_outside_the_storable_range_are_invalid_requests() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let sku = app.product("Phone", 80_000).await;
    let path = format!("/v1/products/{sku}/sale");
    let window = |starts: &str, ends: &str| json!({"sale_price": 1, "starts_at": starts, "ends_at": ends, "per_customer_limit": null});
    let cases = [
        window("2030-01-01T00:00:00Z", "+10000-01-01T00:00:00Z"),
        window("-0001-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),
        window("-0001-01-01T00:00:00Z", "+10000-01-01T00:00:00Z"),
        // Before the unix epoch: Redis keeps the window in unix milliseconds.
        window("1969-12-31T23:59:59.999Z", "2030-01-01T00:00:00Z"),
        window("0999-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),
        // An offset that carries ends_at past the last storable instant.
        window("2030-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"),
    ];
    for body in cases {
        let r = app.put(&path, admin, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{body}: {:?}", r.body);
    }
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.body["sale"], Value::Null, "no refused sale was set");

    // The bounds themselves are storable.
    let r = app
        .put(
            &path,
            admin,
            window("1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["starts_at"], "1970-01-01T00:00:00Z");
    assert_eq!(r.body["ends_at"], "9999-12-31T23:59:59.999Z");
    let p = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(p.body["sale"]["ends_at"], "9999-12-31T23:59:59.999Z");
    assert_eq!(p.body["sale"]["active"], true);
    // Redis keeps and compares those times exactly: the window is open, the sale price charged.
    let w = app.warehouse("Far future").await;
    assert_eq!(app.add_stock(sku, w, 1).await.status, StatusCode::OK);
    let t = app.customer_token(9_002);
    let r = app.try_buy_now(&t, sku, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["unit_price"], 1);
}

#[tokio::test]
async fn a_delta_of_i64_min_is_an_invalid_request() {
    let app = spawn_app().await;
    let sku = app.product("Kettle", 2_500).await;
    let w = app.warehouse("Main").await;
    assert_eq!(app.add_stock(sku, w, 5).await.status, StatusCode::OK);
    for delta in [
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        -1_000_000_001,
        1_000_000_001,
    ] {
        let r = app.add_stock(sku, w, delta).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{delta}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{delta}: {:?}", r.body);
    }
    // Beyond i64 entirely: still a 400 with the same code.
    let r = app
        .post(
            &format!("/v1/products/{sku}/stock"),
            Some(&app.admin_token),
            json!({"warehouse_id": w, "delta": -9_223_372_036_854_775_809i128 as f64}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available), (5, 5), "nothing changed");
}

/// Names that show nothing: only zero-width, format, or blank characters; and names carrying
/// characters that hide or reorder text.
const INVISIBLE_NAMES: [&str; 16] = [
    "\u{200B}",
    "\u{200B}\u{200B}\u{200B}",
    " \u{200B} ",
    "\u{200C}\u{200D}",
    "\u{2060}",
    "\u{FEFF}",
    "\u{00AD}",
    "\u{3164}",
    "\u{2800}",
    "\u{FE0F}",
    "TV\u{202E}gnp.exe",
    "Ber\u{200B}lin",
    "Ber\u{200C}lin",
    "Ber\u{00AD}lin",
    "Ber\u{3164}lin",
    "Mug\u{FE0F}",
];

#[tokio::test]
async fn invisible_names_are_invalid_requests() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let sku = app.product("Kettle", 2_500).await;
    for name in INVISIBLE_NAMES {
        let r = app
            .post("/v1/products", admin, json!({"name": name, "price": 100}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{name:?}");
        let r = app
            .patch(&format!("/v1/products/{sku}"), admin, json!({"name": name}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{name:?}");
        let r = app
            .post("/v1/warehouses", admin, json!({"name": name}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{name:?}");
    }
    let list = app.get("/v1/products", None).await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        1,
        "nothing created"
    );
    assert_eq!(list.body["items"][0]["name"], "Kettle", "nothing renamed");

    // Scripts that need joiners, and emoji sequences, are still names.
    for name in [
        "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
        "👩\u{200D}💻 Laptop",
        "❤\u{FE0F} Mug",
    ] {
        let r = app
            .post("/v1/products", admin, json!({"name": name, "price": 100}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name:?}: {:?}", r.body);
        assert_eq!(r.body["name"], name);
    }
}

/// A wrong password costs the same argon2 work whether the username exists or not, with a
/// non-default memory setting too (the test config uses 1 MiB; the old dummy hash had 19 MiB).
/// Compared as the fastest of several tries each, so load on the machine cannot fake a gap.
#[tokio::test]
async fn unknown_and_known_usernames_take_the_same_time() {
    let app = spawn_app().await;
    app.register("timed").await;
    let fastest = |user: &'static str| {
        let app = &app;
        async move {
            let mut best = std::time::Duration::MAX;
            for _ in 0..7 {
                let started = std::time::Instant::now();
                let r = app
                    .post(
                        "/v1/auth/token",
                        None,
                        json!({"username": user, "password": "wrong-password"}),
                    )
                    .await;
                assert_eq!(r.status, StatusCode::UNAUTHORIZED);
                best = best.min(started.elapsed());
            }
            best
        }
    };
    let known = fastest("timed").await;
    let unknown = fastest("nobody-here").await;
    eprintln!("fastest wrong-password login: known {known:?}, unknown {unknown:?}");
    let (lo, hi) = (known.min(unknown), known.max(unknown));
    assert!(
        hi < lo * 4,
        "known {known:?} vs unknown {unknown:?}: the dummy hash must cost what a real one does"
    );
}

/// Siblings of the i64::MIN delta: every integer a client can send, at and past its limits,
/// answers what the contract says (never 500).
#[tokio::test]
async fn integers_at_their_limits_never_answer_500() {
    let app = spawn_app().await;
    let admin = Some(app.admin_token.as_str());
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(9_001);
    let max = u64::MAX;
    let gets = [
        format!("/v1/orders?before_id={max}"),
        "/v1/orders?before_id=0".to_string(),
        format!("/v1/orders/{max}"),
        "/v1/products?after_sku=4294967295".to_string(),
        "/v1/products?after_sku=4294967296".to_string(),
        format!("/v1/products/{max}"),
        "/v1/products/4294967295/stocks".to_string(),
    ];
    for path in &gets {
        let r = app.get(path, Some(&t)).await;
        assert!(
            [200, 400, 404].contains(&r.status.as_u16()),
            "{path}: {} {:?}",
            r.status,
            r.body
        );
    }
    let posts = [
        (format!("/v1/orders/{max}/pay"), json!({})),
        (format!("/v1/orders/{max}/cancel"), json!({})),
        (
            "/v1/orders/buy-now".into(),
            json!({"sku": 4294967295u64, "count": 65535}),
        ),
        ("/v1/cart/items".into(), json!({"sku": sku, "count": 65535})),
        ("/v1/cart/items".into(), json!({"sku": sku, "count": -1})),
        ("/v1/cart/items".into(), json!({"sku": sku, "count": max})),
    ];
    for (path, body) in &posts {
        let r = app.post(path, Some(&t), body.clone()).await;
        assert!(
            [200, 201, 400, 404, 409].contains(&r.status.as_u16()),
            "{path} {body}: {} {:?}",
            r.status,
            r.body
        );
    }
    let admin_posts = [
        (
            "/v1/products",
            json!({"sku": 4294967295u64, "name": "Max", "price": 10_000_000_000_000u64}),
        ),
        ("/v1/products", json!({"name": "Over", "price": max})),
        ("/v1/warehouses", json!({"name": "x".repeat(100)})),
    ];
    for (path, body) in &admin_posts {
        let r = app.post(path, admin, body.clone()).await;
        assert!(
            [201, 400, 409].contains(&r.status.as_u16()),
            "{path} {body}: {} {:?}",
            r.status,
            r.body
        );
    }
    let r = app
        .post(
            &format!("/v1/products/{sku}/stock"),
            admin,
            json!({"warehouse_id": 4294967295u64, "delta": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    let r = app
        .delete(&format!("/v1/cart/items/{sku}?count={max}"), Some(&t))
        .await;
    assert!([200, 400].contains(&r.status.as_u16()), "{:?}", r.body);
    let b = app.assert_identity(sku).await;
    assert_eq!(b.on_hand, 5);
}

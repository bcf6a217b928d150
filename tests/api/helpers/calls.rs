//! The API's vocabulary: one call per route step the tests take, over real HTTP.
//!
//! `verb(...)` expects the route's success status and returns the answer typed (views.rs), so a
//! test reads as the steps of a customer or an admin; `try_verb(...)` returns the raw answer
//! ([`Resp`]) for a test that checks a refusal's status and code, and `.expect::<View>(status)`
//! turns a raw answer into a typed one.

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::spawn::{ADMIN_PASSWORD, Resp, TestApp};
use super::views::{Buckets, Cart, Order, OrderPage, Product, StockAdjusted};

impl Resp {
    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("unexpected answer shape ({e}): {:?}", self.body))
    }

    /// The body as `T`, after checking that the answer has `status`.
    pub fn expect<T: DeserializeOwned>(&self, status: StatusCode) -> T {
        assert_eq!(self.status, status, "{:?}", self.body);
        self.json()
    }

    /// Checks that the answer is the error envelope `code` with `status`; `ctx` names the case
    /// in a failure message.
    pub fn assert_error(&self, status: StatusCode, code: &str, ctx: impl std::fmt::Display) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "{ctx}: {:?}",
            self.body
        );
    }

    /// The status and the body.
    pub fn into_parts(self) -> (StatusCode, Value) {
        (self.status, self.body)
    }

    /// The id of the `failed` order a refused checkout names in its error envelope.
    pub fn failed_order_id(&self) -> Option<u64> {
        self.body["error"]["order_id"].as_u64()
    }
}

/// The path of an order's route (`""` for the order itself, `"/pay"`, `"/cancel"`).
fn order_path(id: u64, step: &str) -> String {
    format!("/v1/orders/{id}{step}")
}

// Auth

impl TestApp {
    /// Signs in; returns the access token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self.try_login(username, password).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "login of {username}: {:?}",
            r.body
        );
        r.body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn try_login(&self, username: &str, password: &str) -> Resp {
        self.post(
            "/v1/auth/token",
            None,
            json!({"username": username, "password": password}),
        )
        .await
    }

    /// The admin's token, signed in afresh.
    pub async fn admin_login(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    pub async fn try_register(&self, username: &str, password: &str) -> Resp {
        self.post(
            "/v1/users",
            None,
            json!({"username": username, "password": password}),
        )
        .await
    }

    /// Registers a customer through the API; returns (user_id, token).
    pub async fn register(&self, username: &str) -> (u64, String) {
        let password = format!("{username}-password");
        let r = self.try_register(username, &password).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "register {username}: {:?}",
            r.body
        );
        let id = r.body["user_id"].as_u64().unwrap();
        (id, self.login(username, &password).await)
    }

    /// `DELETE /v1/users/{id}` with `token` (an admin's to succeed).
    pub async fn try_delete_user(&self, token: &str, user_id: u64) -> Resp {
        self.delete(&format!("/v1/users/{user_id}"), Some(token))
            .await
    }

    /// `PUT /v1/users/{id}/role` with `token` (an admin's to succeed).
    pub async fn try_set_role(&self, token: &str, user_id: u64, role: &str) -> Resp {
        self.put(
            &format!("/v1/users/{user_id}/role"),
            Some(token),
            json!({"role": role}),
        )
        .await
    }

    /// `PUT /v1/users/me/password`: the caller's password from `current` to `new`.
    pub async fn try_change_password(&self, token: &str, current: &str, new: &str) -> Resp {
        self.put(
            "/v1/users/me/password",
            Some(token),
            json!({"current_password": current, "new_password": new}),
        )
        .await
    }

    /// A token for customer `user_id`, whose account (`load-<id>`, password
    /// [`LOAD_PASSWORD`](super::LOAD_PASSWORD)) is made straight in MySQL when missing: what load
    /// tests use, since argon2 for thousands of sign-ups and logins would only test argon2. The
    /// token has the account's role and version as this app first saw them: after a change of
    /// the account (its password, role), sign in instead.
    pub fn customer_token(&self, user_id: u64) -> String {
        let (role, version) = self.accounts().ensure(user_id);
        self.state.jwt.issue(user_id, role, version).unwrap()
    }
}

// Catalog and stock (as the admin)

impl TestApp {
    /// Creates a warehouse; returns its id.
    pub async fn warehouse(&self, name: &str) -> u64 {
        let r = self
            .post(
                "/v1/warehouses",
                Some(&self.admin_token),
                json!({"name": name}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["warehouse_id"].as_u64().unwrap()
    }

    /// Creates a product; returns its sku.
    pub async fn product(&self, name: &str, price: u64) -> u64 {
        let r = self
            .post(
                "/v1/products",
                Some(&self.admin_token),
                json!({"name": name, "price": price}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["sku"].as_u64().unwrap()
    }

    /// Adds (or, negative, removes) stock of `sku` in a warehouse: the raw answer.
    pub async fn add_stock(&self, sku: u64, warehouse_id: u64, delta: i64) -> Resp {
        self.post(
            &format!("/v1/products/{sku}/stock"),
            Some(&self.admin_token),
            json!({"warehouse_id": warehouse_id, "delta": delta}),
        )
        .await
    }

    /// Adds (or removes) stock, expecting it done.
    pub async fn restock(&self, sku: u64, warehouse_id: u64, delta: i64) -> StockAdjusted {
        self.add_stock(sku, warehouse_id, delta)
            .await
            .expect(StatusCode::OK)
    }

    /// Sets `sku`'s sale window, `from` and `to` hours from now.
    pub async fn try_set_sale(
        &self,
        sku: u64,
        sale_price: u64,
        hours: (i64, i64),
        limit: Option<u64>,
    ) -> Resp {
        let now = Utc::now();
        self.put(
            &format!("/v1/products/{sku}/sale"),
            Some(&self.admin_token),
            json!({
                "sale_price": sale_price,
                "starts_at": (now + chrono::Duration::hours(hours.0)).to_rfc3339(),
                "ends_at": (now + chrono::Duration::hours(hours.1)).to_rfc3339(),
                "per_customer_limit": limit,
            }),
        )
        .await
    }

    /// Opens a sale on `sku` from an hour ago to an hour from now.
    pub async fn open_sale(&self, sku: u64, sale_price: u64, limit: Option<u64>) {
        let r = self.try_set_sale(sku, sale_price, (-1, 1), limit).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    /// Moves `sku`'s sale window to tomorrow: it cannot be bought now.
    pub async fn close_sale(&self, sku: u64) {
        let r = self.try_set_sale(sku, 5_000, (24, 48), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    /// A product on sale now with `units` in one new warehouse; returns its sku.
    pub async fn sale_product(&self, units: i64, limit: Option<u64>) -> u64 {
        let sku = self.product("Flash item", 10_000).await;
        let w = self.warehouse(&format!("wh-{sku}")).await;
        self.restock(sku, w, units).await;
        self.open_sale(sku, 5_000, limit).await;
        sku
    }

    /// `GET /v1/products/{sku}`.
    pub async fn get_product(&self, sku: u64) -> Product {
        self.get(&format!("/v1/products/{sku}"), None)
            .await
            .expect(StatusCode::OK)
    }

    pub async fn available(&self, sku: u64) -> i64 {
        self.get_product(sku).await.available
    }

    /// `GET /v1/products/{sku}/sales-report`, as the admin (checking that it names `sku`).
    pub async fn sales_report(&self, sku: u64) -> Buckets {
        let r = self
            .get(
                &format!("/v1/products/{sku}/sales-report"),
                Some(&self.admin_token),
            )
            .await;
        assert_eq!(r.body["sku"], sku, "{:?}", r.body);
        r.expect(StatusCode::OK)
    }

    /// `GET /v1/products/{sku}/stocks` (checking that it names `sku`): (warehouse_id, units)
    /// per warehouse.
    pub async fn stocks(&self, sku: u64) -> Vec<(u64, i64)> {
        let r = self.get(&format!("/v1/products/{sku}/stocks"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["sku"], sku, "{:?}", r.body);
        r.body["stocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["warehouse_id"].as_u64().unwrap(),
                    s["count"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

// Cart (the caller's own)

impl TestApp {
    pub async fn try_cart_add(&self, token: &str, sku: u64, count: u64) -> Resp {
        self.post(
            "/v1/cart/items",
            Some(token),
            json!({"sku": sku, "count": count}),
        )
        .await
    }

    /// Holds `count` more units of `sku` in the caller's cart.
    pub async fn cart_add(&self, token: &str, sku: u64, count: u64) -> Cart {
        self.try_cart_add(token, sku, count)
            .await
            .expect(StatusCode::OK)
    }

    /// Releases `count` units of `sku` (all of the line when `None`).
    pub async fn try_cart_remove(&self, token: &str, sku: u64, count: Option<u64>) -> Resp {
        let path = match count {
            Some(n) => format!("/v1/cart/items/{sku}?count={n}"),
            None => format!("/v1/cart/items/{sku}"),
        };
        self.delete(&path, Some(token)).await
    }

    pub async fn cart_remove(&self, token: &str, sku: u64, count: Option<u64>) -> Cart {
        self.try_cart_remove(token, sku, count)
            .await
            .expect(StatusCode::OK)
    }

    pub async fn cart(&self, token: &str) -> Cart {
        self.get("/v1/cart", Some(token))
            .await
            .expect(StatusCode::OK)
    }
}

// Orders (the caller's own)

impl TestApp {
    /// `POST /v1/orders`: checks out the caller's cart.
    pub async fn try_checkout(&self, token: &str) -> Resp {
        self.post_empty("/v1/orders", Some(token)).await
    }

    pub async fn checkout(&self, token: &str) -> Order {
        self.try_checkout(token).await.expect(StatusCode::CREATED)
    }

    /// `POST /v1/orders/buy-now`.
    pub async fn try_buy_now(&self, token: &str, sku: u64, count: u64) -> Resp {
        self.post(
            "/v1/orders/buy-now",
            Some(token),
            json!({"sku": sku, "count": count}),
        )
        .await
    }

    pub async fn buy_now(&self, token: &str, sku: u64, count: u64) -> Order {
        self.try_buy_now(token, sku, count)
            .await
            .expect(StatusCode::CREATED)
    }

    /// Buy-now with an `Idempotency-Key`.
    pub async fn try_buy_now_keyed(&self, token: &str, key: &str, sku: u64, count: u64) -> Resp {
        self.send(
            Method::POST,
            "/v1/orders/buy-now",
            Some(token),
            Some(json!({"sku": sku, "count": count})),
            &[("idempotency-key", key)],
        )
        .await
    }

    /// Checkout with an `Idempotency-Key`.
    pub async fn try_checkout_keyed(&self, token: &str, key: &str) -> Resp {
        self.send(
            Method::POST,
            "/v1/orders",
            Some(token),
            None,
            &[("idempotency-key", key)],
        )
        .await
    }

    pub async fn try_pay(&self, token: &str, id: u64) -> Resp {
        self.post_empty(&order_path(id, "/pay"), Some(token)).await
    }

    pub async fn pay(&self, token: &str, id: u64) -> Order {
        let o: Order = self.try_pay(token, id).await.expect(StatusCode::OK);
        assert_eq!(o.status, "paid", "{o:?}");
        o
    }

    pub async fn try_cancel(&self, token: &str, id: u64) -> Resp {
        self.post_empty(&order_path(id, "/cancel"), Some(token))
            .await
    }

    pub async fn cancel(&self, token: &str, id: u64) -> Order {
        let o: Order = self.try_cancel(token, id).await.expect(StatusCode::OK);
        assert_eq!(o.status, "cancelled", "{o:?}");
        o
    }

    pub async fn try_order(&self, token: &str, id: u64) -> Resp {
        self.get(&order_path(id, ""), Some(token)).await
    }

    /// `GET /v1/orders/{id}`.
    pub async fn order(&self, token: &str, id: u64) -> Order {
        self.try_order(token, id).await.expect(StatusCode::OK)
    }

    /// `GET /v1/orders?{query}` (`query` without the `?`; empty: no query).
    pub async fn orders(&self, token: &str, query: &str) -> OrderPage {
        let path = match query {
            "" => "/v1/orders".to_string(),
            q => format!("/v1/orders?{q}"),
        };
        self.get(&path, Some(token)).await.expect(StatusCode::OK)
    }

    /// Buys `count` units with buy-now as customer `user` and pays; returns the order id.
    pub async fn buy_and_pay(&self, user: u64, sku: u64, count: u64) -> u64 {
        let t = self.customer_token(user);
        let id = self.buy_now(&t, sku, count).await.order_id;
        self.pay(&t, id).await;
        id
    }

    /// A `failed` order of `user`: a checkout that reserves `count` units of `sku` and is then
    /// refused on a second line (a sale product whose window closes); returns its id.
    pub async fn failed_order(&self, user: u64, sku: u64, count: u64) -> u64 {
        let t = self.customer_token(user);
        let closing = self.sale_product(1, None).await;
        assert!(
            closing > sku,
            "the refused line must come after the taken one"
        );
        self.cart_add(&t, sku, count).await;
        self.cart_add(&t, closing, 1).await;
        self.close_sale(closing).await;
        let r = self.try_checkout(&t).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "sale_not_active"),
            "{:?}",
            r.body
        );
        r.failed_order_id().expect("the failed order's id")
    }
}

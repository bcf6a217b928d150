//! `GET /openapi.json`: the document is served, matches docs/API.md's route tables exactly,
//! describes only routes the app serves, and documents every error with the error envelope.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const ENVELOPE_REF: &str = "#/components/schemas/ErrorEnvelope";
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A route of docs/API.md: who may call it ("anyone", "customer" or "admin").
#[derive(Debug, Clone)]
pub(crate) struct DocRoute {
    pub(crate) who: String,
}

fn api_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md"))
        .expect("docs/API.md is readable")
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_string()).collect()
}

/// The route tables of docs/API.md (sections Auth, Catalog and stock, Cart, Orders, Operations):
/// `(METHOD, /path/{param})` without the query, and who may call it (Cart and Orders are the
/// caller's own: "customer"; Operations: "anyone").
pub(crate) fn documented_routes() -> BTreeMap<(String, String), DocRoute> {
    const SECTIONS: [&str; 6] = [
        "Auth",
        "Catalog and stock",
        "Cart",
        "Orders",
        "Live stock",
        "Operations",
    ];
    let mut routes = BTreeMap::new();
    let mut section: Option<&str> = None;
    let mut who_column: Option<usize> = None;
    for line in api_md().lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = SECTIONS.iter().copied().find(|s| heading.starts_with(s));
            who_column = None;
            continue;
        }
        let Some(section) = section else { continue };
        if !line.trim_start().starts_with('|') {
            continue;
        }
        let row = cells(line);
        if let Some(i) = row.iter().position(|c| c == "who") {
            who_column = Some(i);
            continue;
        }
        let Some((method, target)) = row[0].split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) || !target.starts_with('/')
        {
            continue;
        }
        let path = target.split('?').next().unwrap().to_string();
        let who = match (section, who_column) {
            (_, Some(i)) => row[i].clone(),
            ("Operations", None) => "anyone".to_string(),
            (_, None) => "customer".to_string(),
        };
        assert!(
            ["anyone", "customer", "admin"].contains(&who.as_str()),
            "API.md: unexpected who {who:?} for {method} {path}"
        );
        let old = routes.insert((method.to_string(), path.clone()), DocRoute { who });
        assert!(old.is_none(), "API.md lists {method} {path} twice");
    }
    routes
}

/// The errors table of docs/API.md: status -> codes.
fn documented_codes() -> BTreeMap<u16, BTreeSet<String>> {
    let md = api_md();
    let errors = md
        .split("## Errors")
        .nth(1)
        .expect("API.md has an Errors section");
    let errors = errors.split("\n## ").next().unwrap();
    let mut out = BTreeMap::new();
    for line in errors.lines().filter(|l| l.trim_start().starts_with('|')) {
        let row = cells(line);
        let Ok(status) = row[0].parse::<u16>() else {
            continue;
        };
        out.insert(status, backticked(&row[1]));
    }
    assert!(out.len() >= 9, "API.md's errors table: {out:?}");
    out
}

/// Words in `backticks` that look like error codes.
fn backticked(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

async fn served_document(app: &TestApp) -> Value {
    let r = app.get("/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    assert!(r.body.is_object(), "not a JSON object: {:?}", r.body);
    r.body
}

/// Every operation of the document: (METHOD, path) -> operation object.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    ops
}

fn is_error_status(status: &str) -> bool {
    status == "default" || status.starts_with('4') || status.starts_with('5')
}

#[tokio::test]
async fn openapi_json_is_an_openapi_3_document_with_bearer_auth() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3."), "openapi {version:?}");
    assert!(doc["info"]["title"].is_string(), "{:?}", doc["info"]);
    assert!(doc["info"]["version"].is_string(), "{:?}", doc["info"]);

    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let bearer: Vec<&String> = schemes
        .iter()
        .filter(|(_, s)| {
            s["type"] == "http"
                && s["scheme"].as_str().map(str::to_ascii_lowercase).as_deref() == Some("bearer")
        })
        .map(|(name, _)| name)
        .collect();
    assert_eq!(bearer.len(), 1, "one http bearer scheme: {schemes:?}");
    assert_eq!(schemes[bearer[0]]["bearerFormat"], "JWT");

    // Served twice, the same document.
    assert_eq!(served_document(&app).await, doc);
}

#[tokio::test]
async fn openapi_routes_are_exactly_api_md_routes() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let documented: BTreeSet<(String, String)> = documented_routes().into_keys().collect();
    assert!(
        documented.len() >= 27,
        "API.md route tables parsed to {} routes: {documented:?}",
        documented.len()
    );
    let in_openapi: BTreeSet<(String, String)> = operations(&doc)
        .into_keys()
        .map(|(m, p)| (m, p.split('?').next().unwrap().to_string()))
        .collect();
    let missing: Vec<_> = documented.difference(&in_openapi).collect();
    let extra: Vec<_> = in_openapi.difference(&documented).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "in API.md, not in the OpenAPI document: {missing:?}; \
         in the OpenAPI document, not in API.md: {extra:?}"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers_a_documented_status() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let ops = operations(&doc);
    assert!(!ops.is_empty());
    for ((method, path), op) in &ops {
        let concrete = path
            .replace("{sku}", "1")
            .replace("{order_id}", "1")
            .replace("{user_id}", "999999999");
        assert!(
            !concrete.contains('{'),
            "{method} {path}: a path parameter this test does not fill"
        );
        let body = op.get("requestBody").map(|_| json!({}));
        let r = app
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete,
                Some(&app.admin_token),
                body,
            )
            .await;
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            !(r.status == StatusCode::NOT_FOUND && message.starts_with("no route")),
            "{method} {concrete}: not routed: {:?}",
            r.body
        );
        assert!(
            r.status != StatusCode::METHOD_NOT_ALLOWED && r.code() != "method_not_allowed",
            "{method} {concrete}: method not allowed: {:?}",
            r.body
        );
        let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(
            documented.iter().any(|s| s.as_str() == r.status.as_str()),
            "{method} {concrete} answered {} ({:?}), not among its documented statuses \
             {documented:?}",
            r.status,
            r.body
        );
    }
}

#[tokio::test]
async fn every_error_response_uses_the_error_envelope_and_names_its_codes() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let codes = documented_codes();

    // The envelope: {"error": {"code", "message", "order_id"?}}.
    let schemas = &doc["components"]["schemas"];
    let envelope = &schemas["ErrorEnvelope"];
    assert_eq!(envelope["required"], json!(["error"]), "{envelope}");
    let body_ref = envelope["properties"]["error"]["$ref"]
        .as_str()
        .expect("error is a schema reference");
    let body = &schemas[body_ref.rsplit('/').next().unwrap()];
    assert_eq!(body["required"], json!(["code", "message"]), "{body}");
    let props: BTreeSet<&str> = body["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(props, BTreeSet::from(["code", "message", "order_id"]));
    // Its codes are exactly API.md's.
    let code_ref = body["properties"]["code"]["$ref"]
        .as_str()
        .expect("code ref");
    let code_enum: BTreeSet<String> = schemas[code_ref.rsplit('/').next().unwrap()]["enum"]
        .as_array()
        .expect("code is an enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let all_codes: BTreeSet<String> = codes.values().flatten().cloned().collect();
    assert_eq!(code_enum, all_codes, "ErrorCode vs API.md's errors table");

    let mut errors_seen = 0;
    for ((method, path), op) in operations(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success response"
        );
        assert!(
            responses.contains_key("500"),
            "{method} {path}: 500 `internal` is not documented"
        );
        for (status, resp) in responses.iter().filter(|(s, _)| is_error_status(s)) {
            errors_seen += 1;
            let content = resp["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {status}: no content"));
            assert!(
                !content.is_empty(),
                "{method} {path} {status}: empty content"
            );
            for (media, c) in content {
                assert!(
                    media.starts_with("application/json"),
                    "{method} {path} {status}: {media}"
                );
                assert_eq!(
                    c["schema"]["$ref"], ENVELOPE_REF,
                    "{method} {path} {status}: not the error envelope"
                );
            }
            let description = resp["description"].as_str().unwrap_or("");
            let named = backticked(description);
            let allowed = &codes[&status.parse::<u16>().unwrap()];
            let listed: Vec<&String> = named.intersection(allowed).collect();
            assert!(
                !listed.is_empty(),
                "{method} {path} {status}: the description names none of {allowed:?}: \
                 {description:?}"
            );
            for code in named.iter().filter(|c| all_codes.contains(*c)) {
                assert!(
                    allowed.contains(code),
                    "{method} {path} {status}: `{code}` is not a {status} code in API.md"
                );
            }
        }
    }
    assert!(errors_seen > 50, "only {errors_seen} error responses");
}

#[tokio::test]
async fn auth_idempotency_and_examples_are_documented() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let routes = documented_routes();
    let ops = operations(&doc);
    let bearer = doc["components"]["securitySchemes"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();

    for ((method, path), op) in &ops {
        let who = &routes[&(method.clone(), path.clone())].who;
        let what = format!("{method} {path} ({who})");
        let description = op["description"].as_str().unwrap_or("");
        let responses = op["responses"].as_object().unwrap();
        match who.as_str() {
            "anyone" => {
                assert!(
                    op.get("security").is_none() || op["security"] == json!([{}]),
                    "{what}: needs no token: {:?}",
                    op["security"]
                );
            }
            _ => {
                assert_eq!(op["security"], json!([{ bearer.clone(): [] }]), "{what}");
                assert!(responses.contains_key("401"), "{what}: no 401");
                // The token's account is checked in Redis or MySQL: unreachable, 503.
                assert!(responses.contains_key("503"), "{what}: no 503");
                let says = if who == "admin" { "admin" } else { "customer" };
                assert!(
                    description.contains(says),
                    "{what}: the description does not say who: {description:?}"
                );
                assert_eq!(responses.contains_key("403"), who == "admin", "{what}: 403");
            }
        }

        // Every request body has a JSON schema and an example.
        if let Some(body) = op.get("requestBody") {
            let c = &body["content"]["application/json"];
            assert!(c["schema"].is_object(), "{what}: no body schema");
            assert!(
                c.get("example").is_some() || c.get("examples").is_some(),
                "{what}: no request example"
            );
            assert!(
                responses.contains_key("413"),
                "{what}: takes a body, no 413"
            );
        }

        // Path parameters are documented as such.
        for name in ["sku", "order_id", "user_id"] {
            if path.contains(&format!("{{{name}}}")) {
                let params = op["parameters"].as_array().expect("parameters");
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                    "{what}: path parameter {name} undocumented"
                );
            }
        }

        // The Orders POSTs take an optional Idempotency-Key header.
        let idempotency_key = op["parameters"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["in"] == "header" && p["name"] == "Idempotency-Key")
        });
        let is_order_post = method == "POST" && path.starts_with("/v1/orders");
        assert_eq!(
            idempotency_key.is_some(),
            is_order_post,
            "{what}: Idempotency-Key header"
        );
        if let Some(p) = idempotency_key {
            assert_eq!(p["required"], false, "{what}");
            assert_eq!(p["schema"]["maxLength"], 128, "{what}");
        }
    }

    // Query parameters of the lists.
    for (path, names) in [
        ("/v1/products", vec!["after_sku", "limit"]),
        ("/v1/orders", vec!["status", "limit", "before_id"]),
    ] {
        let op = &ops[&("GET".to_string(), path.to_string())];
        let params: BTreeSet<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, names.into_iter().collect(), "GET {path}");
    }

    // Response examples of a product, a cart and an order.
    let schemas = &doc["components"]["schemas"];
    for name in ["ProductView", "CartView", "OrderView"] {
        let examples = schemas[name]["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no examples"));
        assert!(!examples.is_empty(), "{name}");
        let required: BTreeSet<&str> = schemas[name]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for ex in examples {
            let keys: BTreeSet<&str> = ex.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, required, "{name}: the example's fields");
        }
    }

    // Every reference resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(s)) => out.push(s),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(schemas[name].is_object(), "dangling reference {r}");
    }
}

/// The document's examples agree with what the app answers: a live product, cart and order
/// have the same fields as the documented ones.
#[tokio::test]
async fn live_answers_have_the_documented_fields() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let fields = |name: &str| -> BTreeSet<String> {
        schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}"))
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };

    let sku = app.sale_product(10, Some(5)).await;
    let product = app.get(&format!("/v1/products/{sku}"), None).await;
    assert_eq!(keys(&product.body), fields("ProductView"));
    assert_eq!(keys(&product.body["sale"]), fields("SaleView"));

    let (_, token) = app.register("openapi_alice").await;
    let cart = app.try_cart_add(&token, sku, 2).await;
    assert_eq!(cart.status, StatusCode::OK, "{:?}", cart.body);
    assert_eq!(keys(&cart.body), fields("CartView"));
    assert_eq!(keys(&cart.body["items"][0]), fields("CartLine"));

    let order = app.try_checkout(&token).await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    assert_eq!(keys(&order.body), fields("OrderView"));
    assert_eq!(keys(&order.body["items"][0]), fields("OrderItem"));

    let me = app.get("/v1/users/me", Some(&token)).await;
    assert_eq!(keys(&me.body), fields("Me"));

    let err = app.try_checkout(&token).await;
    assert_eq!(err.code(), "cart_empty", "{:?}", err.body);
    assert_eq!(keys(&err.body), fields("ErrorEnvelope"));
}

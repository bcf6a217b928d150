"""Seeds a fresh flashsale service so that the fuzzer reaches real code, not only 404s.

Usage: prepare.py BASE_URL ADMIN_PASSWORD. Prints two lines: an admin's token, then a
customer's. Only the standard library: it runs before (and without) the fuzzer's venv.

The OpenAPI document's examples name sku 1002, warehouse 3 and order 17; schemathesis sends
those examples first, so this makes them exist:
- warehouses 1..=3;
- sku 1001 (no sale window) and sku 1002 (a sale window open from an hour ago for a week, no
  per-customer limit), each with plenty of stock in warehouse 3;
- 17 orders of the customer (ids 1..=17 in the fresh database): a few paid, a few cancelled,
  the rest awaiting payment, order 17 among them;
- two units of sku 1002 in the customer's cart.
"""

import datetime
import json
import secrets
import sys
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None, expect=(200, 201, 204)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if status not in expect:
        sys.exit(f"prepare: {method} {path}: {status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def main():
    base, admin_password = sys.argv[1].rstrip("/"), sys.argv[2]
    admin = call(base, "POST", "/v1/auth/token", {"username": "admin", "password": admin_password})
    admin = admin["access_token"]

    customer_password = "fuzz-" + secrets.token_hex(8)
    call(base, "POST", "/v1/users", {"username": "fuzz-customer", "password": customer_password})
    customer = call(
        base,
        "POST",
        "/v1/auth/token",
        {"username": "fuzz-customer", "password": customer_password},
    )["access_token"]

    warehouses = [
        call(base, "POST", "/v1/warehouses", {"name": f"Fuzz {n}"}, admin)["warehouse_id"]
        for n in (1, 2, 3)
    ]
    if warehouses != [1, 2, 3]:
        sys.exit(f"prepare: expected warehouses 1..=3 in a fresh database, got {warehouses}")

    now = datetime.datetime.now(datetime.timezone.utc)
    for sku, name, price in ((1001, "Cable", 900), (1002, "Headphones", 20000)):
        call(base, "POST", "/v1/products", {"sku": sku, "name": name, "price": price}, admin)
        call(
            base,
            "POST",
            f"/v1/products/{sku}/stock",
            {"warehouse_id": 3, "delta": 1_000_000},
            admin,
        )
    call(
        base,
        "PUT",
        "/v1/products/1002/sale",
        {
            "sale_price": 15000,
            "starts_at": (now - datetime.timedelta(hours=1)).isoformat(),
            "ends_at": (now + datetime.timedelta(days=7)).isoformat(),
            "per_customer_limit": None,
        },
        admin,
    )

    orders = [
        call(base, "POST", "/v1/orders/buy-now", {"sku": 1001 + n % 2, "count": 1}, customer)
        for n in range(17)
    ]
    ids = [o["order_id"] for o in orders]
    if ids[-1] != 17:
        sys.exit(f"prepare: expected orders 1..=17 in a fresh database, got {ids}")
    for order_id in ids[:4]:
        call(base, "POST", f"/v1/orders/{order_id}/pay", {"payment_ref": "fuzz"}, customer)
    for order_id in ids[4:7]:
        call(base, "POST", f"/v1/orders/{order_id}/cancel", None, customer)
    call(base, "POST", "/v1/cart/items", {"sku": 1002, "count": 2}, customer)

    print(admin)
    print(customer)


if __name__ == "__main__":
    main()

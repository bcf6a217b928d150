-- flashsale's schema: the source of truth. Runs on MySQL 8 and MariaDB 10.11.
-- Times are UTC, DATETIME(3); money is BIGINT minor units; counts never go below zero.

CREATE TABLE users (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username      VARCHAR(32)  NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    role          VARCHAR(16)  NOT NULL DEFAULT 'customer',
    created_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_users_username (username),
    CONSTRAINT ck_users_role CHECK (role IN ('customer', 'admin'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE products (
    sku        INT UNSIGNED    NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(200)    NOT NULL,
    price      BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE warehouses (
    id         INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(100) NOT NULL,
    created_at DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uq_warehouses_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- on_hand: units physically there and not yet sold (lowered when a paid order is written back).
CREATE TABLE stock (
    sku          INT UNSIGNED    NOT NULL,
    warehouse_id INT UNSIGNED    NOT NULL,
    on_hand      BIGINT UNSIGNED NOT NULL DEFAULT 0,
    updated_at   DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (sku, warehouse_id),
    KEY ix_stock_warehouse (warehouse_id),
    CONSTRAINT fk_stock_product FOREIGN KEY (sku) REFERENCES products (sku),
    CONSTRAINT fk_stock_warehouse FOREIGN KEY (warehouse_id) REFERENCES warehouses (id)
) ENGINE = InnoDB;

-- At most one sale window per product; the price charged inside it is sale_price.
CREATE TABLE sales (
    sku                INT UNSIGNED    NOT NULL PRIMARY KEY,
    sale_price         BIGINT UNSIGNED NOT NULL,
    starts_at          DATETIME(3)     NOT NULL,
    ends_at            DATETIME(3)     NOT NULL,
    per_customer_limit INT UNSIGNED    NULL,
    updated_at         DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    CONSTRAINT fk_sales_product FOREIGN KEY (sku) REFERENCES products (sku),
    CONSTRAINT ck_sales_window CHECK (ends_at > starts_at)
) ENGINE = InnoDB;

-- Orders are decided in Redis and written here by the outbox worker; ids come from Redis.
CREATE TABLE orders (
    id            BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    user_id       BIGINT UNSIGNED NOT NULL,
    status        VARCHAR(20)     NOT NULL,
    total_price   BIGINT UNSIGNED NOT NULL,
    created_at    DATETIME(3)     NOT NULL,
    expires_at    DATETIME(3)     NOT NULL,
    paid_at       DATETIME(3)     NULL,
    cancelled_at  DATETIME(3)     NULL,
    cancel_reason VARCHAR(16)     NULL,
    payment_ref   VARCHAR(128)    NULL,
    updated_at    DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    KEY ix_orders_user (user_id, id),
    KEY ix_orders_status (status, id),
    CONSTRAINT ck_orders_status CHECK (status IN ('new', 'awaiting_payment', 'failed', 'paid', 'cancelled'))
) ENGINE = InnoDB;

CREATE TABLE order_items (
    order_id   BIGINT UNSIGNED NOT NULL,
    sku        INT UNSIGNED    NOT NULL,
    name       VARCHAR(200)    NOT NULL,
    count      INT UNSIGNED    NOT NULL,
    unit_price BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (order_id, sku),
    KEY ix_order_items_sku (sku),
    CONSTRAINT fk_order_items_order FOREIGN KEY (order_id) REFERENCES orders (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Write-back of orders from the Redis outbox: status history and stock movements, both keyed
-- so that a redelivered event changes nothing the second time.

-- One row per event of an order (created, failed, paid, cancelled, expired): each happens once.
CREATE TABLE order_status_history (
    order_id   BIGINT UNSIGNED NOT NULL,
    event      VARCHAR(16)     NOT NULL,
    status     VARCHAR(20)     NOT NULL,
    at         DATETIME(3)     NOT NULL,
    event_id   VARCHAR(64)     NOT NULL,
    written_at DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (order_id, event)
) ENGINE = InnoDB;

-- Units that left on_hand because an order was paid, per warehouse: applied once per row.
CREATE TABLE stock_movements (
    order_id     BIGINT UNSIGNED NOT NULL,
    sku          INT UNSIGNED    NOT NULL,
    warehouse_id INT UNSIGNED    NOT NULL,
    units        INT UNSIGNED    NOT NULL,
    created_at   DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (order_id, sku, warehouse_id),
    KEY ix_stock_movements_sku (sku)
) ENGINE = InnoDB;

ALTER TABLE orders ADD COLUMN written_at DATETIME(3) NULL;

-- Every admin stock change, noted in the transaction that makes it. Its token tells a commit
-- whose answer was lost (the connection broke during COMMIT) from one that did not happen, so
-- the Redis side of the change can be kept or taken back (src/service/catalog.rs).
CREATE TABLE stock_adjustments (
    token         BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    sku           INT UNSIGNED    NOT NULL,
    warehouse_id  INT UNSIGNED    NOT NULL,
    delta         BIGINT          NOT NULL,
    on_hand_after BIGINT UNSIGNED NOT NULL,
    created_at    DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY ix_stock_adjustments_sku (sku, created_at)
) ENGINE = InnoDB;

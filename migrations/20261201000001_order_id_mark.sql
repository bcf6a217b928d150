-- Order ids are handed out by a Redis counter in blocks: before an id past this mark is handed
-- out, the mark is raised (one row, only upward). Every id ever handed out is at or below it,
-- so after Redis lost its data (or came back from older persistence) the counter restarts
-- above max(this mark, the largest order id) and no id repeats. Runs on MySQL 8 and MariaDB.
CREATE TABLE order_id_mark (
    id         TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    v          BIGINT UNSIGNED  NOT NULL,
    updated_at DATETIME(3)      NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    CONSTRAINT ck_order_id_mark_one_row CHECK (id = 1)
) ENGINE = InnoDB;

INSERT INTO order_id_mark (id, v) VALUES (1, 0);

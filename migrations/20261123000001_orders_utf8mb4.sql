-- orders.payment_ref is free text from the client (any Unicode): the table must not depend on
-- the server's default character set (latin1 on some installations).
ALTER TABLE orders CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- Usernames are one whatever their case (`Alice1` is `alice1`): the service keeps new ones in
-- lower case (src/domain/user.rs), and from here on the column compares case-insensitively, so
-- its unique key refuses a second spelling and a lookup finds an older mixed-case account in
-- any case.
--
-- Accounts created before could differ only in case. Then this migration stops before it has
-- changed anything, and the service does not start: the INSERT below fails with
--   Duplicate entry 'alice1' for key '...usernames_differ_only_in_case_see_OPERATIONS_md'
-- naming one such name (in lower case). docs/OPERATIONS.md, "Usernames that differ only in
-- case", has the query that lists them all and how to resolve them; then start again (the
-- migration runs again from the start: its check is a temporary table, which commits nothing,
-- so the failed run left no half-applied mark).
DROP TEMPORARY TABLE IF EXISTS username_case_check;
CREATE TEMPORARY TABLE username_case_check (
    username VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    CONSTRAINT usernames_differ_only_in_case_see_OPERATIONS_md UNIQUE (username)
);
INSERT INTO username_case_check (username) SELECT LOWER(username) FROM users;
DROP TEMPORARY TABLE username_case_check;

-- utf8mb4_general_ci exists on MySQL 8 and MariaDB 10.11; usernames are ASCII letters, digits
-- and `_ . -`, for which it is exactly case folding.
ALTER TABLE users
    MODIFY username VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL;

-- A user's token version: every access token carries the version its account had when it was
-- issued, and a token whose version is not the account's current one is refused. Deleting the
-- account, changing its role or its password raises it (src/service/accounts.rs), so tokens
-- issued before stop working (src/service/tokens.rs checks them; docs/DESIGN.md, "Tokens").
ALTER TABLE users ADD COLUMN token_version INT UNSIGNED NOT NULL DEFAULT 0;

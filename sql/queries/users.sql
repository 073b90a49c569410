-- Users and API keys.

-- create_user --
-- $1 email. Returns the new row; fails on users_email_key if the email is taken.
INSERT INTO users (email) VALUES ($1) RETURNING id, email, created_at

-- create_api_key --
-- $1 user_id, $2 prefix shown to the user, $3 sha256 of the key.
INSERT INTO api_keys (user_id, prefix, key_hash) VALUES ($1, $2, $3) RETURNING id, prefix, created_at

-- user_for_api_key --
-- $1 sha256 of the presented key. Only keys not revoked.
SELECT u.id, u.email FROM api_keys k JOIN users u ON u.id = k.user_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL

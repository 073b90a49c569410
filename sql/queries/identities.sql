-- External identities: users signed in by an identity provider's JWT.

-- user_for_identity --
-- $1 issuer, $2 subject. The user this identity signs in as, if any.
SELECT user_id FROM user_identities WHERE issuer = $1 AND subject = $2

-- create_identity_user --
-- $1 email (nullable). A new user; with no email when the email is absent or already taken.
-- Returns no row when the email is taken (the caller then creates the user without it).
INSERT INTO users (email) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id

-- create_identity --
-- $1 issuer, $2 subject, $3 user_id, $4 email (nullable). Returns no row when another request
-- created this identity first (it waits for that transaction, then does nothing).
INSERT INTO user_identities (issuer, subject, user_id, email) VALUES ($1, $2, $3, $4)
ON CONFLICT (issuer, subject) DO NOTHING
RETURNING user_id

-- identities_of_user --
-- $1 user_id. Oldest first.
SELECT issuer, subject, email, created_at FROM user_identities WHERE user_id = $1
ORDER BY created_at, issuer, subject

-- get_user --
-- $1 user_id.
SELECT id, email, created_at FROM users WHERE id = $1

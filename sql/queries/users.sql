-- Users and API keys.

-- create_user --
-- $1 email. Returns the new row; fails on users_email_key if the email is taken.
INSERT INTO users (email) VALUES ($1) RETURNING id, email, created_at

-- create_api_key --
-- $1 user_id, $2 prefix shown to the user, $3 sha256 of the key.
INSERT INTO api_keys (user_id, prefix, key_hash) VALUES ($1, $2, $3) RETURNING id, prefix, created_at

-- user_for_api_key --
-- $1 sha256 of the presented key. Only keys not revoked; disabled: the user is disabled. Marks
-- the key used (at most once a minute: this runs on a key cache miss, not on every request).
WITH k AS (
    SELECT k.id, k.last_used_at, u.id AS user_id, u.disabled_at IS NOT NULL AS disabled
    FROM api_keys k JOIN users u ON u.id = k.user_id
    WHERE k.key_hash = $1 AND k.revoked_at IS NULL
), touched AS (
    UPDATE api_keys a SET last_used_at = now()
    FROM k
    WHERE a.id = k.id AND NOT k.disabled
      AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
)
SELECT user_id AS id, disabled FROM k

-- user_disabled --
-- $1 user_id. Whether the user is disabled (NULL: no such user).
SELECT disabled_at IS NOT NULL FROM users WHERE id = $1

-- list_api_keys --
-- A user's keys, newest first, keyset-paginated. $1 user_id, $2 before created_at, $3 before
-- id (both NULL for the first page), $4 limit.
SELECT id, user_id, prefix, created_at, last_used_at, revoked_at
FROM api_keys
WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
ORDER BY created_at DESC, id DESC
LIMIT $4

-- keys_of_user --
-- Every key of a user, newest first (an admin's view). $1 user_id.
SELECT id, user_id, prefix, created_at, last_used_at, revoked_at
FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC

-- add_api_key --
-- A new key for an existing user. $1 user_id, $2 prefix, $3 sha256 of the key. No row: no such
-- user.
INSERT INTO api_keys (user_id, prefix, key_hash)
SELECT id, $2, $3 FROM users WHERE id = $1
RETURNING id, user_id, prefix, created_at, last_used_at, revoked_at

-- revoke_api_key --
-- Revoke a key (again is a no-op that still answers it). $1 key id, $2 user_id (NULL: any
-- user's, for an admin). Returns the key, its hash and whether this call revoked it; no row: no
-- such key (of that user).
WITH k AS (
    SELECT id, revoked_at FROM api_keys
    WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2) FOR UPDATE
), revoked AS (
    UPDATE api_keys a SET revoked_at = now()
    FROM k WHERE a.id = k.id AND k.revoked_at IS NULL
    RETURNING a.id
)
SELECT a.id, a.user_id, a.prefix, a.created_at, a.last_used_at,
       coalesce(a.revoked_at, now()) AS revoked_at, a.key_hash,
       EXISTS (SELECT 1 FROM revoked) AS changed
FROM api_keys a JOIN k ON k.id = a.id

-- find_users --
-- Users, newest first, keyset-paginated; $1 email (case-insensitive exact match, NULL: all),
-- $2 before created_at, $3 before id (both NULL for the first page), $4 limit.
SELECT u.id, u.email, u.created_at, u.disabled_at, u.plan, a.balance, a.reserved
FROM users u LEFT JOIN credit_accounts a ON a.user_id = u.id
WHERE ($1::text IS NULL OR lower(u.email) = lower($1))
  AND ($2::timestamptz IS NULL OR (u.created_at, u.id) < ($2, $3))
ORDER BY u.created_at DESC, u.id DESC
LIMIT $4

-- user_usage --
-- Whether a user is disabled and what they have used: jobs by status, credits captured in
-- all (their library bytes are user_storage's used_bytes). $1 user_id.
SELECT
    (SELECT disabled_at FROM users WHERE id = $1) AS disabled_at,
    (SELECT coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
     FROM (SELECT status, count(*) AS n FROM generation_jobs WHERE user_id = $1
           GROUP BY status) s) AS jobs,
    (SELECT coalesce(-sum(reserved_delta), 0)::bigint FROM credit_ledger
     WHERE user_id = $1 AND kind = 'capture') AS credits_spent

-- set_user_disabled --
-- $1 user_id: disable ($2 true) or enable ($2 false) the user. Returns whether they were disabled before; no
-- row: no such user. Locks the user's account row first, so a reservation in flight either
-- commits before this (and its job is then canceled with the others) or sees the disable.
WITH account AS (
    SELECT user_id FROM credit_accounts WHERE user_id = $1 FOR UPDATE
), before AS (
    SELECT id, disabled_at IS NOT NULL AS was_disabled FROM users WHERE id = $1 FOR UPDATE
), changed AS (
    UPDATE users u
    SET disabled_at = CASE WHEN $2 THEN coalesce(u.disabled_at, now()) END
    FROM before WHERE u.id = before.id
    RETURNING u.id
)
SELECT before.was_disabled, (SELECT count(*) FROM account) AS locked
FROM before

-- cancel_user_queued_jobs --
-- Cancel every queued job of a user (a disable) and refund each hold, in one statement.
-- $1 user_id. One row per job canceled: its id, model and what was refunded.
WITH canceled AS (
    UPDATE generation_jobs
    SET status = 'canceled', finished_at = now(), updated_at = now(),
        cancel_requested_at = coalesce(cancel_requested_at, now()),
        error_code = 'canceled', error_message = 'The account was disabled.'
    WHERE user_id = $1 AND status = 'queued'
    RETURNING id, model, reservation_id
)
SELECT c.id, c.model,
       coalesce((SELECT s.refunded FROM genq_settle(c.reservation_id, 0) s), 0)::bigint
           AS refunded
FROM canceled c

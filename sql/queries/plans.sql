-- Plans and their periodic grants (shared/plans.py).

-- upsert_plan --
-- $1 name, $2 description, $3 credits_per_period, $4 period, $5 priority_tier, $6 max_running,
-- $7 submits_per_minute, $8 storage_quota_bytes.
INSERT INTO plans (name, description, credits_per_period, period, priority_tier, max_running,
                   submits_per_minute, storage_quota_bytes, enabled, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true, now())
ON CONFLICT (name) DO UPDATE SET
    description = excluded.description, credits_per_period = excluded.credits_per_period,
    period = excluded.period, priority_tier = excluded.priority_tier,
    max_running = excluded.max_running, submits_per_minute = excluded.submits_per_minute,
    storage_quota_bytes = excluded.storage_quota_bytes, enabled = true, updated_at = now()

-- disable_plans_not_in --
-- Plans dropped from the files stay (users are on them) but grant nothing and cannot be
-- assigned. $1 text[] names.
UPDATE plans SET enabled = false, updated_at = now() WHERE enabled AND NOT (name = ANY($1::text[]))

-- get_plan --
-- $1 name. Enabled plans only.
SELECT name, description, credits_per_period, period, priority_tier, max_running,
       submits_per_minute, storage_quota_bytes
FROM plans WHERE name = $1 AND enabled

-- set_user_plan --
-- $1 user id, $2 plan name (enabled: checked by the caller). No row: no such user.
UPDATE users SET plan = $2 WHERE id = $1 RETURNING id

-- set_user_max_running --
-- $1 user id, $2 their own running cap (NULL: their plan's).
UPDATE users SET max_running = $2 WHERE id = $1

-- user_with_plan --
-- $1 user id: the user, their plan and their account.
SELECT u.id, u.email, u.created_at, u.max_running AS user_max_running, p.name,
       p.description, p.credits_per_period, p.period, p.priority_tier, p.max_running,
       p.submits_per_minute, p.storage_quota_bytes, a.balance, a.reserved
FROM users u JOIN plans p ON p.name = u.plan
LEFT JOIN credit_accounts a ON a.user_id = u.id
WHERE u.id = $1

-- user_submit_rates --
-- $1 user ids (uuid[]): each one's plan's submissions per minute (NULL: the server's setting).
SELECT u.id, p.submits_per_minute FROM users u JOIN plans p ON p.name = u.plan
WHERE u.id = ANY($1::uuid[])

-- users_due_plan_grant --
-- Users on an enabled plan that grants credits whose ledger has no grant yet for the period
-- $1 (timestamptz, "now") is in, by user id after $2; $3 limit.
SELECT u.id AS user_id, p.name AS plan, p.period, p.credits_per_period
FROM users u JOIN plans p ON p.name = u.plan
WHERE p.enabled AND p.credits_per_period > 0 AND u.id > $2
  AND NOT EXISTS (
      SELECT 1 FROM credit_ledger l
      WHERE l.user_id = u.id
        AND l.idempotency_key = 'plan:' || p.name || ':'
            || to_char(date_trunc(p.period, $1::timestamptz AT TIME ZONE 'UTC'), 'YYYY-MM-DD'))
ORDER BY u.id
LIMIT $3

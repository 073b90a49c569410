-- Credit ledger: grant and settle (functions in 0001_schema.sql; reserving happens inside
-- genq_submit) and reads.

-- ledger_grant --
-- Add credits. $1 user_id, $2 amount (> 0), $3 idempotency_key (nullable), $4 reason.
SELECT entry_id, balance_after, replayed FROM genq_grant($1, $2, $3, $4)

-- ledger_settle --
-- Settle a reservation exactly once. $1 reservation_id, $2 amount to capture (0 = refund all).
SELECT reservation_id, user_id, status, captured, refunded, balance_after, replayed
FROM genq_settle($1, $2)

-- get_account --
-- $1 user_id.
SELECT user_id, balance, reserved, updated_at FROM credit_accounts WHERE user_id = $1

-- create_account --
-- $1 user_id. Does nothing if the account exists.
INSERT INTO credit_accounts (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING

-- get_reservation --
-- $1 reservation_id.
SELECT id, user_id, job_id, amount, status, captured, refunded, created_at, expires_at, settled_at
FROM credit_reservations WHERE id = $1

-- list_ledger_entries --
-- Newest first, keyset-paginated. $1 user_id, $2 before id (NULL for the first page), $3 limit.
SELECT id, kind, amount, reserved_delta, balance_after, reservation_id, job_id, reason, created_at
FROM credit_ledger
WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3

-- ledger_sums --
-- For invariant checks. $1 user_id.
SELECT coalesce(sum(amount), 0)::bigint AS amount, coalesce(sum(reserved_delta), 0)::bigint AS reserved
FROM credit_ledger WHERE user_id = $1

-- ledger_adjust --
-- An admin's correction (genq_adjust in 0026_operations.sql): add $2 (either sign, never 0)
-- to the spendable balance as kind `adjust`. $1 user_id, $3 idempotency_key (nullable),
-- $4 reason, $5 job_id (nullable).
SELECT entry_id, balance_before, balance_after, replayed FROM genq_adjust($1, $2, $3, $4, $5)

-- lock_account --
-- $1 user_id. The account, locked until the transaction ends.
SELECT user_id, balance, reserved FROM credit_accounts WHERE user_id = $1 FOR UPDATE

-- job_captured --
-- What a job of the user spent: its status and the credits captured by its reservation.
-- $1 job_id, $2 user_id (NULL: any user's). No row: no such job.
SELECT j.id, j.user_id, j.model, j.status, coalesce(r.captured, 0)::bigint AS captured
FROM generation_jobs j LEFT JOIN credit_reservations r ON r.id = j.reservation_id
WHERE j.id = $1 AND ($2::uuid IS NULL OR j.user_id = $2)

-- reservations_settled --
-- How reservations were settled (the worker's credit counters). $1 reservation ids (uuid[]).
SELECT id, status, captured, refunded FROM credit_reservations
WHERE id = ANY($1::uuid[]) AND status <> 'open'

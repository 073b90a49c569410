-- The intake API: job submission with Stripe-style idempotency, reads scoped to one user,
-- cancellation, and workspace assets.

-- claim_idempotency_key --
-- Claim an Idempotency-Key for a new job. Returns a row when this request owns the key (new, or
-- the old record is past its TTL); no row when another request holds or already used it. A racer
-- waits here on the primary key until the holder's transaction ends.
-- $1 user_id, $2 key, $3 request_hash, $4 ttl in seconds.
INSERT INTO idempotency_keys AS k (user_id, key, request_hash)
VALUES ($1, $2, $3)
ON CONFLICT (user_id, key) DO UPDATE
    SET request_hash = excluded.request_hash, job_id = NULL, created_at = now()
    WHERE k.created_at < now() - make_interval(secs => $4::double precision)
RETURNING k.key

-- get_idempotency_key --
-- $1 user_id, $2 key.
SELECT request_hash, job_id, created_at FROM idempotency_keys WHERE user_id = $1 AND key = $2

-- insert_job --
-- A queued job, linked to its idempotency key when there is one (NULL: nothing to link).
-- $1 id, $2 user_id, $3 model, $4 provider, $5 prompt, $6 num_outputs, $7 params (jsonb),
-- $8 seed, $9 price_per_output, $10 reservation_id, $11 max_attempts, $12 idempotency key.
WITH job AS (
    INSERT INTO generation_jobs
        (id, user_id, model, provider, prompt, num_outputs, params, seed, price_per_output,
         reservation_id, max_attempts)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    RETURNING id, created_at
), link AS (
    UPDATE idempotency_keys SET job_id = $1 WHERE user_id = $2 AND key = $12
)
SELECT id, created_at FROM job

-- mark_job_enqueued --
-- $1 job_id. Only a job still queued: a fast worker may already have claimed it.
-- enqueued_at is a hint (the job is already committed and in Redis), so this write does not wait
-- for its WAL flush: asynchronous commit for this statement's own transaction only. If a
-- Postgres crash loses it, the job keeps enqueued_at NULL, and the sweeper and replays only
-- re-enqueue it, which is idempotent by job id.
UPDATE generation_jobs SET enqueued_at = now(), updated_at = now()
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE id = $1 AND status = 'queued'
RETURNING enqueued_at

-- get_job --
-- One job of one user, with its reservation's settlement. $1 job_id, $2 user_id.
SELECT j.id, j.status, j.model, j.prompt, j.num_outputs, j.params, j.seed, j.price_per_output,
       j.error_code, j.error_message, j.created_at, j.started_at, j.finished_at,
       j.enqueued_at, j.cancel_requested_at, r.amount AS reserved, r.captured, r.refunded
FROM generation_jobs j
LEFT JOIN credit_reservations r ON r.id = j.reservation_id
WHERE j.id = $1 AND j.user_id = $2

-- list_jobs --
-- A user's jobs, newest first, keyset-paginated on (created_at, id).
-- $1 user_id, $2 status (NULL: any), $3 cursor created_at and $4 cursor id (NULL: first page),
-- $5 limit.
SELECT j.id, j.status, j.model, j.prompt, j.num_outputs, j.params, j.seed, j.price_per_output,
       j.error_code, j.error_message, j.created_at, j.started_at, j.finished_at,
       j.enqueued_at, j.cancel_requested_at, r.amount AS reserved, r.captured, r.refunded
FROM generation_jobs j
LEFT JOIN credit_reservations r ON r.id = j.reservation_id
WHERE j.user_id = $1
  AND ($2::text IS NULL OR j.status = $2)
  AND ($3::timestamptz IS NULL OR (j.created_at, j.id) < ($3, $4::uuid))
ORDER BY j.created_at DESC, j.id DESC
LIMIT $5

-- cancel_queued_job --
-- Cancel a job nobody has claimed yet. No row: it was not queued (any more).
-- $1 job_id, $2 user_id.
UPDATE generation_jobs
SET status = 'canceled', finished_at = now(), updated_at = now(),
    cancel_requested_at = coalesce(cancel_requested_at, now())
WHERE id = $1 AND user_id = $2 AND status = 'queued'
RETURNING reservation_id

-- request_job_cancel --
-- Ask the worker running the job to stop; it settles the job. No row: it was not running.
-- $1 job_id, $2 user_id.
UPDATE generation_jobs
SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
WHERE id = $1 AND user_id = $2 AND status = 'running'
RETURNING id

-- list_job_assets --
-- Unexpired outputs of some of a user's jobs. $1 user_id, $2 job ids (uuid[]).
SELECT id, job_id, asset_index, asset_type, mime_type, file_size_bytes, width, height,
       duration_seconds, generation_seed, model_used, created_at, expires_at
FROM workspace_assets
WHERE user_id = $1 AND job_id = ANY($2::uuid[]) AND expires_at > now()
ORDER BY job_id, asset_index

-- get_asset --
-- One unexpired asset of one user. $1 asset_id, $2 user_id.
SELECT id, job_id, asset_index, asset_type, mime_type, file_size_bytes, width, height,
       duration_seconds, generation_seed, model_used, created_at, expires_at, temp_storage_path
FROM workspace_assets
WHERE id = $1 AND user_id = $2 AND expires_at > now()

-- list_assets --
-- A user's unexpired assets, newest first, keyset-paginated on (created_at, id).
-- $1 user_id, $2 job_id (NULL: any), $3 cursor created_at and $4 cursor id (NULL: first page),
-- $5 limit.
SELECT id, job_id, asset_index, asset_type, mime_type, file_size_bytes, width, height,
       duration_seconds, generation_seed, model_used, created_at, expires_at
FROM workspace_assets
WHERE user_id = $1 AND expires_at > now()
  AND ($2::uuid IS NULL OR job_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5

-- get_ledger_entry --
-- $1 entry id, $2 user_id.
SELECT id, kind, amount, reserved_delta, balance_after, reservation_id, job_id, reason, created_at
FROM credit_ledger WHERE id = $1 AND user_id = $2

-- get_job_status --
-- $1 job_id, $2 user_id.
SELECT status FROM generation_jobs WHERE id = $1 AND user_id = $2

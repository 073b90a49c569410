-- The intake API: job submission with Stripe-style idempotency, reads scoped to one user,
-- cancellation, and workspace assets.

-- submit_jobs --
-- Accept jobs in one round trip and one transaction (genq_submit_batch in
-- 0007_submit_batch.sql): for each item, claim its Idempotency-Key or find the job it made
-- (replayed = true, the job columns NULL), check the model, reserve the price, insert the queued
-- job. A refusal writes nothing for its item and comes back in the error_* columns (SQLSTATE,
-- named constraint, detail, message). One row per item, matched by "item".
-- $1 items (jsonb: [{item, job, user_id, model, prompt, num_outputs, params, seed, key,
-- request_hash}, ...]), $2 max_attempts, $3 key TTL seconds, $4 reservation TTL seconds.
SELECT item, job_id, replayed, created_at, params, price_per_output, reserved, error_state,
       error_constraint, error_detail, error_message
FROM genq_submit_batch($1, $2, $3, $4)

-- mark_jobs_enqueued --
-- $1 job ids (uuid[]). Only jobs still queued: a fast worker may already have claimed one.
-- enqueued_at is a hint (the jobs are already committed and in Redis), so this write does not
-- wait for its WAL flush: asynchronous commit for this statement's own transaction only. If a
-- Postgres crash loses it, the jobs keep enqueued_at NULL, and the sweeper and replays only
-- re-enqueue them, which is idempotent by job id.
UPDATE generation_jobs SET enqueued_at = now(), updated_at = now()
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE id = ANY($1::uuid[]) AND status = 'queued'
RETURNING id, enqueued_at

-- get_job --
-- One job of one user as the API answers it (job_responses, 0017). $1 job_id, $2 user_id.
SELECT * FROM job_responses WHERE id = $1 AND user_id = $2

-- get_new_jobs --
-- Jobs just accepted, as the API answers them (job_responses, 0017), read for a batch of
-- submissions at once. $1 job ids (uuid[]), $2 their users (uuid[], the same order): the caller
-- keeps a row only for its own (job, user) pair.
SELECT * FROM job_responses WHERE id = ANY($1::uuid[]) AND user_id = ANY($2::uuid[])

-- list_jobs --
-- A user's jobs as the API answers them (job_responses, 0017), newest first, keyset-paginated
-- on (created_at, id). $1 user_id, $2 status (NULL: any), $3 cursor created_at and $4 cursor id
-- (NULL: first page), $5 limit.
SELECT * FROM job_responses
WHERE user_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
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
-- Unexpired outputs of some jobs of some users (the API: one user's; the webhook deliveries:
-- the jobs of the deliveries one claim took, each with its own user). $1 user ids (uuid[]),
-- $2 job ids (uuid[]).
SELECT id, job_id, asset_index, asset_type, mime_type, file_size_bytes, width, height,
       duration_seconds, fps, generation_seed, model_used, created_at, expires_at,
       (SELECT coalesce(jsonb_object_agg(v.kind, jsonb_build_object(
                'width', v.width, 'height', v.height, 'mime_type', v.mime_type,
                'storage_key', v.storage_key)), '{}'::jsonb)
        FROM asset_variants v WHERE v.asset_id = workspace_assets.id) AS variants, storage_key
FROM workspace_assets
WHERE user_id = ANY($1::uuid[]) AND job_id = ANY($2::uuid[]) AND expires_at > now()
ORDER BY job_id, asset_index

-- get_asset --
-- One unexpired asset of one user. $1 asset_id, $2 user_id.
SELECT id, job_id, asset_index, asset_type, mime_type, file_size_bytes, width, height,
       duration_seconds, fps, generation_seed, model_used, created_at, expires_at,
       (SELECT coalesce(jsonb_object_agg(v.kind, jsonb_build_object(
                'width', v.width, 'height', v.height, 'mime_type', v.mime_type,
                'storage_key', v.storage_key)), '{}'::jsonb)
        FROM asset_variants v WHERE v.asset_id = workspace_assets.id) AS variants, storage_key
FROM workspace_assets
WHERE id = $1 AND user_id = $2 AND expires_at > now()

-- get_asset_variant --
-- One variant of one unexpired asset of one user. $1 asset_id, $2 user_id, $3 kind.
SELECT v.asset_id, v.kind, v.mime_type, v.storage_key
FROM asset_variants v
JOIN workspace_assets w ON w.id = v.asset_id
WHERE w.id = $1 AND w.user_id = $2 AND w.expires_at > now() AND v.kind = $3

-- list_assets --
-- A user's unexpired assets, newest first, keyset-paginated on (created_at, id).
-- $1 user_id, $2 job_id (NULL: any), $3 cursor created_at and $4 cursor id (NULL: first page),
-- $5 limit.
SELECT id, job_id, asset_index, asset_type, mime_type, file_size_bytes, width, height,
       duration_seconds, fps, generation_seed, model_used, created_at, expires_at,
       (SELECT coalesce(jsonb_object_agg(v.kind, jsonb_build_object(
                'width', v.width, 'height', v.height, 'mime_type', v.mime_type,
                'storage_key', v.storage_key)), '{}'::jsonb)
        FROM asset_variants v WHERE v.asset_id = workspace_assets.id) AS variants, storage_key
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

-- dispatch_jobs --
-- The per-user running cap (see 0016_fair_sharing.sql): mark the users' oldest waiting jobs
-- dispatched, up to the cap. $1 user ids (uuid[]), $2 cap.
SELECT job_id, user_id, enqueued_at, priority_tier FROM genq_dispatch($1::uuid[], $2)

-- undispatch_jobs --
-- Jobs dispatched whose enqueue failed wait again (the next dispatch or sweep retries them).
-- $1 job ids (uuid[]).
UPDATE generation_jobs SET enqueued_at = NULL, updated_at = now()
WHERE id = ANY($1::uuid[]) AND status = 'queued'

-- waiting_users --
-- Users with jobs waiting for a dispatch, their oldest waiting job older than $1 seconds (a
-- younger one may still be in the intake's hands); $2 limit.
SELECT user_id FROM generation_jobs
WHERE status = 'queued' AND enqueued_at IS NULL
  AND created_at < now() - make_interval(secs => $1)
GROUP BY user_id
ORDER BY min(created_at)
LIMIT $2

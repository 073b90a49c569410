-- The generation worker: claim, lease, provider id, finalize, recovery.
-- Every write after the claim is fenced by (status = 'running', attempt = the claimed attempt):
-- a worker whose job was taken back by another claim changes nothing.

-- claim_jobs --
-- Take jobs (group commit: the claims waiting in this worker, one statement): each one queued,
-- or running with an expired lease (its worker died or handed it back). A job not in the
-- result was not claimable. Also returns the model's provider ref, timeout, params schema,
-- revision, base URL, key variable and limits (NULL if the model is unknown; the fallback's
-- once the job moved to it, ran_model) and the model's fallback, which the attempt needs next, so it does not need a
-- second round trip. queued_s: seconds since the job was submitted (its queue wait, on a
-- first attempt).
-- $1 job ids (uuid[], no duplicates), $2 lease_owner (worker id), $3 lease seconds (float).
WITH claimed AS (
    UPDATE generation_jobs j
    SET status = 'running',
        attempt = j.attempt + 1,
        lease_owner = $2,
        lease_expires_at = now() + make_interval(secs => $3),
        started_at = coalesce(j.started_at, now()),
        outputs_staged = 0,
        updated_at = now()
    WHERE j.id = ANY($1::uuid[])
      AND (j.status = 'queued' OR (j.status = 'running' AND j.lease_expires_at < now()))
    RETURNING j.id, j.user_id, j.model, j.provider, j.prompt, j.num_outputs, j.params, j.seed,
              j.price_per_output, j.reservation_id, j.provider_prediction_id, j.attempt,
              j.max_attempts, j.cancel_requested_at, j.ran_model,
              extract(epoch FROM now() - j.created_at)::float8 AS queued_s
)
SELECT c.*, m.ref AS model_ref, m.timeout_s AS model_timeout_s,
       m.params_schema AS model_params_schema, m.revision AS model_revision,
       m.base_url AS model_base_url, m.api_key_env AS model_api_key_env,
       f.fallback AS model_fallback, m.max_concurrency AS model_max_concurrency,
       m.max_per_minute AS model_max_per_minute
FROM claimed c
LEFT JOIN models m ON m.key = coalesce(c.ran_model, c.model)
LEFT JOIN models f ON f.key = c.model

-- get_job_state --
-- Why a claim found nothing. $1 job_id.
SELECT id, status, lease_owner, lease_expires_at,
       extract(epoch FROM (lease_expires_at - now()))::float8 AS lease_left_s
FROM generation_jobs WHERE id = $1

-- renew_leases --
-- The heartbeat of every job this worker holds, in one statement: extend each lease and report
-- cancel requests. $1 job ids, $2 their attempts, $3 lease seconds (float), $4 lease_owner.
-- A row per job still held: renewed, or (renewed false) skipped because another transaction
-- holds its row at this moment (a final write or a cancel request in progress), to be renewed
-- at the next beat; the row's committed cancel_requested_at either way. A job with no row is
-- no longer this attempt's: its lease was lost, or it has ended. Skipping locked rows means
-- the statement never waits on, or deadlocks with, a batch that locks the same jobs in
-- another order.
WITH held AS (
    SELECT h.id, h.attempt FROM unnest($1::uuid[], $2::integer[]) AS h(id, attempt)
),
locked AS (
    SELECT j.id
    FROM generation_jobs j JOIN held h ON h.id = j.id AND h.attempt = j.attempt
    WHERE j.status = 'running' AND j.lease_owner = $4
    FOR NO KEY UPDATE OF j SKIP LOCKED
),
renewed AS (
    UPDATE generation_jobs j
    SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
    FROM locked l
    WHERE j.id = l.id
    RETURNING j.id, j.cancel_requested_at
)
SELECT id, cancel_requested_at, true AS renewed FROM renewed
UNION ALL
SELECT j.id, j.cancel_requested_at, false
FROM generation_jobs j JOIN held h ON h.id = j.id AND h.attempt = j.attempt
WHERE j.status = 'running' AND j.lease_owner = $4
  AND NOT EXISTS (SELECT 1 FROM locked l WHERE l.id = j.id)

-- release_lease --
-- Hand a running job back (shutdown, retry): expire the lease now, keep the prediction id.
-- $1 job_id, $2 attempt.
UPDATE generation_jobs
SET lease_expires_at = now(), lease_owner = NULL, updated_at = now()
WHERE id = $1 AND status = 'running' AND attempt = $2

-- set_prediction_id --
-- Record the provider's id before waiting on it. $1 job_id, $2 attempt, $3 prediction id.
-- No row: the lease was lost and the caller must not go on.
UPDATE generation_jobs
SET provider_prediction_id = $3, updated_at = now()
WHERE id = $1 AND status = 'running' AND attempt = $2
RETURNING id

-- set_provider_queue_position --
-- Where the job waits in the provider's own queue (NULL: not queued there any more).
-- $1 job_id, $2 attempt, $3 position (nullable). No row: the lease was lost.
UPDATE generation_jobs
SET provider_queue_position = $3, updated_at = now()
WHERE id = $1 AND status = 'running' AND attempt = $2
  AND provider_queue_position IS DISTINCT FROM $3
RETURNING id

-- count_output_staged --
-- One more output of the running attempt is in storage (a job.output event, 0024_job_events.sql).
-- $1 job_id, $2 attempt. No row: the lease was lost.
UPDATE generation_jobs
SET outputs_staged = outputs_staged + 1, updated_at = now()
WHERE id = $1 AND status = 'running' AND attempt = $2
RETURNING outputs_staged

-- get_fallback_model --
-- What a job needs to move to its model's fallback. $1 model key.
SELECT key, provider, ref, timeout_s, params_schema, revision, base_url, api_key_env,
       price_per_output, price_tiers, price_per_second, enabled, max_concurrency, max_per_minute
FROM models WHERE key = $1

-- move_to_fallback --
-- The job runs on the fallback model from now on, at its price (the reservation made at the
-- primary's price is settled at this one), with no provider id yet. Only once: ran_model was
-- NULL. No row: the lease was lost or the job already moved.
-- $1 job_id, $2 attempt, $3 fallback key, $4 its provider, $5 price per output, $6 price per
-- second (nullable).
UPDATE generation_jobs
SET ran_model = $3, provider = $4, price_per_output = $5, price_per_second = $6,
    provider_prediction_id = NULL, provider_queue_position = NULL, updated_at = now()
WHERE id = $1 AND status = 'running' AND attempt = $2 AND ran_model IS NULL
RETURNING id

-- finalize_job --
-- The terminal transition, the asset rows (with their variants) and the settlement in one
-- statement (genq_finalize, newest in 0038_finalize_fewer_statements.sql). status: the status
-- written, which is `canceled` (all refunded, no assets) whatever $3 was if a cancel was
-- requested before this write; NULL: this attempt no longer holds the job, nothing written.
-- $1 job_id, $2 attempt, $3 status (succeeded | failed | canceled), $4 outputs_made,
-- $5 error_code (nullable), $6 error_message (nullable), $7 assets (jsonb array, empty unless
-- succeeded; each with fps and variants), $8 asset TTL seconds.
SELECT genq_finalize($1, $2, $3, $4, $5, $6, $7, $8) AS status

-- finalize_jobs --
-- finalize_job for many jobs in one statement and one transaction (group commit:
-- genq_finalize_batch, newest in 0038_finalize_fewer_statements.sql); any error writes
-- nothing for any of them. One row per item, with the status written (NULL: not held).
-- $1 items (jsonb: [{item, job, user_id, attempt, status, made, error_code, error_message,
-- assets}, ...]), $2 asset TTL seconds.
SELECT item, status FROM genq_finalize_batch($1, $2)

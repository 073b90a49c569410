-- Scheduled maintenance: asset expiry, lost and stuck jobs, stale reservations, retention.

-- lock_expired_assets --
-- A batch of expired assets with their variants' storage keys, locked so a concurrent cleanup
-- skips them. $1 batch size.
SELECT a.id, a.storage_key,
       ARRAY(SELECT v.storage_key FROM asset_variants v WHERE v.asset_id = a.id) AS variant_keys
FROM workspace_assets a
WHERE a.expires_at <= now()
ORDER BY a.expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED

-- delete_assets --
-- $1 uuid[] asset ids (already locked by this transaction); their variant rows go by cascade.
DELETE FROM workspace_assets WHERE id = ANY($1::uuid[])

-- requeue_cutoff --
-- Jobs last enqueued before this instant count as lost: now minus $1 seconds. Taken once per
-- run, so a job the run itself re-enqueues is not picked up again by its next batch.
SELECT now() - make_interval(secs => $1)

-- lost_queued_jobs --
-- Queued jobs last enqueued (or created) before $1 (timestamptz, from requeue_cutoff), oldest
-- first, with how long they have waited; $2 limit. Locked so two sweeps do not both re-enqueue
-- one job. $3: include jobs never enqueued (false with a per-user running cap: those wait for
-- a dispatch, not for a requeue).
SELECT id,
       extract(epoch FROM now() - coalesce(enqueued_at, created_at))::float8 AS waited_s
FROM generation_jobs
WHERE status = 'queued'
  AND ($3 OR enqueued_at IS NOT NULL)
  AND coalesce(enqueued_at, created_at) < $1
ORDER BY created_at
LIMIT $2
FOR UPDATE SKIP LOCKED

-- unenqueued_jobs --
-- Queued jobs never enqueued (Redis failed when the intake tried), older than $1 seconds (a
-- younger one may still be in the intake's hands), oldest first; $2 limit. Locked so two
-- sweeps do not both enqueue one job.
SELECT id
FROM generation_jobs
WHERE status = 'queued'
  AND enqueued_at IS NULL
  AND created_at < now() - make_interval(secs => $1)
ORDER BY created_at
LIMIT $2
FOR UPDATE SKIP LOCKED

-- mark_enqueued --
-- $1 uuid[] job ids.
UPDATE generation_jobs SET enqueued_at = now(), updated_at = now() WHERE id = ANY($1::uuid[])

-- lock_expired_leases --
-- Running jobs whose worker stopped renewing the lease. $1 limit.
SELECT id, attempt, max_attempts, reservation_id FROM generation_jobs
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED

-- requeue_job --
-- Hand a running job back to the queue; its provider prediction id is kept so the next attempt
-- resumes it. $1 job id.
UPDATE generation_jobs
SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, enqueued_at = now(),
    updated_at = now()
WHERE id = $1 AND status = 'running'

-- fail_job --
-- End a non-terminal job as failed. $1 job id, $2 error code, $3 error message.
-- Returns the reservation to refund (none if the job was already terminal).
UPDATE generation_jobs
SET status = 'failed', error_code = $2, error_message = $3, finished_at = now(),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND status IN ('queued', 'running')
RETURNING reservation_id

-- stale_reservations --
-- Open reservations past their deadline (not locked: the caller locks job, then reservation).
-- $1 limit.
SELECT id, job_id FROM credit_reservations
WHERE status = 'open' AND expires_at < now()
ORDER BY expires_at
LIMIT $1

-- known_storage_keys --
-- Which of these storage keys an asset, asset variant, library item or library variant row
-- points at. $1 text[] keys.
SELECT storage_key FROM workspace_assets WHERE storage_key = ANY($1::text[])
UNION ALL
SELECT storage_key FROM asset_variants WHERE storage_key = ANY($1::text[])
UNION ALL
SELECT storage_key FROM user_library WHERE storage_key = ANY($1::text[])
UNION ALL
SELECT storage_key FROM library_variants WHERE storage_key = ANY($1::text[])

-- lock_job --
-- $1 job id.
SELECT id, status FROM generation_jobs WHERE id = $1 FOR UPDATE

-- archive_old_jobs --
-- Copy terminal jobs finished more than $1 seconds ago, with no assets left, into the archive
-- and delete them. $2 limit. Returns how many moved.
WITH old AS (
    SELECT j.id FROM generation_jobs j
    WHERE j.finished_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM workspace_assets a WHERE a.job_id = j.id)
    ORDER BY j.finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), moved AS (
    INSERT INTO generation_jobs_archive (id, user_id, finished_at, job)
    SELECT j.id, j.user_id, j.finished_at, to_jsonb(j) FROM generation_jobs j JOIN old USING (id)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
DELETE FROM generation_jobs j USING moved WHERE j.id = moved.id

-- delete_old_jobs --
-- Delete terminal jobs finished more than $1 seconds ago with no assets left. $2 limit.
WITH old AS (
    SELECT j.id FROM generation_jobs j
    WHERE j.finished_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM workspace_assets a WHERE a.job_id = j.id)
    ORDER BY j.finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM generation_jobs j USING old WHERE j.id = old.id

-- queue_depth --
-- For /metrics: jobs queued and not yet claimed, and the age of the oldest (0 when none), from
-- the partial index on queued jobs. No parameters.
SELECT count(*)::bigint AS queued,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_s
FROM generation_jobs WHERE status = 'queued'

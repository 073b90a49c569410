-- Live job events (0024_job_events.sql): what the API's streams read, and the scheduler's
-- retention and queue measurements.

-- events_head --
-- The highest id a reader may have read now: every event up to it is visible or never will be
-- (0034_job_events_xid_order.sql), and every later event has a higher id.
SELECT genq_job_events_horizon() - 1 AS head

-- events_after --
-- Which events came after $1 (id, whose), below the readers' horizon: the API process keeps the
-- ones its streams want. $2 limit.
SELECT id, user_id, job_id FROM job_events
WHERE id > $1 AND id < genq_job_events_horizon()
ORDER BY id LIMIT $2

-- read_events --
-- Events by id, each with its job as the API answered it at the event (a job_responses row).
-- $1 event ids (bigint[]).
SELECT e.id AS event_id, e.type AS event_type, r.*
FROM job_events e
CROSS JOIN LATERAL jsonb_populate_record(NULL::job_responses, e.data) r
WHERE e.id = ANY($1::bigint[])
ORDER BY e.id

-- list_user_events --
-- A user's events after $2 below the readers' horizon, oldest first (a stream's start or
-- resume); $3 one job's only (NULL: all); $4 limit. $1 user_id.
SELECT e.id AS event_id, e.type AS event_type, r.*
FROM job_events e
CROSS JOIN LATERAL jsonb_populate_record(NULL::job_responses, e.data) r
WHERE e.user_id = $1 AND e.id > $2 AND e.id < genq_job_events_horizon()
  AND ($3::uuid IS NULL OR e.job_id = $3)
ORDER BY e.id
LIMIT $4

-- purge_job_events --
-- Delete events older than $1 seconds among the $2 oldest. Returns how many went.
WITH oldest AS (
    SELECT id, created_at FROM job_events ORDER BY id LIMIT $2
)
DELETE FROM job_events e USING oldest
WHERE e.id = oldest.id AND oldest.created_at < clock_timestamp() - make_interval(secs => $1)

-- queue_head --
-- The queue's lowest number still queued (none queued: the next number to be taken), whether
-- any job is queued, and the time of the sample.
SELECT coalesce(
           (SELECT min(queue_seq) FROM generation_jobs WHERE status = 'queued'),
           (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END
            FROM generation_jobs_queue_seq)) AS head_seq,
       EXISTS (SELECT 1 FROM generation_jobs WHERE status = 'queued') AS queued,
       clock_timestamp() AS sampled_at

-- get_queue_stats --
SELECT head_seq, sampled_at, head_per_s FROM queue_stats

-- set_queue_stats --
-- $1 head_seq, $2 sampled_at, $3 head_per_s (NULL: unknown).
INSERT INTO queue_stats (id, head_seq, sampled_at, head_per_s) VALUES (true, $1, $2, $3)
ON CONFLICT (id) DO UPDATE
SET head_seq = excluded.head_seq, sampled_at = excluded.sampled_at,
    head_per_s = excluded.head_per_s

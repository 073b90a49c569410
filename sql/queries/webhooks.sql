-- Webhooks (0023_webhooks.sql): the jobs' webhooks, the users' signing secrets, and the outbox
-- the delivery loop works through.

-- add_job_webhooks --
-- The webhooks of jobs just accepted, in the submit's transaction; the flag makes the outbox
-- trigger fire for them. $1 items (jsonb: [{job, url, events}, ...]).
WITH hooks AS (
    INSERT INTO job_webhooks (job_id, url, events)
    SELECT h.job, h.url, h.events
    FROM jsonb_to_recordset($1::jsonb) AS h(job uuid, url text, events text[])
    RETURNING job_id
)
UPDATE generation_jobs j SET has_webhook = true
FROM hooks WHERE j.id = hooks.job_id

-- current_webhook_secret --
-- The user's current signing secret, made now ($2) if the user has none yet (concurrent first
-- reads agree on one). $1 user_id, $2 a new secret.
WITH made AS (
    INSERT INTO webhook_secrets (user_id, secret) VALUES ($1, $2)
    ON CONFLICT (user_id) WHERE expires_at IS NULL DO NOTHING
    RETURNING secret, created_at
)
SELECT secret, created_at FROM made
UNION ALL
SELECT secret, created_at FROM webhook_secrets WHERE user_id = $1 AND expires_at IS NULL
LIMIT 1

-- previous_webhook_secrets_expire --
-- When the last of the user's previous secrets stops signing (NULL: none signs). $1 user_id.
SELECT max(expires_at) FROM webhook_secrets
WHERE user_id = $1 AND expires_at > now()

-- lock_user --
-- Serialize a user's secret rotations. $1 user_id.
SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE

-- retire_webhook_secret --
-- The current secret keeps signing for $2 seconds more. $1 user_id, $2 overlap seconds.
UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2)
WHERE user_id = $1 AND expires_at IS NULL

-- insert_webhook_secret --
-- $1 user_id, $2 secret.
INSERT INTO webhook_secrets (user_id, secret) VALUES ($1, $2) RETURNING secret, created_at

-- claim_webhook_deliveries --
-- Take due deliveries (FOR UPDATE SKIP LOCKED: several loops share the outbox), at most $2
-- per receiver (host and port, by the free places in $3) and $1 in all, skipping receivers
-- in $4 (no free place); each taken one is pushed $5 seconds ahead (its lease: a loop that
-- dies leaves it to be taken again then) and counts an attempt. With each: the job's current
-- signing secrets, newest first.
WITH candidates AS (
    SELECT d.id, d.next_attempt_at,
           lower(split_part(split_part(split_part(split_part(d.url, '://', 2), '/', 1),
                                       '?', 1), '#', 1)) AS receiver
    FROM webhook_deliveries d
    WHERE d.state = 'pending' AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at
    LIMIT $1 * 4
    FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT c.id, c.next_attempt_at, c.receiver,
           row_number() OVER (PARTITION BY c.receiver ORDER BY c.next_attempt_at, c.id) AS n
    FROM candidates c
    WHERE NOT (c.receiver = ANY($4::text[]))
), chosen AS (
    SELECT r.id, r.receiver FROM ranked r
    WHERE r.n <= coalesce(($3::jsonb ->> r.receiver)::integer, $2)
    ORDER BY r.next_attempt_at, r.id
    LIMIT $1
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $5)
FROM chosen
WHERE d.id = chosen.id
RETURNING d.id, d.job_id, d.user_id, d.event_type, d.url, d.snapshot, d.output_index,
          d.attempts, d.created_at, chosen.receiver,
          ARRAY(SELECT s.secret FROM webhook_secrets s
                WHERE s.user_id = d.user_id AND (s.expires_at IS NULL OR s.expires_at > now())
                ORDER BY s.id DESC) AS secrets

-- finish_webhook_attempts --
-- Record attempts and what follows each (group commit: the attempts that end together, one
-- statement): its state (pending: tried again after its delay). Arrays, one entry per attempt:
-- $1 delivery ids, $2 attempt starts, $3 states, $4 retry delays (seconds), $5 status codes,
-- $6 errors, $7 durations (ms).
WITH a AS (
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::float8[], $5::int[],
                         $6::text[], $7::float8[])
        AS t(id, attempted_at, state, delay_s, status_code, error, duration_ms)
), attempts AS (
    INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, error, duration_ms)
    SELECT id, attempted_at, status_code, error, duration_ms FROM a
)
UPDATE webhook_deliveries d
SET state = a.state,
    next_attempt_at = CASE WHEN a.state = 'pending'
                           THEN now() + make_interval(secs => a.delay_s)
                           ELSE d.next_attempt_at END,
    finished_at = CASE WHEN a.state = 'pending' THEN NULL ELSE now() END
FROM a
WHERE d.id = a.id

-- disable_job_webhook --
-- The receiver answered 410 Gone: nothing more for this job, its other pending deliveries
-- canceled. $1 job_id.
WITH hook AS (
    UPDATE job_webhooks SET disabled_at = coalesce(disabled_at, now()) WHERE job_id = $1
)
UPDATE webhook_deliveries SET state = 'canceled', finished_at = now()
WHERE job_id = $1 AND state = 'pending'

-- list_job_webhook_deliveries --
-- A user's job's deliveries, oldest first, each with its attempts (oldest first).
-- $1 job_id, $2 user_id.
SELECT d.id, d.event_type, d.output_index, d.state, d.attempts, d.created_at,
       CASE WHEN d.state = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
       d.finished_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'attempted_at', a.attempted_at, 'status_code', a.status_code,
                    'error', a.error, 'duration_ms', a.duration_ms) ORDER BY a.id)
                 FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]'::jsonb) AS tries
FROM webhook_deliveries d
WHERE d.job_id = $1 AND d.user_id = $2
ORDER BY d.created_at, d.id

-- webhook_backlog --
-- For the scheduler's metrics: deliveries due and not yet taken (a taken one is pushed past its
-- lease) and how long the longest-waiting one has been due (0 when none), from the partial
-- index of pending deliveries. No parameters.
SELECT count(*)::bigint AS due,
       coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)::float8 AS oldest_due_s
FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= now()

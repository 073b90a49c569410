-- Webhooks: a job may name a URL that is called, signed per Standard Webhooks, when it starts,
-- when its outputs are staged and when it ends. The events are written to an outbox
-- (webhook_deliveries) by triggers in the same transaction as the job's change, whichever code
-- path makes it (the worker's claim and final write, a cancel, lease recovery, a stale hold's
-- settlement), and a delivery loop in the scheduler sends them.

-- The signing secrets of each user: one current (expires_at NULL) and, after a rotation, the
-- previous ones until they expire (24 h), which keep signing beside the current one.
CREATE TABLE webhook_secrets (
    id          bigserial PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    CONSTRAINT webhook_secrets_format CHECK (secret LIKE 'whsec\_%')
);
CREATE UNIQUE INDEX webhook_secrets_current_key ON webhook_secrets (user_id)
    WHERE expires_at IS NULL;
CREATE INDEX webhook_secrets_user_idx ON webhook_secrets (user_id, expires_at);

-- A job's webhook, written in the submit's transaction only for a job that has one.
-- disabled_at: the receiver answered 410 Gone; nothing more is sent for this job.
CREATE TABLE job_webhooks (
    job_id      uuid PRIMARY KEY REFERENCES generation_jobs (id) ON DELETE CASCADE,
    url         text NOT NULL,
    events      text[] NOT NULL,
    disabled_at timestamptz,
    CONSTRAINT job_webhooks_url_length CHECK (length(url) BETWEEN 1 AND 2048),
    CONSTRAINT job_webhooks_events_valid CHECK (
        cardinality(events) > 0 AND events <@ ARRAY['started', 'output', 'completed']
    )
);

-- The triggers below fire only for jobs with this flag (set with the job_webhooks row), in
-- their WHEN clause: a job without a webhook runs no trigger function at all.
ALTER TABLE generation_jobs ADD COLUMN has_webhook boolean NOT NULL DEFAULT false;

-- The outbox. One row per event and webhook; its id is the webhook-id of every attempt.
-- state: pending (next_attempt_at is when it is due; a claimed row is pushed past its lease),
-- delivered (2xx), gone (410), failed (out of attempts), canceled (an earlier 410 of the job).
-- snapshot: the job as job_responses showed it when the event happened.
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id          uuid NOT NULL REFERENCES generation_jobs (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    event_type      text NOT NULL,
    url             text NOT NULL,
    snapshot        jsonb NOT NULL,
    output_index    integer,
    state           text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT webhook_deliveries_type_valid
        CHECK (event_type IN ('job.started', 'job.output', 'job.completed')),
    CONSTRAINT webhook_deliveries_state_valid
        CHECK (state IN ('pending', 'delivered', 'gone', 'failed', 'canceled'))
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, created_at);

-- Every attempt: when, the HTTP status (NULL: no answer) or the error, and how long it took.
CREATE TABLE webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL,
    status_code  integer,
    error        text,
    duration_ms  double precision NOT NULL
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, id);

-- The job as the API answers it (0017), with its webhook.
CREATE OR REPLACE VIEW job_responses AS
SELECT j.user_id, j.id, j.status, j.model, j.prompt, j.num_outputs, j.params, j.seed,
       j.price_per_output, j.error_code, j.error_message, j.created_at, j.started_at,
       j.finished_at, j.enqueued_at, j.cancel_requested_at, j.provider_queue_position,
       j.ran_model,
       r.amount AS reserved, r.captured, r.refunded,
       w.url AS webhook_url, w.events AS webhook_events
FROM generation_jobs j
LEFT JOIN credit_reservations r ON r.id = j.reservation_id
LEFT JOIN job_webhooks w ON w.job_id = j.id;

-- Write the outbox rows of one change of a job with a webhook. Deferred to the commit of the
-- change's transaction, so the snapshot shows the job as that transaction leaves it (its
-- reservation settled, its assets inserted), and the outputs come before the completion.
CREATE FUNCTION genq_webhook_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_hook job_webhooks;
    v_snapshot jsonb;
BEGIN
    SELECT w.* INTO v_hook FROM job_webhooks w
    WHERE w.job_id = NEW.id AND w.disabled_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT to_jsonb(r) INTO v_snapshot FROM job_responses r WHERE r.id = NEW.id;
    IF OLD.started_at IS NULL AND NEW.started_at IS NOT NULL
       AND 'started' = ANY(v_hook.events) THEN
        INSERT INTO webhook_deliveries (job_id, user_id, event_type, url, snapshot)
        VALUES (NEW.id, NEW.user_id, 'job.started', v_hook.url, v_snapshot);
    END IF;
    IF OLD.status NOT IN ('succeeded', 'failed', 'canceled')
       AND NEW.status IN ('succeeded', 'failed', 'canceled') THEN
        IF 'output' = ANY(v_hook.events) THEN
            INSERT INTO webhook_deliveries
                (job_id, user_id, event_type, url, snapshot, output_index)
            SELECT NEW.id, NEW.user_id, 'job.output', v_hook.url, v_snapshot, a.asset_index
            FROM workspace_assets a WHERE a.job_id = NEW.id
            ORDER BY a.asset_index;
        END IF;
        IF 'completed' = ANY(v_hook.events) THEN
            INSERT INTO webhook_deliveries (job_id, user_id, event_type, url, snapshot)
            VALUES (NEW.id, NEW.user_id, 'job.completed', v_hook.url, v_snapshot);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER generation_jobs_webhook_outbox
    AFTER UPDATE ON generation_jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.has_webhook AND (
        (OLD.started_at IS NULL AND NEW.started_at IS NOT NULL)
        OR (OLD.status IS DISTINCT FROM NEW.status
            AND NEW.status IN ('succeeded', 'failed', 'canceled'))))
    EXECUTE FUNCTION genq_webhook_outbox();

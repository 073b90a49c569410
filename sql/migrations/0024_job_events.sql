-- Live job events (GET /v1/events, GET /v1/jobs/{id}/events) and queue position.
--
-- job_events: one row per change a client is told about: job.queued, job.started, job.output
-- (k of n outputs staged), job.succeeded, job.failed, job.canceled. Written by triggers on
-- generation_jobs in the same transaction as the change, so every code path that changes a job
-- (intake, worker, scheduler, an operator's SQL) is covered; data is the job as the API shows
-- it (a job_responses row) at the moment of the change.
--
-- Ids are taken in commit order. The triggers are deferred: they run when the transaction
-- commits, and the first of them takes one transaction-level advisory lock, held until the
-- commit is visible, before it takes ids from the sequence. So a transaction holding a lower
-- id has always committed (or rolled back) before any higher id is taken: a reader that sees
-- id n already sees every id below it, and "id > last" never skips an event. (pg_notify, sent
-- by the same transactions, already serializes their commits on a lock of its own; this one
-- comes first, in every transaction, so the two never wait on each other in opposite orders.)
-- Ids increase for every user; Last-Event-ID resumes from them.

CREATE TABLE job_events (
    id          bigint PRIMARY KEY,
    user_id     uuid NOT NULL,
    job_id      uuid NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT job_events_type_valid CHECK (type IN (
        'job.queued', 'job.started', 'job.output', 'job.succeeded', 'job.failed',
        'job.canceled'))
);
CREATE SEQUENCE job_events_id_seq OWNED BY job_events.id;
-- A user's stream and its resume, and one job's.
CREATE INDEX job_events_user_idx ON job_events (user_id, id);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

-- Outputs staged so far by the attempt running the job (job.output k of n); a new attempt
-- starts again from 0.
ALTER TABLE generation_jobs ADD COLUMN outputs_staged integer NOT NULL DEFAULT 0;

-- Queue position: every job takes a number from one sequence when it is submitted (a column
-- default, so every insert path has one). A queued job's position is its number minus the
-- lowest number still queued (0: the next to start in submission order), read from the head of
-- a partial index, so it costs the same with 100,000 jobs queued as with one.
CREATE SEQUENCE generation_jobs_queue_seq;
ALTER TABLE generation_jobs
    ADD COLUMN queue_seq bigint NOT NULL DEFAULT nextval('generation_jobs_queue_seq');
ALTER SEQUENCE generation_jobs_queue_seq OWNED BY generation_jobs.queue_seq;
CREATE INDEX generation_jobs_queue_seq_idx ON generation_jobs (queue_seq)
    WHERE status = 'queued';

-- How fast the head of the queue moves (queue numbers per second), measured by the scheduler
-- (measure-queue): the queue's lowest number at the last sample and a smoothed rate. A queued
-- job's ETA is its position over that rate (NULL until a rate is known).
CREATE TABLE queue_stats (
    id           boolean PRIMARY KEY DEFAULT true,
    head_seq     bigint NOT NULL,
    sampled_at   timestamptz NOT NULL,
    head_per_s   double precision,
    CONSTRAINT queue_stats_one_row CHECK (id)
);

-- job_responses as in 0023, with the staged outputs and the queue position and ETA.
CREATE OR REPLACE VIEW job_responses AS
SELECT j.user_id, j.id, j.status, j.model, j.prompt, j.num_outputs, j.params, j.seed,
       j.price_per_output, j.error_code, j.error_message, j.created_at, j.started_at,
       j.finished_at, j.enqueued_at, j.cancel_requested_at, j.provider_queue_position,
       j.ran_model,
       r.amount AS reserved, r.captured, r.refunded,
       w.url AS webhook_url, w.events AS webhook_events,
       j.outputs_staged,
       q.position AS queue_position,
       CASE WHEN s.head_per_s > 0 THEN ceil((q.position + 1) / s.head_per_s)::bigint
       END AS queue_eta_s
FROM generation_jobs j
LEFT JOIN credit_reservations r ON r.id = j.reservation_id
LEFT JOIN job_webhooks w ON w.job_id = j.id
LEFT JOIN LATERAL (
    SELECT j.queue_seq - (SELECT min(h.queue_seq) FROM generation_jobs h
                          WHERE h.status = 'queued') AS position
    WHERE j.status = 'queued'
) q ON true
LEFT JOIN queue_stats s ON j.status = 'queued';

-- The event a change of a job makes (NULL: none): a new or requeued job is queued, a claim
-- starts it, a staged output is job.output, a terminal status is its own event.
CREATE FUNCTION genq_job_event_type(
    p_old_status text, p_new_status text, p_old_staged integer, p_new_staged integer
) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_new_status IS DISTINCT FROM p_old_status THEN
            CASE p_new_status
                WHEN 'queued' THEN 'job.queued'
                WHEN 'running' THEN 'job.started'
                ELSE 'job.' || p_new_status
            END
        WHEN p_new_status = 'running' AND p_new_staged > p_old_staged THEN 'job.output'
    END
$$;

CREATE FUNCTION genq_record_job_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_type := genq_job_event_type(NULL, NEW.status, 0, NEW.outputs_staged);
    ELSE
        v_type := genq_job_event_type(OLD.status, NEW.status, OLD.outputs_staged,
                                      NEW.outputs_staged);
    END IF;
    IF v_type IS NULL THEN
        RETURN NULL;
    END IF;
    -- Ids in commit order (see the top of this file). Taken again by the same transaction's
    -- later events, it returns at once.
    PERFORM pg_advisory_xact_lock(24, 0);
    INSERT INTO job_events (id, user_id, job_id, type, data)
    SELECT nextval('job_events_id_seq'), NEW.user_id, NEW.id, v_type,
           to_jsonb(r)
    FROM job_responses r WHERE r.id = NEW.id;
    -- One wake-up per transaction (equal payloads are folded into one).
    PERFORM pg_notify('genq_job_events', '');
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER generation_jobs_event_insert
    AFTER INSERT ON generation_jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION genq_record_job_event();

CREATE CONSTRAINT TRIGGER generation_jobs_event_update
    AFTER UPDATE ON generation_jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR NEW.outputs_staged > OLD.outputs_staged)
    EXECUTE FUNCTION genq_record_job_event();

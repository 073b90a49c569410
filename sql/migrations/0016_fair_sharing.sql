-- Fair sharing: per-model provider limits, a per-user running cap, and plans.
--
-- models.max_concurrency: how many of the model's provider calls may run at once across every
-- worker; models.max_per_minute: how many predictions may be created in any 60 s. NULL is no
-- limit. Both come from the catalog TOML and are enforced by the workers in Redis
-- (shared/limits.py); the database only carries them from the catalog to the claim.

ALTER TABLE models ADD COLUMN max_concurrency integer,
                   ADD COLUMN max_per_minute integer,
    ADD CONSTRAINT models_max_concurrency_positive CHECK (max_concurrency > 0),
    ADD CONSTRAINT models_max_per_minute_positive CHECK (max_per_minute > 0);

-- Per-user running cap: a job is dispatched (put on the Redis queue) only while its user has
-- fewer than the cap dispatched and unfinished jobs; the rest wait in PostgreSQL, queued with
-- enqueued_at NULL, costing nothing to the workers or Redis. "Dispatched" is a queued job with
-- enqueued_at set, or a running one. The two partial indexes keep both the count (at most the
-- cap's rows, however many a user has waiting) and the pick of the oldest waiting jobs cheap.
CREATE INDEX generation_jobs_dispatched_idx ON generation_jobs (user_id)
    WHERE status = 'running' OR (status = 'queued' AND enqueued_at IS NOT NULL);
CREATE INDEX generation_jobs_waiting_idx ON generation_jobs (user_id, created_at, id)
    WHERE status = 'queued' AND enqueued_at IS NULL;

-- Plans (shared/plans.toml and GENQ_PLANS_FILE, synced at migrate): credits granted each
-- period (a UTC day or month; the scheduler grants under the ledger key
-- plan:<plan>:<period start>), a priority tier, and overrides of the running cap and the
-- submission rate. Every user is on a plan, `free` (built in) unless an admin assigned one;
-- users.max_running overrides the plan's cap for one user.
CREATE TABLE plans (
    name                text PRIMARY KEY,
    description         text NOT NULL DEFAULT '',
    credits_per_period  bigint NOT NULL DEFAULT 0,
    period              text NOT NULL DEFAULT 'month',
    priority_tier       integer NOT NULL DEFAULT 0,
    max_running         integer,
    submits_per_minute  integer,
    storage_quota_bytes bigint,
    enabled             boolean NOT NULL DEFAULT true,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plans_credits_nonnegative CHECK (credits_per_period >= 0),
    CONSTRAINT plans_period_valid CHECK (period IN ('day', 'month')),
    CONSTRAINT plans_tier_valid CHECK (priority_tier BETWEEN 0 AND 9),
    CONSTRAINT plans_max_running_positive CHECK (max_running > 0),
    CONSTRAINT plans_submits_positive CHECK (submits_per_minute > 0),
    CONSTRAINT plans_storage_positive CHECK (storage_quota_bytes > 0)
);
INSERT INTO plans (name, description) VALUES ('free', 'The default plan.');

ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free' REFERENCES plans (name),
                  ADD COLUMN max_running integer,
    ADD CONSTRAINT users_max_running_positive CHECK (max_running > 0);
CREATE INDEX users_plan_idx ON users (plan, id);

-- genq_dispatch: for each user (in user id order, so two calls never wait on each other in
-- opposite orders), under a transaction-level advisory lock on the user (so concurrent
-- dispatches of one user count one after the other and the cap holds exactly), mark the oldest
-- waiting jobs dispatched, as many as the cap leaves room for, and return them with their
-- user's priority tier; the caller then puts them on the queue (and clears enqueued_at again
-- if it cannot). A user's cap is their own max_running, else their plan's, else $2.
CREATE FUNCTION genq_dispatch(p_users uuid[], p_cap integer)
RETURNS TABLE (job_id uuid, user_id uuid, enqueued_at timestamptz, priority_tier integer)
LANGUAGE plpgsql AS $$
DECLARE
    u uuid;
    active integer;
    cap integer;
    tier integer;
BEGIN
    FOR u IN SELECT DISTINCT x FROM unnest(p_users) AS x ORDER BY x LOOP
        -- Nothing waiting (the usual case when a job finishes): no lock, no count. A job
        -- committed after this look has its own dispatch, by the intake after its commit.
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM generation_jobs w
            WHERE w.user_id = u AND w.status = 'queued' AND w.enqueued_at IS NULL);
        PERFORM pg_advisory_xact_lock(16, hashtext(u::text));
        SELECT coalesce(us.max_running, p.max_running, p_cap), p.priority_tier INTO cap, tier
        FROM users us JOIN plans p ON p.name = us.plan WHERE us.id = u;
        CONTINUE WHEN cap IS NULL;
        SELECT count(*) INTO active FROM generation_jobs j
        WHERE j.user_id = u
          AND (j.status = 'running' OR (j.status = 'queued' AND j.enqueued_at IS NOT NULL));
        IF active < cap THEN
            RETURN QUERY
            UPDATE generation_jobs g SET enqueued_at = now(), updated_at = now()
            WHERE g.id IN (
                SELECT w.id FROM generation_jobs w
                WHERE w.user_id = u AND w.status = 'queued' AND w.enqueued_at IS NULL
                ORDER BY w.created_at, w.id
                LIMIT cap - active
                FOR UPDATE SKIP LOCKED)
            RETURNING g.id, g.user_id, g.enqueued_at, tier;
        END IF;
    END LOOP;
END
$$;

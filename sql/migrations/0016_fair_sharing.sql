-- Fair sharing: per-model provider limits.
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

-- genq_dispatch: for each user (in user id order, so two calls never wait on each other in
-- opposite orders), under a transaction-level advisory lock on the user (so concurrent
-- dispatches of one user count one after the other and the cap holds exactly), mark the oldest
-- waiting jobs dispatched, as many as the cap leaves room for, and return them; the caller
-- then puts them on the queue (and clears enqueued_at again if it cannot). $1 users, $2 cap.
CREATE FUNCTION genq_dispatch(p_users uuid[], p_cap integer)
RETURNS TABLE (job_id uuid, user_id uuid, enqueued_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    u uuid;
    active integer;
BEGIN
    FOR u IN SELECT DISTINCT x FROM unnest(p_users) AS x ORDER BY x LOOP
        PERFORM pg_advisory_xact_lock(16, hashtext(u::text));
        SELECT count(*) INTO active FROM generation_jobs j
        WHERE j.user_id = u
          AND (j.status = 'running' OR (j.status = 'queued' AND j.enqueued_at IS NOT NULL));
        IF active < p_cap THEN
            RETURN QUERY
            UPDATE generation_jobs g SET enqueued_at = now(), updated_at = now()
            WHERE g.id IN (
                SELECT w.id FROM generation_jobs w
                WHERE w.user_id = u AND w.status = 'queued' AND w.enqueued_at IS NULL
                ORDER BY w.created_at, w.id
                LIMIT p_cap - active
                FOR UPDATE SKIP LOCKED)
            RETURNING g.id, g.user_id, g.enqueued_at;
        END IF;
    END LOOP;
END
$$;

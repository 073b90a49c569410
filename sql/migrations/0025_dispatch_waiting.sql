-- genq_dispatch also says which users still have jobs waiting once it is done: one row with a
-- NULL job_id per such user (their cap is reached, or a waiting job was locked by someone
-- else). Whoever leaves jobs waiting marks the user in Redis (shared/dispatch.py), and a
-- worker whose job finishes runs a dispatch only for marked users: the usual finish, of a
-- user with nothing waiting, costs no statement at all.
--
-- A user without a cap of their own or of their plan, when $2 is 0 (GENQ_USER_MAX_RUNNING unset:
-- the dispatch is on for other plans' caps or tiers), has no cap: every waiting job of theirs
-- goes at once, with their tier, and nothing is counted.
--
-- Otherwise as 0016: for each user (in user id order, so two calls never wait on each other in
-- opposite orders), under a transaction-level advisory lock on the user (so concurrent
-- dispatches of one user count one after the other and the cap holds exactly), mark the oldest
-- waiting jobs dispatched, as many as the cap leaves room for, and return them with their
-- user's priority tier; the caller then puts them on the queue (and clears enqueued_at again
-- if it cannot). A user's cap is their own max_running, else their plan's, else $2 (0: none).
DROP FUNCTION genq_dispatch(uuid[], integer);
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
        -- Nothing waiting: no lock, no count. A job committed after this look has its own
        -- dispatch, by the intake after its commit.
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM generation_jobs w
            WHERE w.user_id = u AND w.status = 'queued' AND w.enqueued_at IS NULL);
        PERFORM pg_advisory_xact_lock(16, hashtext(u::text));
        SELECT coalesce(us.max_running, p.max_running, nullif(p_cap, 0)), p.priority_tier
        INTO cap, tier
        FROM users us JOIN plans p ON p.name = us.plan WHERE us.id = u;
        CONTINUE WHEN NOT FOUND;
        active := 0;
        IF cap IS NOT NULL THEN
            SELECT count(*) INTO active FROM generation_jobs j
            WHERE j.user_id = u
              AND (j.status = 'running' OR (j.status = 'queued' AND j.enqueued_at IS NOT NULL));
        END IF;
        IF cap IS NULL OR active < cap THEN
            RETURN QUERY
            UPDATE generation_jobs g SET enqueued_at = now(), updated_at = now()
            WHERE g.id IN (
                SELECT w.id FROM generation_jobs w
                WHERE w.user_id = u AND w.status = 'queued' AND w.enqueued_at IS NULL
                ORDER BY w.created_at, w.id
                LIMIT cap - active  -- NULL: no limit
                FOR UPDATE SKIP LOCKED)
            RETURNING g.id, g.user_id, g.enqueued_at, tier;
        END IF;
        IF EXISTS (
            SELECT 1 FROM generation_jobs w
            WHERE w.user_id = u AND w.status = 'queued' AND w.enqueued_at IS NULL) THEN
            job_id := NULL;
            user_id := u;
            enqueued_at := NULL;
            priority_tier := tier;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

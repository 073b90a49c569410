-- Job events without a global lock: ids follow the writing transaction, readers wait for the
-- transactions older than their snapshot.
--
-- Until now (0024_job_events.sql) the event triggers took one advisory lock, held until
-- commit, before taking ids from a sequence, and sent a pg_notify, which takes a lock of its
-- own until commit. Both made every transaction that changes a job commit one after another:
-- its WAL flush could not be shared with another connection's (group commit). With 16
-- connections each updating a row and committing, one machine did 2,900-5,100 commits/s
-- without them and 285-330/s with both (pgbench).
--
-- Now an event's id is its transaction's id (pg_current_xact_id(), a 64-bit xid8 that never
-- wraps) times 2^20, plus the event's number within the transaction (0, 1, ...): ids still
-- increase for every user and are unique, and the triggers take no lock and send no
-- notification. An id no longer follows commit order, so a reader only reads the events of
-- transactions older than the oldest one of this database still running at its snapshot:
--
--     id < genq_job_events_horizon()
--
-- Every transaction below it has ended (or runs in another database), so no event below the
-- horizon can still appear: a reader that has read everything below one horizon and reads
-- "id > last" below the next never skips one, and an aborted transaction's events never
-- appear. The cost: an event is read once every transaction of this database that took its id
-- before it has ended, so a long open transaction holds the events back as long as it runs.
--
-- A job's events must still come in the order of its changes, and a transaction's id is not
-- always older than that of one that changed the job after it: a transaction takes its id
-- before it locks the job's row, so another can take a higher id and lock the row first. The
-- trigger runs at commit, holding the job's row, after every earlier change of the job has
-- committed; if the job's last event has an id at or above its own, the event goes right
-- after the highest id in that event's transaction's range instead (those who do so for one
-- range take a lock on it first). Readers are not affected: the transaction that writes it is
-- still running, so the horizon is below it.
--
-- Ids up to 2^63: a transaction id below 2^43 (8.8 * 10^12) and up to 2^20 events per
-- transaction (more fail the transaction). Ids taken before this migration (the sequence's)
-- are all below the new ones (checked below), so Last-Event-ID resumes across it. A database
-- restored from a dump into another cluster starts again from lower transaction ids: purge
-- job_events after such a restore (clients then start again without Last-Event-ID).

-- The highest id a reader may read, plus one: the oldest transaction running at the reader's
-- snapshot (or, none running, the next one), leaving out those known to run in another
-- database, which cannot write this one's events. A transaction of the snapshot that has ended
-- since, or whose database cannot be seen, counts (it can only hold the horizon back).
CREATE FUNCTION genq_job_events_horizon() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT min(x) FROM pg_snapshot_xip(s) x
         WHERE NOT EXISTS (
             SELECT 1 FROM pg_stat_activity a
             WHERE a.backend_xid = x::xid
               AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database()))),
        pg_snapshot_xmax(s))::text::bigint << 20
    FROM pg_current_snapshot() s
$$;

DO $$
BEGIN
    IF (SELECT max(id) FROM job_events) >= genq_job_events_horizon() THEN
        RAISE EXCEPTION 'job_events ids reach the transaction-ordered range: purge job_events';
    END IF;
END $$;

DROP SEQUENCE job_events_id_seq;

CREATE OR REPLACE FUNCTION genq_record_job_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
    v_n integer;
    v_id bigint;
    v_last bigint;
    v_block bigint;
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
    -- This transaction's events so far (a setting local to the transaction).
    v_n := coalesce(nullif(current_setting('genq.job_events_n', true), ''), '0')::integer;
    IF v_n >= 1048576 THEN
        RAISE EXCEPTION 'more than 2^20 job events in one transaction'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    PERFORM set_config('genq.job_events_n', (v_n + 1)::text, true);
    v_id := (pg_current_xact_id()::text::bigint << 20) + v_n;
    SELECT max(e.id) INTO v_last FROM job_events e WHERE e.job_id = NEW.id;
    IF v_last >= v_id THEN
        -- The job's last change came from a transaction with a higher id (see the top).
        v_block := v_last >> 20;
        PERFORM pg_advisory_xact_lock(34, (v_block % 2147483647)::integer);
        SELECT max(e.id) + 1 INTO v_id FROM job_events e
        WHERE e.id >= v_block << 20 AND e.id < (v_block + 1) << 20;
        IF v_id >= (v_block + 1) << 20 THEN
            RAISE EXCEPTION 'more than 2^20 job events in one transaction''s range'
                USING ERRCODE = 'program_limit_exceeded';
        END IF;
    END IF;
    INSERT INTO job_events (id, user_id, job_id, type, data)
    SELECT v_id, NEW.user_id, NEW.id, v_type, to_jsonb(r)
    FROM job_responses r WHERE r.id = NEW.id;
    RETURN NULL;
END;
$$;

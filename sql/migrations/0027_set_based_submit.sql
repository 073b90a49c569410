-- Set-based submission: a batch of submissions costs a fixed number of statements, not a
-- subtransaction and a dozen statements per item.
--
-- genq_submit_batch (same signature and result columns as in 0009_params_pricing.sql) now:
--   1. takes each Idempotency-Key's lock (a transaction-level advisory lock on the user and the
--      key, in lock order), so a racer with the same key waits until this transaction ends and
--      then finds its record;
--   2. locks every account of the batch, in user order, once;
--   3. decides every item in one read (the keys probed in one go, the models, the balances),
--      keeping a running balance per account in item order: an item is refused only if the
--      balance left after the items accepted before it is short, as if they ran one by one;
--   4. writes the accepted items with one multi-row INSERT per table (reservations, jobs,
--      ledger rows, key records) and one UPDATE per account.
-- A refusal still comes back per item and writes nothing: nothing is written before every item
-- is decided. Any other error aborts the whole statement, writing nothing.
--
-- The reservation's ledger row carries the job id and no idempotency key: the job id is new
-- for every submission (the job's primary key refuses a second one), so a `job:<id>` key
-- guarded nothing and cost a unique-index probe per job.
--
-- Lock order: key locks, then account locks, each set in a fixed order. No other path takes a
-- key lock, so two batches never wait for each other in a cycle.

CREATE TYPE genq_submit_item AS (
    item             integer,
    job              uuid,
    user_id          uuid,
    model            text,
    prompt           text,
    num_outputs      integer,
    params           jsonb,
    seed             bigint,
    key              text,
    request_hash     text,
    price_per_output bigint,
    revision         text,
    -- 1 for the first item of a (user, key), 2 for its second, ... (1 without a key)
    round            integer,
    -- the decision: accepted (replay_of and err_state NULL), replayed or refused
    replay_of        uuid,
    err_state        text,
    err_constraint   text,
    err_detail       text,
    err_message      text,
    -- what an accepted item writes
    provider         text,
    price_per_second bigint,
    price            bigint,
    reservation      uuid,
    balance_after    bigint
);

-- The key lock of an Idempotency-Key of one user (the one-bigint advisory lock space).
CREATE FUNCTION genq_submit_key_lock(p_user uuid, p_key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(p_user::text || '/' || p_key, 19)
$$;

-- One round of a batch: no (user, key) appears twice in p_items.
CREATE FUNCTION genq_submit_set(
    p_items genq_submit_item[], p_max_attempts integer, p_key_ttl_s double precision,
    p_reservation_ttl_s double precision
)
RETURNS SETOF genq_submit_item
LANGUAGE plpgsql AS $$
DECLARE
    v_out genq_submit_item[] := '{}';
    v_it genq_submit_item;
    r record;
    v_user uuid;
    v_left bigint;
    v_accepted integer := 0;
BEGIN
    -- 1. The keys' locks, in lock order (the subquery's order is the order they are taken in).
    PERFORM pg_advisory_xact_lock(s.lock)
    FROM (SELECT DISTINCT genq_submit_key_lock(i.user_id, i.key) AS lock
          FROM unnest(p_items) i WHERE i.key IS NOT NULL ORDER BY 1) s;

    -- 2. Every account of the batch, in user order.
    PERFORM 1 FROM (
        SELECT a.user_id FROM credit_accounts a
        WHERE a.user_id IN (SELECT i.user_id FROM unnest(p_items) i)
        ORDER BY a.user_id FOR UPDATE
    ) s;

    -- 3. Decide every item, in (user, key, item) order, with one read of what it depends on.
    FOR r IN
        SELECT i AS it, k.job_id AS key_job, k.request_hash AS key_hash,
               (k.user_id IS NOT NULL
                AND k.created_at >= now() - make_interval(secs => p_key_ttl_s)) AS key_held,
               m.key IS NOT NULL AND m.enabled AS model_ok, m.revision AS model_revision,
               m.max_outputs, m.provider AS model_provider,
               m.price_per_second AS model_price_per_second,
               a.user_id IS NOT NULL AS has_account, a.balance,
               u.disabled_at IS NOT NULL AS user_disabled
        FROM unnest(p_items) i
        LEFT JOIN idempotency_keys k ON k.user_id = i.user_id AND k.key = i.key
        LEFT JOIN models m ON m.key = i.model
        LEFT JOIN credit_accounts a ON a.user_id = i.user_id
        LEFT JOIN users u ON u.id = i.user_id
        ORDER BY i.user_id, i.key NULLS LAST, i.item
    LOOP
        v_it := r.it;
        IF v_user IS DISTINCT FROM v_it.user_id THEN
            v_user := v_it.user_id;
            v_left := r.balance;
        END IF;
        IF r.key_held THEN
            IF r.key_job IS NULL THEN
                -- A record from before this migration whose holder never finished.
                v_it.err_state := '23505';
                v_it.err_constraint := 'idempotency_keys_holder_gone';
                v_it.err_message := format('idempotency key %s cannot be reused', v_it.key);
            ELSIF r.key_hash <> v_it.request_hash THEN
                v_it.err_state := '23505';
                v_it.err_constraint := 'idempotency_keys_request_mismatch';
                v_it.err_message := format('idempotency key %s was used with another request',
                                           v_it.key);
            ELSE
                v_it.replay_of := r.key_job;
            END IF;
        ELSIF r.user_disabled THEN
            -- Disabled after the intake authenticated it: the disable locked the account
            -- (step 2 waited for it), so this read sees it (as 0026's trigger on holds would).
            v_it.err_state := '23514';
            v_it.err_constraint := 'users_account_disabled';
            v_it.err_message := format('the account of user %s is disabled', v_it.user_id);
        ELSIF NOT coalesce(r.model_ok, false) THEN
            v_it.err_state := '23514';
            v_it.err_constraint := 'genq_submit_model_unknown';
            v_it.err_message := format('no enabled model %s', v_it.model);
        ELSIF r.model_revision IS DISTINCT FROM v_it.revision THEN
            v_it.err_state := '23514';
            v_it.err_constraint := 'genq_submit_catalog_changed';
            v_it.err_message := format('model %s changed since the intake checked the request',
                                       v_it.model);
        ELSIF v_it.num_outputs > r.max_outputs THEN
            v_it.err_state := '23514';
            v_it.err_constraint := 'genq_submit_too_many_outputs';
            v_it.err_detail := r.max_outputs::text;
            v_it.err_message := format('%s makes at most %s outputs per job', v_it.model,
                                       r.max_outputs);
        ELSIF v_it.price_per_output IS NULL OR v_it.price_per_output < 0 THEN
            RAISE EXCEPTION 'no price per output for %', v_it.model;
        ELSE
            v_it.price := v_it.price_per_output * v_it.num_outputs;
            IF v_it.price > 0 AND NOT r.has_account THEN
                v_it.err_state := 'P0002';
                v_it.err_message := format('no credit account for user %s', v_it.user_id);
            ELSIF v_it.price > 0 AND v_left < v_it.price THEN
                v_it.err_state := '23514';
                v_it.err_constraint := 'credit_accounts_balance_nonnegative';
                v_it.err_detail := json_build_object('price', v_it.price,
                                                     'balance', v_left)::text;
                v_it.err_message := 'not enough credits for this job';
            ELSE
                v_it.provider := r.model_provider;
                v_it.price_per_second := r.model_price_per_second;
                IF v_it.price > 0 THEN
                    v_left := v_left - v_it.price;
                    v_it.reservation := gen_random_uuid();
                    v_it.balance_after := v_left;
                END IF;
                v_accepted := v_accepted + 1;
            END IF;
        END IF;
        v_out := v_out || v_it;
    END LOOP;

    -- 4. Write what was accepted: one statement per table, one UPDATE per account.
    IF v_accepted > 0 THEN
        INSERT INTO credit_reservations (id, user_id, job_id, amount, expires_at)
        SELECT o.reservation, o.user_id, o.job, o.price,
               now() + make_interval(secs => p_reservation_ttl_s)
        FROM unnest(v_out) o WHERE o.reservation IS NOT NULL;

        INSERT INTO generation_jobs
            (id, user_id, model, provider, prompt, num_outputs, params, seed, price_per_output,
             price_per_second, reservation_id, max_attempts)
        SELECT o.job, o.user_id, o.model, o.provider, o.prompt, o.num_outputs, o.params, o.seed,
               o.price_per_output, o.price_per_second, o.reservation, p_max_attempts
        FROM unnest(v_out) o
        WHERE o.replay_of IS NULL AND o.err_state IS NULL;

        -- In item order within each account, so the newest entry's balance_after is the
        -- balance.
        INSERT INTO credit_ledger
            (user_id, kind, amount, reserved_delta, balance_after, reservation_id, job_id)
        SELECT o.user_id, 'reserve', -o.price, o.price, o.balance_after, o.reservation, o.job
        FROM unnest(v_out) WITH ORDINALITY AS o
        WHERE o.reservation IS NOT NULL
        ORDER BY o.ordinality;

        UPDATE credit_accounts a
        SET balance = a.balance - s.total, reserved = a.reserved + s.total, updated_at = now()
        FROM (SELECT o.user_id, sum(o.price) AS total FROM unnest(v_out) o
              WHERE o.reservation IS NOT NULL GROUP BY o.user_id) s
        WHERE a.user_id = s.user_id;

        -- A record past its TTL is taken over by the new job.
        INSERT INTO idempotency_keys AS k (user_id, key, request_hash, job_id)
        SELECT o.user_id, o.key, o.request_hash, o.job FROM unnest(v_out) o
        WHERE o.key IS NOT NULL AND o.replay_of IS NULL AND o.err_state IS NULL
        ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO UPDATE
            SET request_hash = excluded.request_hash, job_id = excluded.job_id,
                created_at = now();
    END IF;

    RETURN QUERY SELECT * FROM unnest(v_out);
END;
$$;

DROP FUNCTION genq_submit_batch(jsonb, integer, double precision, double precision);

CREATE FUNCTION genq_submit_batch(
    p_items jsonb, p_max_attempts integer, p_key_ttl_s double precision,
    p_reservation_ttl_s double precision
)
RETURNS TABLE (
    item integer, job_id uuid, replayed boolean, created_at timestamptz, params jsonb,
    price_per_output bigint, reserved bigint, error_state text, error_constraint text,
    error_detail text, error_message text
)
LANGUAGE plpgsql AS $$
DECLARE
    -- p_items: [{item, job, user_id, model, prompt, num_outputs, params, seed, key,
    -- request_hash, price_per_output, revision}, ...]
    v_items genq_submit_item[];
    v_rounds integer;
BEGIN
    -- A key sent twice in one batch: its second item runs in a second round (in the same
    -- transaction), where it finds the first one's record, as if they had come one by one.
    SELECT array_agg(s.x), max((s.x).round) INTO v_items, v_rounds
    FROM (
        SELECT ROW(i.item, i.job, i.user_id, i.model, i.prompt, i.num_outputs, i.params,
                   i.seed, i.key, i.request_hash, i.price_per_output, i.revision,
                   CASE WHEN i.key IS NULL THEN 1
                        ELSE row_number() OVER (PARTITION BY i.user_id, i.key ORDER BY i.item)
                   END,
                   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
               )::genq_submit_item AS x
        FROM jsonb_to_recordset(p_items) AS i(
            item integer, job uuid, user_id uuid, model text, prompt text, num_outputs integer,
            params jsonb, seed bigint, key text, request_hash text, price_per_output bigint,
            revision text
        )
    ) s;
    FOR v_round IN 1..coalesce(v_rounds, 0) LOOP
        RETURN QUERY
        SELECT o.item,
               coalesce(o.replay_of, CASE WHEN o.err_state IS NULL THEN o.job END),
               CASE WHEN o.err_state IS NULL THEN o.replay_of IS NOT NULL END,
               CASE WHEN o.err_state IS NULL AND o.replay_of IS NULL THEN now() END,
               CASE WHEN o.err_state IS NULL AND o.replay_of IS NULL THEN o.params END,
               CASE WHEN o.err_state IS NULL AND o.replay_of IS NULL THEN o.price_per_output END,
               CASE WHEN o.err_state IS NULL AND o.replay_of IS NULL THEN o.price END,
               o.err_state, o.err_constraint, o.err_detail, o.err_message
        FROM genq_submit_set(
            ARRAY(SELECT x FROM unnest(v_items) x WHERE x.round = v_round),
            p_max_attempts, p_key_ttl_s, p_reservation_ttl_s) o;
    END LOOP;
END;
$$;

-- genq_submit keeps its signature and answer (0015_providers.sql): one item of the same set,
-- its refusal raised with the SQLSTATE, named constraint and detail the batch reports.
CREATE OR REPLACE FUNCTION genq_submit(
    p_job uuid, p_user uuid, p_model text, p_prompt text, p_num_outputs integer,
    p_params jsonb, p_seed bigint, p_max_attempts integer, p_key text, p_request_hash text,
    p_key_ttl_s double precision, p_reservation_ttl_s double precision,
    p_price_per_output bigint, p_revision text
)
RETURNS TABLE (
    job_id uuid, replayed boolean, created_at timestamptz, params jsonb,
    price_per_output bigint, reserved bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    o genq_submit_item;
BEGIN
    SELECT * INTO o FROM genq_submit_set(
        ARRAY[ROW(0, p_job, p_user, p_model, p_prompt, p_num_outputs, p_params, p_seed, p_key,
                  p_request_hash, p_price_per_output, p_revision, 1,
                  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
              )::genq_submit_item],
        p_max_attempts, p_key_ttl_s, p_reservation_ttl_s);
    IF o.err_state IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = o.err_state, MESSAGE = o.err_message,
            CONSTRAINT = coalesce(o.err_constraint, ''), DETAIL = coalesce(o.err_detail, '');
    END IF;
    IF o.replay_of IS NOT NULL THEN
        RETURN QUERY SELECT o.replay_of, true, NULL::timestamptz, NULL::jsonb, NULL::bigint,
            NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT p_job, false, now(), p_params, p_price_per_output, o.price;
END;
$$;

-- No query finds a reservation by its job (the job row names its reservation, and the expiry
-- sweep goes by credit_reservations_open_expiry_idx): one index entry less per job.
DROP INDEX credit_reservations_job_id_idx;

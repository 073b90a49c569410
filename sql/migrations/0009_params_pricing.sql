-- Per-model params schemas and params-dependent prices.
--
-- The catalog now stores each model's effective params schema (JSON Schema, Draft 2020-12), its
-- optional price tiers on megapixels, and a revision (a digest of the catalog entry). The intake
-- checks params against the schema and computes the price per output in Python (shared/catalog.py,
-- ModelRules: jsonschema has no counterpart in PostgreSQL, and one function prices for the intake,
-- /v1/models and the tests), then passes the merged params, the price per output and the revision
-- it used to genq_submit. genq_submit refuses the submission (genq_submit_catalog_changed) when
-- the model's stored revision is another one, so a price computed from an old catalog is never
-- reserved; the intake reloads the catalog and checks again. Still one statement per batch.

ALTER TABLE models
    ADD COLUMN params_schema jsonb NOT NULL
        DEFAULT '{"type": "object", "additionalProperties": false}'::jsonb,
    ADD COLUMN price_tiers jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN revision text NOT NULL DEFAULT '',
    ADD CONSTRAINT models_params_schema_object CHECK (jsonb_typeof(params_schema) = 'object'),
    ADD CONSTRAINT models_price_tiers_array CHECK (jsonb_typeof(price_tiers) = 'array');

DROP FUNCTION genq_submit(uuid, uuid, text, text, integer, jsonb, bigint, integer, text, text,
                          double precision, double precision);

-- genq_submit as in 0005_submit.sql, with the checked params, the price per output and the
-- revision from the intake. p_params: the merged params, already checked against the schema.
CREATE FUNCTION genq_submit(
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
    v_prior idempotency_keys;
    v_model models;
    v_price bigint;
    v_balance bigint;
    v_reservation uuid;
    v_created timestamptz;
    v_params jsonb;
BEGIN
    IF p_key IS NOT NULL THEN
        -- Claim the key: new, or its record is past its TTL. A racer waits here on the
        -- primary key until the holder's statement ends, then sees the holder's row.
        INSERT INTO idempotency_keys AS k (user_id, key, request_hash)
        VALUES (p_user, p_key, p_request_hash)
        ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO UPDATE
            SET request_hash = excluded.request_hash, job_id = NULL, created_at = now()
            WHERE k.created_at < now() - make_interval(secs => p_key_ttl_s);
        IF NOT FOUND THEN
            SELECT * INTO v_prior FROM idempotency_keys k
                WHERE k.user_id = p_user AND k.key = p_key;
            IF NOT FOUND OR v_prior.job_id IS NULL THEN
                -- The holder's row vanished (its job was deleted).
                RAISE EXCEPTION 'idempotency key % cannot be reused', p_key
                    USING ERRCODE = 'unique_violation',
                          CONSTRAINT = 'idempotency_keys_holder_gone';
            END IF;
            IF v_prior.request_hash <> p_request_hash THEN
                RAISE EXCEPTION 'idempotency key % was used with another request', p_key
                    USING ERRCODE = 'unique_violation',
                          CONSTRAINT = 'idempotency_keys_request_mismatch';
            END IF;
            RETURN QUERY SELECT v_prior.job_id, true, NULL::timestamptz, NULL::jsonb,
                NULL::bigint, NULL::bigint;
            RETURN;
        END IF;
    END IF;

    SELECT * INTO v_model FROM models m WHERE m.key = p_model;
    IF NOT FOUND OR NOT v_model.enabled THEN
        RAISE EXCEPTION 'no enabled model %', p_model
            USING ERRCODE = 'check_violation', CONSTRAINT = 'genq_submit_model_unknown';
    END IF;
    IF v_model.revision IS DISTINCT FROM p_revision THEN
        RAISE EXCEPTION 'model % changed since the intake checked the request', p_model
            USING ERRCODE = 'check_violation', CONSTRAINT = 'genq_submit_catalog_changed';
    END IF;
    IF p_num_outputs > v_model.max_outputs THEN
        RAISE EXCEPTION '% makes at most % outputs per job', p_model, v_model.max_outputs
            USING ERRCODE = 'check_violation', CONSTRAINT = 'genq_submit_too_many_outputs',
                  DETAIL = v_model.max_outputs::text;
    END IF;

    IF p_price_per_output IS NULL OR p_price_per_output < 0 THEN
        RAISE EXCEPTION 'no price per output for %', p_model;
    END IF;
    v_price := p_price_per_output * p_num_outputs;
    IF v_price > 0 THEN
        -- genq_reserve takes the same lock and would refuse a short balance on
        -- credit_accounts_balance_nonnegative; checking first lets the error say by how much.
        SELECT a.balance INTO v_balance FROM credit_accounts a WHERE a.user_id = p_user FOR UPDATE;
        IF FOUND AND v_balance < v_price THEN
            RAISE EXCEPTION 'not enough credits for this job'
                USING ERRCODE = 'check_violation',
                      CONSTRAINT = 'credit_accounts_balance_nonnegative',
                      DETAIL = json_build_object('price', v_price, 'balance', v_balance)::text;
        END IF;
        SELECT r.reservation_id INTO v_reservation
            FROM genq_reserve(p_user, v_price, 'job:' || p_job, p_job,
                              now() + make_interval(secs => p_reservation_ttl_s)) r;
    END IF;

    INSERT INTO generation_jobs AS j
        (id, user_id, model, provider, prompt, num_outputs, params, seed, price_per_output,
         reservation_id, max_attempts)
    VALUES (p_job, p_user, v_model.key, v_model.provider, p_prompt, p_num_outputs,
            p_params, p_seed, p_price_per_output, v_reservation,
            p_max_attempts)
    RETURNING j.created_at, j.params INTO v_created, v_params;
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys k SET job_id = p_job WHERE k.user_id = p_user AND k.key = p_key;
    END IF;
    RETURN QUERY SELECT p_job, false, v_created, v_params, p_price_per_output, v_price;
END;
$$;

-- genq_submit_batch as in 0007_submit_batch.sql; each item also carries price_per_output and
-- revision.
CREATE OR REPLACE FUNCTION genq_submit_batch(
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
    v_in record;
    v_out record;
BEGIN
    FOR v_in IN
        SELECT * FROM jsonb_to_recordset(p_items) AS i(
            item integer, job uuid, user_id uuid, model text, prompt text, num_outputs integer,
            params jsonb, seed bigint, key text, request_hash text, price_per_output bigint,
            revision text
        )
        ORDER BY i.user_id, i.key NULLS LAST, i.item
    LOOP
        item := v_in.item;
        BEGIN
            SELECT s.* INTO v_out FROM genq_submit(
                v_in.job, v_in.user_id, v_in.model, v_in.prompt, v_in.num_outputs,
                v_in.params, v_in.seed, p_max_attempts, v_in.key, v_in.request_hash,
                p_key_ttl_s, p_reservation_ttl_s, v_in.price_per_output, v_in.revision
            ) s;
            job_id := v_out.job_id;
            replayed := v_out.replayed;
            created_at := v_out.created_at;
            params := v_out.params;
            price_per_output := v_out.price_per_output;
            reserved := v_out.reserved;
            error_state := NULL;
            error_constraint := NULL;
            error_detail := NULL;
            error_message := NULL;
        EXCEPTION WHEN unique_violation OR check_violation OR no_data_found THEN
            GET STACKED DIAGNOSTICS
                error_state = RETURNED_SQLSTATE, error_constraint = CONSTRAINT_NAME,
                error_detail = PG_EXCEPTION_DETAIL, error_message = MESSAGE_TEXT;
            job_id := NULL;
            replayed := NULL;
            created_at := NULL;
            params := NULL;
            price_per_output := NULL;
            reserved := NULL;
        END;
        RETURN NEXT;
    END LOOP;
END;
$$;

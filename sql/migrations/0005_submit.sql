-- Job submission in one statement (one round trip, autocommit): the Idempotency-Key claim or
-- replay check, the model lookup, the credit reservation and the job row. Every refusal is an
-- exception, so the statement's own transaction rolls back and nothing is written (a claimed
-- key included); each carries a named constraint that api/intake.py maps to its error.

CREATE FUNCTION genq_submit(
    p_job uuid, p_user uuid, p_model text, p_prompt text, p_num_outputs integer,
    p_params jsonb, p_seed bigint, p_max_attempts integer, p_key text, p_request_hash text,
    p_key_ttl_s double precision, p_reservation_ttl_s double precision
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
    IF p_num_outputs > v_model.max_outputs THEN
        RAISE EXCEPTION '% makes at most % outputs per job', p_model, v_model.max_outputs
            USING ERRCODE = 'check_violation', CONSTRAINT = 'genq_submit_too_many_outputs',
                  DETAIL = v_model.max_outputs::text;
    END IF;

    v_price := v_model.price_per_output * p_num_outputs;
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
            v_model.params || p_params, p_seed, v_model.price_per_output, v_reservation,
            p_max_attempts)
    RETURNING j.created_at, j.params INTO v_created, v_params;
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys k SET job_id = p_job WHERE k.user_id = p_user AND k.key = p_key;
    END IF;
    RETURN QUERY SELECT p_job, false, v_created, v_params, v_model.price_per_output, v_price;
END;
$$;

-- More providers and honest prices.
--
-- An OpenAI-compatible model names its server and the environment variable that holds its key;
-- a job waiting in a provider's own queue shows its place there. A video model may be priced
-- per second of output: the intake reserves ceil(requested duration) x price_per_second per
-- output (the job's price_per_output), the job keeps the rate (price_per_second, copied by
-- genq_submit from the model it checked the revision of), and genq_finalize captures each
-- output's real duration at that rate, at most what was reserved for it, refunding the rest. A
-- model may name a fallback model; a job that moved to it records it in ran_model (its price
-- and provider then being the fallback's).

ALTER TABLE models
    ADD COLUMN base_url text,
    ADD COLUMN api_key_env text,
    ADD COLUMN price_per_second bigint,
    ADD COLUMN fallback text,
    ADD CONSTRAINT models_price_per_second_nonnegative CHECK (price_per_second >= 0);

-- NULL unless the provider last said the job is waiting in its queue (fal's IN_QUEUE).
ALTER TABLE generation_jobs
    ADD COLUMN provider_queue_position integer,
    ADD COLUMN price_per_second bigint,
    ADD COLUMN ran_model text;

-- genq_submit as in 0009_params_pricing.sql, also recording the model's price_per_second.
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
         price_per_second, reservation_id, max_attempts)
    VALUES (p_job, p_user, v_model.key, v_model.provider, p_prompt, p_num_outputs,
            p_params, p_seed, p_price_per_output, v_model.price_per_second, v_reservation,
            p_max_attempts)
    RETURNING j.created_at, j.params INTO v_created, v_params;
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys k SET job_id = p_job WHERE k.user_id = p_user AND k.key = p_key;
    END IF;
    RETURN QUERY SELECT p_job, false, v_created, v_params, p_price_per_output, v_price;
END;
$$;

-- genq_finalize as in 0014_asset_variants.sql; the capture of a job priced per second follows
-- its outputs' real durations, and an asset's model_used is the model that ran (ran_model).
CREATE OR REPLACE FUNCTION genq_finalize(
    p_job uuid, p_attempt integer, p_status text, p_made integer, p_error_code text,
    p_error_message text, p_assets jsonb, p_asset_ttl_s double precision
)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_job generation_jobs;
    v_capture bigint;
BEGIN
    SELECT j.* INTO v_job FROM generation_jobs j
    WHERE j.id = p_job AND j.status = 'running' AND j.attempt = p_attempt
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_job.cancel_requested_at IS NOT NULL THEN
        p_status := 'canceled';
        p_made := 0;
        p_error_code := 'canceled';
        p_error_message := 'The job was canceled.';
    END IF;
    UPDATE generation_jobs j
    SET status = p_status, outputs_made = p_made, error_code = p_error_code,
        error_message = p_error_message, finished_at = now(), lease_owner = NULL,
        lease_expires_at = NULL, updated_at = now()
    WHERE j.id = p_job
    RETURNING j.* INTO v_job;
    -- p_assets: [{asset_index, asset_type, storage_key, file_size_bytes, mime_type,
    -- duration_seconds, width, height, fps, variants: [{kind, mime_type, width, height,
    -- file_size_bytes, storage_key}, ...]}, ...], only for a success. A replay inserts nothing.
    IF p_made > 0 THEN
        INSERT INTO workspace_assets AS w (
            user_id, job_id, asset_index, asset_type, storage_key, file_size_bytes,
            mime_type, duration_seconds, width, height, fps, generation_seed, original_prompt,
            model_used, generation_settings, created_at, expires_at
        )
        SELECT v_job.user_id, v_job.id, a.asset_index, a.asset_type, a.storage_key,
               a.file_size_bytes, a.mime_type, a.duration_seconds, a.width, a.height, a.fps,
               v_job.seed, v_job.prompt, coalesce(v_job.ran_model, v_job.model), v_job.params,
               now(),
               now() + make_interval(secs => p_asset_ttl_s)
        FROM jsonb_to_recordset(p_assets) AS a(
            asset_index integer, asset_type text, storage_key text,
            file_size_bytes bigint, mime_type text, duration_seconds double precision,
            width integer, height integer, fps double precision
        )
        ON CONFLICT ON CONSTRAINT workspace_assets_user_job_index_key DO NOTHING;
        INSERT INTO asset_variants (
            asset_id, kind, mime_type, width, height, file_size_bytes, storage_key
        )
        SELECT w.id, v.kind, v.mime_type, v.width, v.height, v.file_size_bytes, v.storage_key
        FROM jsonb_to_recordset(p_assets) AS a(asset_index integer, variants jsonb)
        CROSS JOIN LATERAL jsonb_to_recordset(coalesce(a.variants, '[]'::jsonb)) AS v(
            kind text, mime_type text, width integer, height integer, file_size_bytes bigint,
            storage_key text
        )
        JOIN workspace_assets w
          ON w.user_id = v_job.user_id AND w.job_id = v_job.id AND w.asset_index = a.asset_index
        ON CONFLICT (asset_id, kind) DO NOTHING;
    END IF;
    -- Success captures outputs x price and refunds the rest; failure and cancel refund all.
    -- Priced per second: each output costs its real duration, whole seconds rounded up, and
    -- never more than the price per output reserved for it (an output whose duration could not
    -- be read costs that reserved price).
    IF v_job.reservation_id IS NOT NULL THEN
        IF v_job.price_per_second IS NOT NULL AND p_made > 0 THEN
            SELECT coalesce(sum(least(
                       coalesce(ceil(a.duration_seconds)::bigint * v_job.price_per_second,
                                v_job.price_per_output),
                       v_job.price_per_output)), 0)
            INTO v_capture
            FROM jsonb_to_recordset(p_assets) AS a(duration_seconds double precision);
        ELSE
            v_capture := p_made * v_job.price_per_output;
        END IF;
        PERFORM genq_settle(v_job.reservation_id, v_capture);
    END IF;
    RETURN p_status;
END;
$$;

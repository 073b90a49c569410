-- The worker's final write in one statement (one round trip, autocommit): the fenced terminal
-- transition, the asset rows, and the settlement of the job's reservation. If this attempt no
-- longer holds the job it returns false and writes nothing; any error rolls back all three.

CREATE FUNCTION genq_finalize(
    p_job uuid, p_attempt integer, p_status text, p_made integer, p_error_code text,
    p_error_message text, p_assets jsonb, p_asset_ttl_s double precision
)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_job generation_jobs;
BEGIN
    UPDATE generation_jobs j
    SET status = p_status, outputs_made = p_made, error_code = p_error_code,
        error_message = p_error_message, finished_at = now(), lease_owner = NULL,
        lease_expires_at = NULL, updated_at = now()
    WHERE j.id = p_job AND j.status = 'running' AND j.attempt = p_attempt
    RETURNING j.* INTO v_job;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- p_assets: [{asset_index, asset_type, temp_storage_path, file_size_bytes, mime_type,
    -- duration_seconds, width, height}, ...], only for a success. A replay inserts nothing.
    IF p_made > 0 THEN
        INSERT INTO workspace_assets AS w (
            user_id, job_id, asset_index, asset_type, temp_storage_path, file_size_bytes,
            mime_type, duration_seconds, width, height, generation_seed, original_prompt,
            model_used, generation_settings, created_at, expires_at
        )
        SELECT v_job.user_id, v_job.id, a.asset_index, a.asset_type, a.temp_storage_path,
               a.file_size_bytes, a.mime_type, a.duration_seconds, a.width, a.height,
               v_job.seed, v_job.prompt, v_job.model, v_job.params, now(),
               now() + make_interval(secs => p_asset_ttl_s)
        FROM jsonb_to_recordset(p_assets) AS a(
            asset_index integer, asset_type text, temp_storage_path text,
            file_size_bytes bigint, mime_type text, duration_seconds double precision,
            width integer, height integer
        )
        ON CONFLICT ON CONSTRAINT workspace_assets_user_job_index_key DO NOTHING;
    END IF;
    -- Success captures outputs x price and refunds the rest; failure and cancel refund all.
    IF v_job.reservation_id IS NOT NULL THEN
        PERFORM genq_settle(v_job.reservation_id, p_made * v_job.price_per_output);
    END IF;
    RETURN true;
END;
$$;

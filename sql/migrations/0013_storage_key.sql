-- The asset's storage location is a key in whichever storage backend genq uses (a local
-- folder or an S3 bucket), not a path and not temporary: the column is renamed to what it is.
-- genq_finalize (as in 0011_finalize_cancel_wins.sql) names the column and the asset JSON
-- field, so it is replaced with the same signature; genq_finalize_batch only calls it.

ALTER TABLE workspace_assets RENAME COLUMN temp_storage_path TO storage_key;

CREATE OR REPLACE FUNCTION genq_finalize(
    p_job uuid, p_attempt integer, p_status text, p_made integer, p_error_code text,
    p_error_message text, p_assets jsonb, p_asset_ttl_s double precision
)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_job generation_jobs;
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
    -- duration_seconds, width, height}, ...], only for a success. A replay inserts nothing.
    IF p_made > 0 THEN
        INSERT INTO workspace_assets AS w (
            user_id, job_id, asset_index, asset_type, storage_key, file_size_bytes,
            mime_type, duration_seconds, width, height, generation_seed, original_prompt,
            model_used, generation_settings, created_at, expires_at
        )
        SELECT v_job.user_id, v_job.id, a.asset_index, a.asset_type, a.storage_key,
               a.file_size_bytes, a.mime_type, a.duration_seconds, a.width, a.height,
               v_job.seed, v_job.prompt, v_job.model, v_job.params, now(),
               now() + make_interval(secs => p_asset_ttl_s)
        FROM jsonb_to_recordset(p_assets) AS a(
            asset_index integer, asset_type text, storage_key text,
            file_size_bytes bigint, mime_type text, duration_seconds double precision,
            width integer, height integer
        )
        ON CONFLICT ON CONSTRAINT workspace_assets_user_job_index_key DO NOTHING;
    END IF;
    -- Success captures outputs x price and refunds the rest; failure and cancel refund all.
    IF v_job.reservation_id IS NOT NULL THEN
        PERFORM genq_settle(v_job.reservation_id, p_made * v_job.price_per_output);
    END IF;
    RETURN p_status;
END;
$$;

-- A cancel requested before the worker's final write commits wins, checked inside that write:
-- genq_finalize locks the job row, and if cancel_requested_at is set the job ends `canceled`
-- whatever outcome the worker brought, with every credit refunded and no asset rows. The
-- cancel endpoint sets cancel_requested_at only while the job is `running` (an UPDATE on the
-- same row), so either its write commits first and the cancel wins here, or it waits for this
-- one and then finds the job finished (409).
--
-- Both functions now return the status written (NULL: this attempt no longer holds the job,
-- nothing written) instead of a boolean, so that the worker learns that its outputs were
-- discarded and deletes their files. A return type cannot change under CREATE OR REPLACE, so
-- they are dropped and created again (genq_finalize_batch first: it calls genq_finalize).

DROP FUNCTION genq_finalize_batch(jsonb, double precision);
DROP FUNCTION genq_finalize(uuid, integer, text, integer, text, text, jsonb, double precision);

CREATE FUNCTION genq_finalize(
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
    RETURN p_status;
END;
$$;

-- As in 0008_finalize_batch.sql (items in account order, any error writes nothing), with the
-- status each item's genq_finalize wrote.
CREATE FUNCTION genq_finalize_batch(p_items jsonb, p_asset_ttl_s double precision)
RETURNS TABLE (item integer, status text)
LANGUAGE plpgsql AS $$
DECLARE
    -- p_items: [{item, job, user_id, attempt, status, made, error_code, error_message,
    -- assets}, ...]
    v_in record;
BEGIN
    FOR v_in IN
        SELECT * FROM jsonb_to_recordset(p_items) AS i(
            item integer, job uuid, user_id uuid, attempt integer, status text, made integer,
            error_code text, error_message text, assets jsonb
        )
        ORDER BY i.user_id, i.job, i.item
    LOOP
        item := v_in.item;
        status := genq_finalize(v_in.job, v_in.attempt, v_in.status, v_in.made,
                                v_in.error_code, v_in.error_message, v_in.assets,
                                p_asset_ttl_s);
        RETURN NEXT;
    END LOOP;
END;
$$;

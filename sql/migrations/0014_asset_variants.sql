-- Asset variants and video frame rates.
--
-- asset_variants: the files the worker makes from each output after staging (`thumb`, 256 px
-- WebP, and `web`, 1024 px WebP only when the image is larger, for images; `poster`, the first
-- frame as WebP, for videos). A variant goes with its asset: rows by the foreign key's cascade,
-- files deleted by the expiry task. storage_key is indexed for the orphan sweep, which keeps
-- every file a variant row points at.
--
-- genq_finalize (as in 0011_finalize_cancel_wins.sql, cancel-wins logic unchanged) now also
-- stores each asset's `fps` and inserts its `variants` in the same transaction as the asset
-- rows. Its signature and return type are unchanged, so genq_finalize_batch keeps calling it.

ALTER TABLE workspace_assets ADD COLUMN fps double precision;

CREATE TABLE asset_variants (
    asset_id        uuid NOT NULL REFERENCES workspace_assets (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    mime_type       text NOT NULL,
    width           integer NOT NULL,
    height          integer NOT NULL,
    file_size_bytes bigint NOT NULL,
    storage_key     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (asset_id, kind),
    CONSTRAINT asset_variants_kind_valid CHECK (kind IN ('thumb', 'web', 'poster')),
    CONSTRAINT asset_variants_size_nonnegative CHECK (file_size_bytes >= 0),
    CONSTRAINT asset_variants_dims_positive CHECK (width > 0 AND height > 0)
);
CREATE INDEX asset_variants_storage_key_idx ON asset_variants (storage_key);

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
               v_job.seed, v_job.prompt, v_job.model, v_job.params, now(),
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
    IF v_job.reservation_id IS NOT NULL THEN
        PERFORM genq_settle(v_job.reservation_id, p_made * v_job.price_per_output);
    END IF;
    RETURN p_status;
END;
$$;

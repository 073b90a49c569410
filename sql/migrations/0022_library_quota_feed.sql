-- The library's storage quota from the user's plan, and a feed read from one index.
--
-- A user's storage quota is their own (library_usage.quota_bytes, set by an admin), else their
-- plan's (plans.storage_quota_bytes), else the server's GENQ_LIBRARY_QUOTA_BYTES (p_default).
-- genq_storage_quota is the one place that says so: the save, the restore and GET /v1/me all
-- ask it. The save and the restore read it after locking the user's library_usage row, and an
-- admin's override is written to that row, so concurrent saves are checked one after the other
-- against the quota in force.

CREATE FUNCTION genq_storage_quota(p_user uuid, p_default bigint)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT lu.quota_bytes FROM library_usage lu WHERE lu.user_id = p_user),
        (SELECT p.storage_quota_bytes FROM users us JOIN plans p ON p.name = us.plan
         WHERE us.id = p_user),
        p_default)
$$;

-- As in 0018_library.sql, with the quota of genq_storage_quota (p_quota: the server's default).
CREATE OR REPLACE FUNCTION genq_library_save(
    p_user uuid, p_asset uuid, p_short_id text, p_storage_key text, p_variants jsonb,
    p_title text, p_tags text[], p_collection uuid, p_favorite boolean, p_visibility text,
    p_quota bigint
)
RETURNS TABLE (outcome text, item_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_asset workspace_assets;
    v_usage library_usage;
    v_id uuid;
BEGIN
    INSERT INTO library_usage (user_id) VALUES (p_user) ON CONFLICT (user_id) DO NOTHING;
    SELECT u.* INTO v_usage FROM library_usage u WHERE u.user_id = p_user FOR UPDATE;
    SELECT l.id INTO v_id FROM user_library l
    WHERE l.user_id = p_user AND l.source_asset_id = p_asset;
    IF FOUND THEN
        RETURN QUERY SELECT 'existing'::text, v_id;
        RETURN;
    END IF;
    SELECT a.* INTO v_asset FROM workspace_assets a
    WHERE a.id = p_asset AND a.user_id = p_user AND a.expires_at > now()
    FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::uuid;
        RETURN;
    END IF;
    IF p_collection IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM user_collections c WHERE c.id = p_collection AND c.user_id = p_user
    ) THEN
        RETURN QUERY SELECT 'no_collection'::text, NULL::uuid;
        RETURN;
    END IF;
    IF v_usage.bytes_used + v_asset.file_size_bytes > genq_storage_quota(p_user, p_quota) THEN
        RETURN QUERY SELECT 'quota'::text, NULL::uuid;
        RETURN;
    END IF;
    INSERT INTO user_library (
        user_id, short_id, source_asset_id, job_id, asset_type, storage_key, file_size_bytes,
        mime_type, duration_seconds, width, height, fps, prompt, model, seed, collection_id,
        title, tags, is_favorite, visibility, published_at
    ) VALUES (
        p_user, p_short_id, p_asset, v_asset.job_id, v_asset.asset_type, p_storage_key,
        v_asset.file_size_bytes, v_asset.mime_type, v_asset.duration_seconds, v_asset.width,
        v_asset.height, v_asset.fps, v_asset.original_prompt, v_asset.model_used,
        v_asset.generation_seed, p_collection, p_title, p_tags, p_favorite, p_visibility,
        CASE WHEN p_visibility = 'public' THEN now() END
    )
    RETURNING id INTO v_id;
    INSERT INTO library_variants (
        item_id, kind, mime_type, width, height, file_size_bytes, storage_key
    )
    SELECT v_id, v.kind, v.mime_type, v.width, v.height, v.file_size_bytes, p_variants ->> v.kind
    FROM asset_variants v
    WHERE v.asset_id = p_asset AND p_variants ? v.kind;
    UPDATE user_library SET variants = (
        SELECT coalesce(jsonb_object_agg(v.kind, jsonb_build_object(
                   'width', v.width, 'height', v.height, 'mime_type', v.mime_type,
                   'storage_key', v.storage_key)), '{}'::jsonb)
        FROM library_variants v WHERE v.item_id = v_id)
    WHERE id = v_id;
    RETURN QUERY SELECT 'created'::text, v_id;
END;
$$;

CREATE OR REPLACE FUNCTION genq_library_restore(
    p_item uuid, p_user uuid, p_ttl_s double precision, p_quota bigint
)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_usage library_usage;
    v_item user_library;
BEGIN
    INSERT INTO library_usage (user_id) VALUES (p_user) ON CONFLICT (user_id) DO NOTHING;
    SELECT u.* INTO v_usage FROM library_usage u WHERE u.user_id = p_user FOR UPDATE;
    SELECT l.* INTO v_item FROM user_library l
    WHERE l.id = p_item AND l.user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_item.deleted_at IS NULL THEN
        RETURN 'not_deleted';
    END IF;
    IF v_item.deleted_at <= now() - make_interval(secs => p_ttl_s) THEN
        RETURN 'not_found';
    END IF;
    IF v_usage.bytes_used + v_item.file_size_bytes > genq_storage_quota(p_user, p_quota) THEN
        RETURN 'quota';
    END IF;
    UPDATE user_library SET deleted_at = NULL, updated_at = now() WHERE id = p_item;
    RETURN 'restored';
END;
$$;

-- The feed filtered by type or by model: each reads a partial index of its own, of the same
-- rows (public, not deleted, not taken down) in the same order, led by the filtered column, so
-- a page seeks straight to the rows of that type or model instead of walking the whole feed
-- past the others (a type that is rare in the feed otherwise cost a scan of every public item).
-- The type-and-model feed reads the model's index.
CREATE INDEX user_library_feed_type_idx
    ON user_library (asset_type, published_at DESC, id DESC)
    WHERE visibility = 'public' AND deleted_at IS NULL AND taken_down_at IS NULL;
CREATE INDEX user_library_feed_model_idx
    ON user_library (model, published_at DESC, id DESC)
    WHERE visibility = 'public' AND deleted_at IS NULL AND taken_down_at IS NULL;

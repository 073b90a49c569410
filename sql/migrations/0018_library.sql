-- The permanent library: saved outputs, collections, sharing, trash and the storage quota.
--
-- user_collections: a user's named collections. asset_count is the number of the collection's
-- library items that are not deleted; only the trigger below writes it, so it stays exact under
-- any concurrency (adds, moves between collections, deletes, soft deletes, restores).
--
-- user_library: one saved output. Its bytes and variants live under permanent storage keys of
-- their own (copies), so workspace expiry never touches them. source_asset_id is the workspace
-- asset it was saved from (unique per user: saving it again returns the same item); it is set to
-- NULL when that asset expires. short_id is the random 11-character id of share links.
-- deleted_at marks the trash (purged with files and variants after the trash TTL);
-- taken_down_at hides an item from the feed and share links by an admin's decision.
--
-- library_usage: the bytes of each user's library items that are not deleted, kept by the same
-- trigger, and an optional per-user quota override. A save locks the user's row, so concurrent
-- saves are checked against the quota one after the other.

CREATE TABLE user_collections (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text NOT NULL,
    description text,
    asset_count integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_collections_user_name_key UNIQUE (user_id, name),
    CONSTRAINT user_collections_id_user_key UNIQUE (id, user_id),
    CONSTRAINT user_collections_asset_count_nonnegative CHECK (asset_count >= 0)
);
CREATE INDEX user_collections_user_created_idx
    ON user_collections (user_id, created_at DESC, id DESC);

CREATE TABLE user_library (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    short_id         text NOT NULL,
    source_asset_id  uuid REFERENCES workspace_assets (id) ON DELETE SET NULL,
    job_id           uuid,
    asset_type       text NOT NULL,
    storage_key      text NOT NULL,
    file_size_bytes  bigint NOT NULL,
    mime_type        text NOT NULL,
    duration_seconds double precision,
    width            integer,
    height           integer,
    fps              double precision,
    prompt           text,
    model            text,
    seed             bigint,
    collection_id    uuid,
    title            text,
    tags             text[] NOT NULL DEFAULT '{}',
    is_favorite      boolean NOT NULL DEFAULT false,
    visibility       text NOT NULL DEFAULT 'private',
    -- The variants as items show them ({kind: {width, height, mime_type, storage_key}}), kept
    -- with the row so the feed reads one table; library_variants holds the same, one row each.
    variants         jsonb NOT NULL DEFAULT '{}'::jsonb,
    published_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    taken_down_at    timestamptz,
    takedown_reason  text,
    search           tsvector GENERATED ALWAYS AS (
        to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(prompt, ''))
    ) STORED,
    CONSTRAINT user_library_short_id_key UNIQUE (short_id),
    CONSTRAINT user_library_user_source_key UNIQUE (user_id, source_asset_id),
    -- An item's collection is one of its owner's: the pair must name a collection of that user.
    -- Deleting a collection keeps its items, taken out of it.
    CONSTRAINT user_library_collection_fkey FOREIGN KEY (collection_id, user_id)
        REFERENCES user_collections (id, user_id) ON DELETE SET NULL (collection_id),
    CONSTRAINT user_library_asset_type_valid CHECK (asset_type IN ('image', 'video')),
    CONSTRAINT user_library_visibility_valid
        CHECK (visibility IN ('private', 'unlisted', 'public')),
    CONSTRAINT user_library_short_id_format CHECK (short_id ~ '^[A-Za-z0-9_-]{11}$'),
    CONSTRAINT user_library_size_nonnegative CHECK (file_size_bytes >= 0),
    CONSTRAINT user_library_tags_limit CHECK (cardinality(tags) <= 20)
);
CREATE INDEX user_library_user_created_idx
    ON user_library (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX user_library_collection_idx ON user_library (collection_id)
    WHERE collection_id IS NOT NULL;
CREATE INDEX user_library_tags_idx ON user_library USING gin (tags);
CREATE INDEX user_library_search_idx ON user_library USING gin (search);
CREATE INDEX user_library_storage_key_idx ON user_library (storage_key);
-- The feed: public, not deleted, not taken down, newest published first (keyset on this index).
CREATE INDEX user_library_feed_idx ON user_library (published_at DESC, id DESC)
    WHERE visibility = 'public' AND deleted_at IS NULL AND taken_down_at IS NULL;
-- The purge: deleted items, oldest deletion first.
CREATE INDEX user_library_trash_idx ON user_library (deleted_at) WHERE deleted_at IS NOT NULL;

-- The variants of a library item, copied to permanent keys with the item's bytes.
CREATE TABLE library_variants (
    item_id         uuid NOT NULL REFERENCES user_library (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    mime_type       text NOT NULL,
    width           integer NOT NULL,
    height          integer NOT NULL,
    file_size_bytes bigint NOT NULL,
    storage_key     text NOT NULL,
    PRIMARY KEY (item_id, kind),
    CONSTRAINT library_variants_kind_valid CHECK (kind IN ('thumb', 'web', 'poster'))
);
CREATE INDEX library_variants_storage_key_idx ON library_variants (storage_key);

CREATE TABLE library_usage (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    bytes_used  bigint NOT NULL DEFAULT 0,
    quota_bytes bigint,
    CONSTRAINT library_usage_bytes_nonnegative CHECK (bytes_used >= 0),
    CONSTRAINT library_usage_quota_nonnegative CHECK (quota_bytes IS NULL OR quota_bytes >= 0)
);

-- Keeps user_collections.asset_count and library_usage.bytes_used exact. An item counts in its
-- collection and in its owner's usage while it is not deleted. Two collections touched by one
-- move are updated in id order, so concurrent opposite moves cannot deadlock.
CREATE FUNCTION genq_library_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_old_coll uuid;
    v_new_coll uuid;
    v_old_bytes bigint := 0;
    v_new_bytes bigint := 0;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.deleted_at IS NULL THEN
        v_old_coll := OLD.collection_id;
        v_old_bytes := OLD.file_size_bytes;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.deleted_at IS NULL THEN
        v_new_coll := NEW.collection_id;
        v_new_bytes := NEW.file_size_bytes;
    END IF;
    IF v_old_coll IS DISTINCT FROM v_new_coll THEN
        IF v_old_coll IS NOT NULL AND v_new_coll IS NOT NULL AND v_new_coll < v_old_coll THEN
            UPDATE user_collections SET asset_count = asset_count + 1 WHERE id = v_new_coll;
            UPDATE user_collections SET asset_count = asset_count - 1 WHERE id = v_old_coll;
        ELSE
            IF v_old_coll IS NOT NULL THEN
                UPDATE user_collections SET asset_count = asset_count - 1 WHERE id = v_old_coll;
            END IF;
            IF v_new_coll IS NOT NULL THEN
                UPDATE user_collections SET asset_count = asset_count + 1 WHERE id = v_new_coll;
            END IF;
        END IF;
    END IF;
    -- Growth may create the usage row; shrinking only updates it (when the user is being
    -- deleted, the cascade may already have removed it).
    IF v_new_bytes > v_old_bytes THEN
        INSERT INTO library_usage AS u (user_id, bytes_used)
        VALUES (NEW.user_id, v_new_bytes - v_old_bytes)
        ON CONFLICT (user_id) DO UPDATE SET bytes_used = u.bytes_used + EXCLUDED.bytes_used;
    ELSIF v_new_bytes < v_old_bytes THEN
        UPDATE library_usage SET bytes_used = bytes_used - (v_old_bytes - v_new_bytes)
        WHERE user_id = coalesce(NEW.user_id, OLD.user_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER user_library_counts
AFTER INSERT OR DELETE OR UPDATE OF collection_id, deleted_at, file_size_bytes ON user_library
FOR EACH ROW EXECUTE FUNCTION genq_library_counts();

-- Saves workspace asset p_asset of p_user to the library, in one transaction:
--   'existing'  the user already saved this asset (deleted or not): that item, nothing written;
--   'not_found' the asset is not the user's, or has expired (even if its row still exists);
--   'no_collection' p_collection is not one of the user's collections;
--   'quota'     the item's bytes would take the user's library past its quota (the per-user
--               override, else p_quota): nothing written;
--   'created'   the new item. p_storage_key is the permanent copy of the asset's bytes and
--               p_variants ({kind: key}) those of its variants, copied before the call; a
--               variant missing from p_variants is not kept.
-- The asset row is locked (FOR SHARE) so the workspace expiry, which deletes it FOR UPDATE,
-- waits for the save or is waited for; the usage row is locked so concurrent saves of one user
-- are checked against the quota one after the other.
CREATE FUNCTION genq_library_save(
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
    IF v_usage.bytes_used + v_asset.file_size_bytes > coalesce(v_usage.quota_bytes, p_quota) THEN
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

-- Restores a deleted item of p_user still in the trash (deleted less than p_ttl_s ago), within
-- the quota as a save is: 'restored', 'not_deleted' (nothing to do), 'not_found' (no such item,
-- or its trash time is over), 'quota' (nothing written).
CREATE FUNCTION genq_library_restore(
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
    IF v_usage.bytes_used + v_item.file_size_bytes > coalesce(v_usage.quota_bytes, p_quota) THEN
        RETURN 'quota';
    END IF;
    UPDATE user_library SET deleted_at = NULL, updated_at = now() WHERE id = p_item;
    RETURN 'restored';
END;
$$;

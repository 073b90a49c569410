-- The library: saved items, collections, sharing and the trash.

-- library_save --
-- genq_library_save (sql/migrations/0018_library.sql): $1 user, $2 asset, $3 short_id,
-- $4 storage key of the copy, $5 jsonb {kind: key} of the variants' copies, $6 title, $7 tags,
-- $8 collection, $9 is_favorite, $10 visibility, $11 the server's default quota bytes
-- (GENQ_LIBRARY_QUOTA_BYTES; genq_storage_quota, 0022_library_quota_feed.sql).
SELECT outcome, item_id
FROM genq_library_save($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)

-- get_library_item --
-- One item of one user, deleted or not, with its variants. $1 item id, $2 user id.
SELECT l.*
FROM user_library l
WHERE l.id = $1 AND l.user_id = $2

-- list_library --
-- A user's items that are not deleted, newest first, filtered; keyset after ($9 created_at,
-- $10 id). $1 user, $2 collection_id, $3 tag, $4 is_favorite, $5 type, $6 model,
-- $7 visibility, $8 q (words, full text), $11 limit.
SELECT l.*
FROM user_library l
WHERE l.user_id = $1 AND l.deleted_at IS NULL
  AND ($2::uuid IS NULL OR l.collection_id = $2)
  AND ($3::text IS NULL OR l.tags @> ARRAY[$3::text])
  AND ($4::boolean IS NULL OR l.is_favorite = $4)
  AND ($5::text IS NULL OR l.asset_type = $5)
  AND ($6::text IS NULL OR l.model = $6)
  AND ($7::text IS NULL OR l.visibility = $7)
  AND ($8::text IS NULL OR l.search @@ plainto_tsquery('simple', $8))
  AND ($9::timestamptz IS NULL OR (l.created_at, l.id) < ($9, $10::uuid))
ORDER BY l.created_at DESC, l.id DESC
LIMIT $11

-- delete_library_item --
-- Soft delete: into the trash. $1 item, $2 user. Returns whether the item exists (deleted now
-- or before).
WITH moved AS (
    UPDATE user_library SET deleted_at = now(), updated_at = now()
    WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM moved)
    OR EXISTS (SELECT 1 FROM user_library WHERE id = $1 AND user_id = $2)

-- restore_library_item --
-- genq_library_restore: $1 item, $2 user, $3 trash TTL seconds, $4 default quota bytes.
SELECT genq_library_restore($1, $2, $3, $4)

-- update_library_item --
-- PATCH of an item that is not deleted: each field only when its flag is set. $1 item, $2 user,
-- $3/$4 title, $5/$6 tags, $7/$8 is_favorite, $9/$10 visibility, $11/$12 collection_id.
-- Becoming public (from private or unlisted) sets published_at: the feed's order.
UPDATE user_library SET
    title = CASE WHEN $3 THEN $4::text ELSE title END,
    tags = CASE WHEN $5 THEN $6::text[] ELSE tags END,
    is_favorite = CASE WHEN $7 THEN $8::boolean ELSE is_favorite END,
    published_at = CASE WHEN $9 AND $10::text = 'public' AND visibility <> 'public' THEN now()
                        ELSE published_at END,
    visibility = CASE WHEN $9 THEN $10::text ELSE visibility END,
    collection_id = CASE WHEN $11 THEN $12::uuid ELSE collection_id END,
    updated_at = now()
WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL
RETURNING id

-- lock_trash_past_ttl --
-- Deleted items whose trash time is over, oldest deletion first, with their files' keys; locked
-- so a concurrent purge skips them. $1 trash TTL seconds, $2 batch size.
SELECT l.id, l.storage_key,
       ARRAY(SELECT v.storage_key FROM library_variants v WHERE v.item_id = l.id) AS variant_keys
FROM user_library l
WHERE l.deleted_at <= now() - make_interval(secs => $1)
ORDER BY l.deleted_at
LIMIT $2
FOR UPDATE SKIP LOCKED

-- delete_library_items --
-- $1 uuid[] item ids (locked by this transaction); their variant rows go by cascade.
DELETE FROM user_library WHERE id = ANY($1::uuid[])

-- create_collection --
-- $1 user, $2 name, $3 description. Nothing (NULL row) when the name is taken.
INSERT INTO user_collections (user_id, name, description) VALUES ($1, $2, $3)
ON CONFLICT ON CONSTRAINT user_collections_user_name_key DO NOTHING
RETURNING *

-- get_collection --
-- $1 collection, $2 user.
SELECT * FROM user_collections WHERE id = $1 AND user_id = $2

-- list_collections --
-- $1 user's collections, newest first, keyset after ($2 created_at, $3 id); $4 limit.
SELECT * FROM user_collections
WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4

-- update_collection --
-- $1 collection, $2 user, $3/$4 name, $5/$6 description (each only when its flag is set).
UPDATE user_collections SET
    name = CASE WHEN $3 THEN $4::text ELSE name END,
    description = CASE WHEN $5 THEN $6::text ELSE description END,
    updated_at = now()
WHERE id = $1 AND user_id = $2
RETURNING *

-- delete_collection --
-- $1 collection, $2 user; its items stay, out of any collection (the foreign key's action).
DELETE FROM user_collections WHERE id = $1 AND user_id = $2 RETURNING id

-- feed --
-- The public feed (the view public_feed, 0037_public_feed.sql), newest published first, keyset
-- after ($1 published_at, $2 id; the first page: after ('infinity', any id)) on
-- user_library_feed_idx, whose WHERE and ORDER BY are these. $3 limit. The feed_of_* queries
-- are the same with a filter, each on an index led by its column (one statement per filter,
-- so each keeps one plan that seeks its index).
SELECT * FROM public_feed
WHERE (published_at, id) < ($1::timestamptz, $2::uuid)
ORDER BY published_at DESC, id DESC
LIMIT $3

-- feed_of_type --
-- As ``feed`` ($1 published_at, $2 id, $3 limit), of one asset type $4
-- (user_library_feed_type_idx).
SELECT * FROM public_feed
WHERE asset_type = $4::text AND (published_at, id) < ($1::timestamptz, $2::uuid)
ORDER BY published_at DESC, id DESC
LIMIT $3

-- feed_of_model --
-- As ``feed`` ($1 published_at, $2 id, $3 limit), of one model $4
-- (user_library_feed_model_idx).
SELECT * FROM public_feed
WHERE model = $4::text AND (published_at, id) < ($1::timestamptz, $2::uuid)
ORDER BY published_at DESC, id DESC
LIMIT $3

-- feed_of_type_and_model --
-- As ``feed`` ($1 published_at, $2 id, $3 limit), of one asset type $4 and model $5
-- (user_library_feed_model_idx).
SELECT * FROM public_feed
WHERE asset_type = $4::text AND model = $5::text
  AND (published_at, id) < ($1::timestamptz, $2::uuid)
ORDER BY published_at DESC, id DESC
LIMIT $3

-- get_shared --
-- A public or unlisted item that is not deleted or taken down, by its share id. $1 short_id.
SELECT l.id, l.short_id, l.asset_type, l.mime_type, l.file_size_bytes, l.width, l.height,
       l.duration_seconds, l.prompt, l.model, l.title, l.tags, l.published_at, l.storage_key,
       l.visibility, l.variants
FROM user_library l
WHERE l.short_id = $1 AND l.visibility IN ('public', 'unlisted')
  AND l.deleted_at IS NULL AND l.taken_down_at IS NULL

-- take_down_library_item --
-- $1 item, $2 reason. Returns the owner (NULL: no such item).
UPDATE user_library SET taken_down_at = coalesce(taken_down_at, now()), takedown_reason = $2,
                        updated_at = now()
WHERE id = $1
RETURNING user_id

-- set_storage_quota --
-- An admin's storage quota for one user (NULL: their plan's again), on the row saves lock.
-- $1 user, $2 quota bytes or NULL. No row: no such user.
INSERT INTO library_usage AS lu (user_id, quota_bytes)
SELECT id, $2::bigint FROM users WHERE id = $1
ON CONFLICT (user_id) DO UPDATE SET quota_bytes = EXCLUDED.quota_bytes
RETURNING lu.user_id

-- user_storage --
-- $1 user, $2 the server's default quota bytes: the bytes of their library items that are not
-- deleted, their own quota (NULL: none), their plan's, and the quota in force.
SELECT coalesce(lu.bytes_used, 0) AS used_bytes, lu.quota_bytes AS user_quota_bytes,
       p.storage_quota_bytes AS plan_quota_bytes, genq_storage_quota(u.id, $2) AS quota_bytes
FROM users u JOIN plans p ON p.name = u.plan
LEFT JOIN library_usage lu ON lu.user_id = u.id
WHERE u.id = $1

-- The public feed, said once: the items anyone may see in it (public, not deleted, not taken
-- down) and the columns it shows. The feed's statements (sql/queries/library.sql: feed and its
-- filtered forms) read this view; PostgreSQL inlines it, so each still seeks the partial index
-- whose WHERE is this one (user_library_feed_idx, 0018_library.sql; the type and model ones,
-- 0022_library_quota_feed.sql).
CREATE VIEW public_feed AS
SELECT l.id, l.short_id, l.asset_type, l.mime_type, l.file_size_bytes, l.width, l.height,
       l.duration_seconds, l.prompt, l.model, l.title, l.tags, l.published_at, l.storage_key,
       l.variants
FROM user_library l
WHERE l.visibility = 'public' AND l.deleted_at IS NULL AND l.taken_down_at IS NULL;

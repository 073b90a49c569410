-- Archive for terminal jobs past their retention period. The job is kept whole as JSON, so later
-- changes to generation_jobs never break archiving.
CREATE TABLE generation_jobs_archive (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    finished_at  timestamptz,
    job          jsonb NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generation_jobs_archive_user_idx ON generation_jobs_archive (user_id, finished_at DESC);

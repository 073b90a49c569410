-- Fair sharing: per-model provider limits.
--
-- models.max_concurrency: how many of the model's provider calls may run at once across every
-- worker; models.max_per_minute: how many predictions may be created in any 60 s. NULL is no
-- limit. Both come from the catalog TOML and are enforced by the workers in Redis
-- (shared/limits.py); the database only carries them from the catalog to the claim.

ALTER TABLE models ADD COLUMN max_concurrency integer,
                   ADD COLUMN max_per_minute integer,
    ADD CONSTRAINT models_max_concurrency_positive CHECK (max_concurrency > 0),
    ADD CONSTRAINT models_max_per_minute_positive CHECK (max_per_minute > 0);

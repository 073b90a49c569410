-- More providers: an OpenAI-compatible model names its server and the environment variable that
-- holds its key; a job waiting in a provider's own queue shows its place there.

ALTER TABLE models
    ADD COLUMN base_url text,
    ADD COLUMN api_key_env text;

-- NULL unless the provider last said the job is waiting in its queue (fal's IN_QUEUE).
ALTER TABLE generation_jobs
    ADD COLUMN provider_queue_position integer;

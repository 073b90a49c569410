-- The model catalog, synced from TOML files.

-- upsert_model --
-- $1 key, $2 provider, $3 ref, $4 media_type, $5 price_per_output, $6 max_outputs, $7 timeout_s,
-- $8 params (jsonb), $9 description, $10 enabled, $11 params_schema (jsonb, the effective one),
-- $12 price_tiers (jsonb array), $13 revision (a digest of the entry; the intake submits with it),
-- $14 base_url, $15 api_key_env (an OpenAI-compatible model's server and key variable, or NULL),
-- $16 price_per_second (NULL: priced per output), $17 fallback (a model key, or NULL),
-- $18 max_concurrency, $19 max_per_minute (NULL: no limit).
INSERT INTO models (key, provider, ref, media_type, price_per_output, max_outputs, timeout_s,
                    params, description, enabled, params_schema, price_tiers, revision,
                    base_url, api_key_env, price_per_second, fallback, max_concurrency,
                    max_per_minute, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        now())
ON CONFLICT (key) DO UPDATE SET
    provider = excluded.provider, ref = excluded.ref, media_type = excluded.media_type,
    price_per_output = excluded.price_per_output, max_outputs = excluded.max_outputs,
    timeout_s = excluded.timeout_s, params = excluded.params,
    description = excluded.description, enabled = excluded.enabled,
    params_schema = excluded.params_schema, price_tiers = excluded.price_tiers,
    revision = excluded.revision, base_url = excluded.base_url,
    api_key_env = excluded.api_key_env, price_per_second = excluded.price_per_second,
    fallback = excluded.fallback, max_concurrency = excluded.max_concurrency,
    max_per_minute = excluded.max_per_minute, updated_at = now()

-- disable_models_not_in --
-- Models dropped from the catalog files stay (jobs refer to them) but are disabled. $1 text[] keys.
UPDATE models SET enabled = false, updated_at = now() WHERE enabled AND NOT (key = ANY($1::text[]))

-- list_models --
-- Enabled models, by key.
SELECT key, provider, ref, media_type, price_per_output, max_outputs, timeout_s, params,
       params_schema, price_tiers, revision, description, price_per_second, fallback,
       max_concurrency, max_per_minute
FROM models WHERE enabled ORDER BY key

-- get_model --
-- $1 key. Disabled models too (the caller checks enabled).
SELECT key, provider, ref, media_type, price_per_output, max_outputs, timeout_s, params,
       params_schema, price_tiers, revision, description, enabled, price_per_second, fallback,
       max_concurrency, max_per_minute
FROM models WHERE key = $1

-- catalog_providers --
-- Every provider the catalog names (disabled models too), for the worker to build.
SELECT DISTINCT provider FROM models ORDER BY provider

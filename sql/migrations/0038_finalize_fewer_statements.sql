-- Final writes with fewer statements and no re-planning per call (genq_finalize_set of
-- 0028_set_based_finalize.sql, same arguments, answers, locks and lock order):
--   * the batch's jobs are locked by the statement that decides them (FOR UPDATE OF the job,
--     in (user, job) order), not by one statement before it: a job changed meanwhile is
--     decided on its locked, newest row, as before; a job this attempt no longer holds is
--     neither locked nor written;
--   * genq_finalize and genq_finalize_batch are PL/pgSQL: a SQL function that is not inlined
--     parses and plans its body again on every call, PL/pgSQL keeps the plan for the session.
-- Both together, measured on one connection (600 jobs, old and new alternating three times):
-- backend CPU per job written alone 1,517-2,050 -> 1,317-1,400 us, in batches of four
-- 617-733 -> 500-550 us (docs/performance.md).

CREATE OR REPLACE FUNCTION genq_finalize_set(p_items genq_finalize_item[], p_asset_ttl_s double precision)
RETURNS TABLE (item integer, status text)
LANGUAGE plpgsql AS $$
DECLARE
    v_held genq_finalize_item[];
    v_bad record;
BEGIN
    -- 1, 2. Those this attempt holds, locked in (user, job) order and decided.
    v_held := ARRAY(
        SELECT ROW(
            i.item, i.job, i.attempt,
            CASE WHEN c.canceled THEN 'canceled' ELSE i.status END,
            CASE WHEN c.canceled THEN 0 ELSE i.made END,
            CASE WHEN c.canceled THEN 'canceled' ELSE i.error_code END,
            CASE WHEN c.canceled THEN 'The job was canceled.' ELSE i.error_message END,
            CASE WHEN c.canceled OR i.made <= 0 THEN '[]'::jsonb ELSE i.assets END,
            j.user_id, j.reservation_id,
            CASE WHEN c.canceled OR i.made <= 0 THEN 0
                 WHEN j.price_per_second IS NOT NULL THEN (
                     SELECT coalesce(sum(least(
                                coalesce(ceil(a.duration_seconds)::bigint * j.price_per_second,
                                         j.price_per_output),
                                j.price_per_output)), 0)
                     FROM jsonb_to_recordset(i.assets) AS a(duration_seconds double precision))
                 ELSE i.made * j.price_per_output
            END
        )::genq_finalize_item
        FROM (SELECT DISTINCT ON (x.job) x.* FROM unnest(p_items) x ORDER BY x.job, x.item) i
        JOIN generation_jobs j
          ON j.id = i.job AND j.status = 'running' AND j.attempt = i.attempt
        CROSS JOIN LATERAL (SELECT j.cancel_requested_at IS NOT NULL AS canceled) c
        ORDER BY j.user_id, j.id
        FOR UPDATE OF j
    );

    IF cardinality(v_held) > 0 THEN
        -- 3. The terminal transitions, the asset rows and their variants.
        UPDATE generation_jobs j
        SET status = h.status, outputs_made = h.made, error_code = h.error_code,
            error_message = h.error_message, finished_at = now(), lease_owner = NULL,
            lease_expires_at = NULL, updated_at = now()
        FROM unnest(v_held) h
        WHERE j.id = h.job;

        -- assets: [{asset_index, asset_type, storage_key, file_size_bytes, mime_type,
        -- duration_seconds, width, height, fps, variants: [{kind, mime_type, width, height,
        -- file_size_bytes, storage_key}, ...]}, ...], only for a success. A replay inserts
        -- nothing.
        INSERT INTO workspace_assets AS w (
            user_id, job_id, asset_index, asset_type, storage_key, file_size_bytes,
            mime_type, duration_seconds, width, height, fps, generation_seed, original_prompt,
            model_used, generation_settings, created_at, expires_at
        )
        SELECT j.user_id, j.id, a.asset_index, a.asset_type, a.storage_key,
               a.file_size_bytes, a.mime_type, a.duration_seconds, a.width, a.height, a.fps,
               j.seed, j.prompt, coalesce(j.ran_model, j.model), j.params, now(),
               now() + make_interval(secs => p_asset_ttl_s)
        FROM unnest(v_held) h
        JOIN generation_jobs j ON j.id = h.job
        CROSS JOIN LATERAL jsonb_to_recordset(h.assets) AS a(
            asset_index integer, asset_type text, storage_key text,
            file_size_bytes bigint, mime_type text, duration_seconds double precision,
            width integer, height integer, fps double precision
        )
        WHERE h.made > 0
        ON CONFLICT ON CONSTRAINT workspace_assets_user_job_index_key DO NOTHING;

        INSERT INTO asset_variants (
            asset_id, kind, mime_type, width, height, file_size_bytes, storage_key
        )
        SELECT w.id, v.kind, v.mime_type, v.width, v.height, v.file_size_bytes, v.storage_key
        FROM unnest(v_held) h
        CROSS JOIN LATERAL jsonb_to_recordset(h.assets) AS a(asset_index integer, variants jsonb)
        CROSS JOIN LATERAL jsonb_to_recordset(coalesce(a.variants, '[]'::jsonb)) AS v(
            kind text, mime_type text, width integer, height integer, file_size_bytes bigint,
            storage_key text
        )
        JOIN workspace_assets w
          ON w.user_id = h.user_id AND w.job_id = h.job AND w.asset_index = a.asset_index
        WHERE h.made > 0
        ON CONFLICT (asset_id, kind) DO NOTHING;

        -- 4. The settlement of the open reservations.
        SELECT h.job, h.capture, r.amount INTO v_bad
        FROM unnest(v_held) h JOIN credit_reservations r ON r.id = h.reservation
        WHERE r.status = 'open' AND (h.capture < 0 OR h.capture > r.amount)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'capture % outside 0..%', v_bad.capture, v_bad.amount
                USING ERRCODE = 'check_violation',
                      CONSTRAINT = 'credit_reservations_capture_in_range';
        END IF;

        PERFORM 1 FROM (
            SELECT a.user_id FROM credit_accounts a
            WHERE a.user_id IN (SELECT h.user_id FROM unnest(v_held) h
                                WHERE h.reservation IS NOT NULL)
            ORDER BY a.user_id FOR UPDATE
        ) s;

        WITH settle AS (
            SELECT h.item, h.job, r.id, r.user_id, r.amount, h.capture,
                   r.amount - h.capture AS refund
            FROM unnest(v_held) h JOIN credit_reservations r ON r.id = h.reservation
            WHERE r.status = 'open'
        ), running AS (
            SELECT s.*, a.balance + sum(s.refund) OVER (
                       PARTITION BY s.user_id ORDER BY s.item) AS after
            FROM settle s JOIN credit_accounts a ON a.user_id = s.user_id
        ), ledger AS (
            INSERT INTO credit_ledger
                (user_id, kind, amount, reserved_delta, balance_after, reservation_id, job_id)
            SELECT s.user_id, e.kind, e.amount, e.reserved_delta, e.balance_after, s.id, s.job
            FROM running s
            CROSS JOIN LATERAL (VALUES
                (1, 'capture', 0::bigint, -s.capture, s.after - s.refund, s.capture > 0),
                (2, 'refund', s.refund, -s.refund, s.after, s.refund > 0)
            ) AS e(n, kind, amount, reserved_delta, balance_after, wanted)
            WHERE e.wanted
            ORDER BY s.user_id, s.item, e.n
        ), accounts AS (
            UPDATE credit_accounts a
            SET balance = a.balance + t.refund, reserved = a.reserved - t.amount,
                updated_at = now()
            FROM (SELECT s.user_id, sum(s.refund) AS refund, sum(s.amount) AS amount
                  FROM settle s GROUP BY s.user_id) t
            WHERE a.user_id = t.user_id
        )
        UPDATE credit_reservations r
        SET status = CASE WHEN s.capture > 0 THEN 'captured' ELSE 'refunded' END,
            captured = s.capture, refunded = s.refund, settled_at = now()
        FROM settle s
        WHERE r.id = s.id;
    END IF;

    RETURN QUERY
    SELECT x.item, h.status FROM unnest(p_items) x LEFT JOIN unnest(v_held) h ON h.item = x.item
    ORDER BY x.item;
END;
$$;

CREATE OR REPLACE FUNCTION genq_finalize_batch(p_items jsonb, p_asset_ttl_s double precision)
RETURNS TABLE (item integer, status text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT s.item, s.status FROM genq_finalize_set(
        ARRAY(SELECT ROW(i.item, i.job, i.attempt, i.status, i.made, i.error_code,
                         i.error_message, i.assets, NULL, NULL, NULL)::genq_finalize_item
              FROM jsonb_to_recordset(p_items) AS i(
                  item integer, job uuid, attempt integer, status text, made integer,
                  error_code text, error_message text, assets jsonb)),
        p_asset_ttl_s) s;
END;
$$;

CREATE OR REPLACE FUNCTION genq_finalize(
    p_job uuid, p_attempt integer, p_status text, p_made integer, p_error_code text,
    p_error_message text, p_assets jsonb, p_asset_ttl_s double precision
)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT s.status FROM genq_finalize_set(
        ARRAY[ROW(0, p_job, p_attempt, p_status, p_made, p_error_code, p_error_message,
                  coalesce(p_assets, '[]'::jsonb), NULL, NULL, NULL)::genq_finalize_item],
        p_asset_ttl_s) s);
END;
$$;

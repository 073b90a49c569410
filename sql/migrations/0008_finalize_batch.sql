-- Group commit for the worker's final writes: many genq_finalize calls in one statement (one
-- round trip, one transaction, one WAL flush). Each settlement locks its account until the
-- batch commits, so items are processed in account order, as genq_submit_batch does: two
-- batches never wait for each other's accounts in a cycle. Any error (a deadlock with some
-- other path included) aborts the whole statement and writes nothing; the worker then
-- finalizes each job alone.

CREATE FUNCTION genq_finalize_batch(p_items jsonb, p_asset_ttl_s double precision)
RETURNS TABLE (item integer, held boolean)
LANGUAGE plpgsql AS $$
DECLARE
    -- p_items: [{item, job, user_id, attempt, status, made, error_code, error_message,
    -- assets}, ...]
    v_in record;
BEGIN
    FOR v_in IN
        SELECT * FROM jsonb_to_recordset(p_items) AS i(
            item integer, job uuid, user_id uuid, attempt integer, status text, made integer,
            error_code text, error_message text, assets jsonb
        )
        ORDER BY i.user_id, i.job, i.item
    LOOP
        item := v_in.item;
        held := genq_finalize(v_in.job, v_in.attempt, v_in.status, v_in.made, v_in.error_code,
                              v_in.error_message, v_in.assets, p_asset_ttl_s);
        RETURN NEXT;
    END LOOP;
END;
$$;

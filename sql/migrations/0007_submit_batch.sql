-- Group commit for the intake: many submissions in one statement (one round trip, one
-- transaction, one WAL flush). Each item runs genq_submit in its own subtransaction, so a
-- refusal (the named-constraint exceptions genq_submit raises) rolls back that item alone and is
-- returned as its result; any other error aborts the whole statement, writing nothing.
--
-- Items are processed in (user, key) order, so two batches take account and key locks in the
-- same order. One interleaving can still deadlock (keyed submissions of one user split across
-- two batches): PostgreSQL aborts one statement, and the caller retries its items one by one.

CREATE FUNCTION genq_submit_batch(
    p_items jsonb, p_max_attempts integer, p_key_ttl_s double precision,
    p_reservation_ttl_s double precision
)
RETURNS TABLE (
    item integer, job_id uuid, replayed boolean, created_at timestamptz, params jsonb,
    price_per_output bigint, reserved bigint, error_state text, error_constraint text,
    error_detail text, error_message text
)
LANGUAGE plpgsql AS $$
DECLARE
    -- p_items: [{item, job, user_id, model, prompt, num_outputs, params, seed, key,
    -- request_hash}, ...]
    v_in record;
    v_out record;
BEGIN
    FOR v_in IN
        SELECT * FROM jsonb_to_recordset(p_items) AS i(
            item integer, job uuid, user_id uuid, model text, prompt text, num_outputs integer,
            params jsonb, seed bigint, key text, request_hash text
        )
        ORDER BY i.user_id, i.key NULLS LAST, i.item
    LOOP
        item := v_in.item;
        BEGIN
            SELECT s.* INTO v_out FROM genq_submit(
                v_in.job, v_in.user_id, v_in.model, v_in.prompt, v_in.num_outputs,
                v_in.params, v_in.seed, p_max_attempts, v_in.key, v_in.request_hash,
                p_key_ttl_s, p_reservation_ttl_s
            ) s;
            job_id := v_out.job_id;
            replayed := v_out.replayed;
            created_at := v_out.created_at;
            params := v_out.params;
            price_per_output := v_out.price_per_output;
            reserved := v_out.reserved;
            error_state := NULL;
            error_constraint := NULL;
            error_detail := NULL;
            error_message := NULL;
        EXCEPTION WHEN unique_violation OR check_violation OR no_data_found THEN
            GET STACKED DIAGNOSTICS
                error_state = RETURNED_SQLSTATE, error_constraint = CONSTRAINT_NAME,
                error_detail = PG_EXCEPTION_DETAIL, error_message = MESSAGE_TEXT;
            job_id := NULL;
            replayed := NULL;
            created_at := NULL;
            params := NULL;
            price_per_output := NULL;
            reserved := NULL;
        END;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- No new hold for a disabled user, checked by each path that raises a hold instead of by a
-- trigger on every account update that raises `reserved` (0026_operations.sql).
--
-- Two functions raise an account's `reserved`, and each now refuses a disabled user itself,
-- after it has locked the account row (the disable locks that row first, so a check made after
-- the lock sees a disable that committed while it waited):
--   - genq_submit_set (0027_set_based_submit.sql), under genq_submit and genq_submit_batch:
--     it already refuses the user's items (`users_account_disabled`, per item, nothing written);
--   - genq_reserve (0001_schema.sql): below, the same refusal raised, nothing written.
-- The trigger ran a PL/pgSQL function and a users probe for each account of every submit batch
-- and repeated what genq_submit_set had just checked in the same statement.

DROP TRIGGER credit_accounts_refuse_disabled_reserve ON credit_accounts;
DROP FUNCTION genq_refuse_disabled_reserve();

CREATE OR REPLACE FUNCTION genq_reserve(
    p_user uuid, p_amount bigint, p_key text, p_job uuid, p_expires_at timestamptz
)
RETURNS TABLE (reservation_id uuid, entry_id bigint, balance_after bigint, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_prior credit_ledger;
    v_balance bigint;
    v_reservation uuid;
BEGIN
    PERFORM 1 FROM credit_accounts a WHERE a.user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user USING ERRCODE = 'no_data_found';
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT * INTO v_prior FROM credit_ledger l WHERE l.user_id = p_user AND l.idempotency_key = p_key;
        IF FOUND THEN
            IF v_prior.kind <> 'reserve' OR v_prior.amount <> -p_amount THEN
                RAISE EXCEPTION 'idempotency key % was used with other parameters', p_key
                    USING ERRCODE = 'unique_violation', CONSTRAINT = 'credit_ledger_idempotency_mismatch';
            END IF;
            RETURN QUERY SELECT v_prior.reservation_id, v_prior.id, v_prior.balance_after, true;
            RETURN;
        END IF;
    END IF;
    -- Read after the account lock above: a disable that held it has committed by now.
    IF EXISTS (SELECT 1 FROM users u WHERE u.id = p_user AND u.disabled_at IS NOT NULL) THEN
        RAISE EXCEPTION 'the account of user % is disabled', p_user
            USING ERRCODE = 'check_violation', CONSTRAINT = 'users_account_disabled';
    END IF;
    -- Fails on credit_accounts_balance_nonnegative when the balance is short: nothing is written.
    UPDATE credit_accounts a
        SET balance = a.balance - p_amount, reserved = a.reserved + p_amount, updated_at = now()
        WHERE a.user_id = p_user RETURNING a.balance INTO v_balance;
    INSERT INTO credit_reservations AS r (user_id, job_id, amount, expires_at)
        VALUES (p_user, p_job, p_amount, p_expires_at) RETURNING r.id INTO v_reservation;
    RETURN QUERY
        INSERT INTO credit_ledger AS l
            (user_id, kind, amount, reserved_delta, balance_after, reservation_id, job_id, idempotency_key)
        VALUES (p_user, 'reserve', -p_amount, p_amount, v_balance, v_reservation, p_job, p_key)
        RETURNING v_reservation, l.id, l.balance_after, false;
END;
$$;

-- Operations: the audit log of admin actions, API key lifecycle (last use, revocation),
-- disabled users, and admin credit corrections (ledger kind `adjust`).

-- Append-only: every admin action, in the same transaction as the action itself. Rows are never
-- changed or removed: a trigger refuses UPDATE, DELETE and TRUNCATE for every role.
CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL,
    action        text NOT NULL,
    target_type   text,
    target_id     text,
    request_id    text,
    amount_before bigint,
    amount_after  bigint,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT audit_log_actor_not_blank CHECK (length(actor) > 0),
    CONSTRAINT audit_log_details_object CHECK (jsonb_typeof(details) = 'object')
);
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, id DESC);

CREATE FUNCTION genq_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'audit_log_append_only';
END;
$$;

CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION genq_audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION genq_audit_log_append_only();

-- When a key last authenticated a request (touched at most once a minute, on a cache miss).
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

-- A disabled user's credentials are refused; set and cleared by an admin.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;

-- No new hold for a disabled user: a reservation raises `reserved`, and this fires only then.
-- A submission that passed authentication just before the user was disabled and reserves after
-- the disable committed is refused here (it waits for the account row the disable locked), so
-- no queued job of a disabled user is left behind its disable.
CREATE FUNCTION genq_refuse_disabled_reserve() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM users u WHERE u.id = NEW.user_id AND u.disabled_at IS NOT NULL) THEN
        RAISE EXCEPTION 'the account of user % is disabled', NEW.user_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'users_account_disabled';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER credit_accounts_refuse_disabled_reserve BEFORE UPDATE ON credit_accounts
FOR EACH ROW WHEN (NEW.reserved > OLD.reserved)
EXECUTE FUNCTION genq_refuse_disabled_reserve();

-- `adjust`: an admin's correction of the spendable balance, either way (a negative grant, or a
-- finished job's captured credits given back, with its job_id), never touching holds.
ALTER TABLE credit_ledger DROP CONSTRAINT credit_ledger_kind_valid;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_kind_valid
    CHECK (kind IN ('grant', 'reserve', 'capture', 'refund', 'adjust'));
ALTER TABLE credit_ledger DROP CONSTRAINT credit_ledger_shape_valid;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_shape_valid CHECK (
    (kind = 'grant' AND amount > 0 AND reserved_delta = 0)
    OR (kind = 'reserve' AND amount < 0 AND reserved_delta = -amount)
    OR (kind = 'capture' AND amount = 0 AND reserved_delta < 0)
    OR (kind = 'refund' AND amount > 0 AND reserved_delta = -amount)
    OR (kind = 'adjust' AND amount <> 0 AND reserved_delta = 0)
);

-- An admin correction: add p_amount (either sign) to the spendable balance, as ledger kind
-- `adjust`, under the account lock, so a concurrent reserve and a negative adjust never take
-- the balance below zero together (credit_accounts_balance_nonnegative refuses the later one).
-- p_job: the job it is about (a refund of its captured credits), or NULL. Replaying p_key returns
-- the first entry (replayed = true); the key with another amount or job is refused.
CREATE FUNCTION genq_adjust(p_user uuid, p_amount bigint, p_key text, p_reason text, p_job uuid)
RETURNS TABLE (entry_id bigint, balance_before bigint, balance_after bigint, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_prior credit_ledger;
    v_before bigint;
    v_balance bigint;
BEGIN
    SELECT a.balance INTO v_before FROM credit_accounts a WHERE a.user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user USING ERRCODE = 'no_data_found';
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT * INTO v_prior FROM credit_ledger l
        WHERE l.user_id = p_user AND l.idempotency_key = p_key;
        IF FOUND THEN
            IF v_prior.kind <> 'adjust' OR v_prior.amount <> p_amount
               OR v_prior.job_id IS DISTINCT FROM p_job THEN
                RAISE EXCEPTION 'idempotency key % was used with other parameters', p_key
                    USING ERRCODE = 'unique_violation',
                          CONSTRAINT = 'credit_ledger_idempotency_mismatch';
            END IF;
            RETURN QUERY SELECT v_prior.id, v_before, v_before, true;
            RETURN;
        END IF;
    END IF;
    -- Fails on credit_accounts_balance_nonnegative (too little to take back) or
    -- credit_accounts_balance_limit: nothing is written.
    UPDATE credit_accounts a SET balance = a.balance + p_amount, updated_at = now()
        WHERE a.user_id = p_user RETURNING a.balance INTO v_balance;
    RETURN QUERY
        INSERT INTO credit_ledger AS l
            (user_id, kind, amount, balance_after, job_id, idempotency_key, reason)
        VALUES (p_user, 'adjust', p_amount, v_balance, p_job, p_key, p_reason)
        RETURNING l.id, v_before, l.balance_after, false;
END;
$$;

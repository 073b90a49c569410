-- genq schema, version 1: accounts, the two-phase credit ledger, the model catalog,
-- generation jobs and workspace assets.

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_not_blank CHECK (length(btrim(email)) > 0)
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- API keys are random 32-byte secrets: a SHA-256 of the key is enough to store and look up
-- (no slow KDF needed for high-entropy secrets), and the prefix is what the user sees.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

-- balance: spendable now (open reservations already taken off) == sum(ledger.amount).
-- reserved: held by open reservations == sum(ledger.reserved_delta).
CREATE TABLE credit_accounts (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance     bigint NOT NULL DEFAULT 0,
    reserved    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_accounts_balance_nonnegative CHECK (balance >= 0),
    CONSTRAINT credit_accounts_reserved_nonnegative CHECK (reserved >= 0)
);

-- A pending transfer in the two-phase sense: opened by reserve, settled exactly once by
-- capture (the unused part refunded in the same transaction) or refund.
CREATE TABLE credit_reservations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES credit_accounts (user_id) ON DELETE CASCADE,
    job_id      uuid,
    amount      bigint NOT NULL,
    status      text NOT NULL DEFAULT 'open',
    captured    bigint NOT NULL DEFAULT 0,
    refunded    bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    settled_at  timestamptz,
    CONSTRAINT credit_reservations_amount_positive CHECK (amount > 0),
    CONSTRAINT credit_reservations_status_valid
        CHECK (status IN ('open', 'captured', 'refunded')),
    CONSTRAINT credit_reservations_settlement_consistent CHECK (
        (status = 'open' AND captured = 0 AND refunded = 0 AND settled_at IS NULL)
        OR (status <> 'open' AND captured >= 0 AND refunded >= 0
            AND captured + refunded = amount AND settled_at IS NOT NULL)
    )
);
CREATE INDEX credit_reservations_open_expiry_idx
    ON credit_reservations (expires_at) WHERE status = 'open';
CREATE INDEX credit_reservations_job_id_idx ON credit_reservations (job_id);

-- Append-only. amount is the signed change to balance, reserved_delta to reserved:
--   grant  (+n, 0)   reserve (-n, +n)   capture (0, -k)   refund (+r, -r)
CREATE TABLE credit_ledger (
    id              bigserial PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES credit_accounts (user_id) ON DELETE CASCADE,
    kind            text NOT NULL,
    amount          bigint NOT NULL,
    reserved_delta  bigint NOT NULL DEFAULT 0,
    balance_after   bigint NOT NULL,
    reservation_id  uuid REFERENCES credit_reservations (id),
    job_id          uuid,
    idempotency_key text,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_ledger_kind_valid
        CHECK (kind IN ('grant', 'reserve', 'capture', 'refund')),
    CONSTRAINT credit_ledger_shape_valid CHECK (
        (kind = 'grant' AND amount > 0 AND reserved_delta = 0)
        OR (kind = 'reserve' AND amount < 0 AND reserved_delta = -amount)
        OR (kind = 'capture' AND amount = 0 AND reserved_delta < 0)
        OR (kind = 'refund' AND amount > 0 AND reserved_delta = -amount)
    ),
    CONSTRAINT credit_ledger_balance_after_nonnegative CHECK (balance_after >= 0),
    CONSTRAINT credit_ledger_idempotency_key UNIQUE (user_id, idempotency_key)
);
CREATE INDEX credit_ledger_user_id_idx ON credit_ledger (user_id, id DESC);
CREATE INDEX credit_ledger_reservation_id_idx ON credit_ledger (reservation_id);

CREATE TABLE models (
    key              text PRIMARY KEY,
    provider         text NOT NULL,
    ref              text NOT NULL,
    media_type       text NOT NULL,
    price_per_output bigint NOT NULL,
    max_outputs      integer NOT NULL,
    timeout_s        integer NOT NULL,
    params           jsonb NOT NULL DEFAULT '{}'::jsonb,
    description      text NOT NULL DEFAULT '',
    enabled          boolean NOT NULL DEFAULT true,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_media_type_valid CHECK (media_type IN ('image', 'video')),
    CONSTRAINT models_price_nonnegative CHECK (price_per_output >= 0),
    CONSTRAINT models_max_outputs_positive CHECK (max_outputs > 0),
    CONSTRAINT models_timeout_positive CHECK (timeout_s > 0),
    CONSTRAINT models_params_object CHECK (jsonb_typeof(params) = 'object')
);

CREATE TABLE generation_jobs (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    model                  text NOT NULL REFERENCES models (key),
    provider               text NOT NULL,
    status                 text NOT NULL DEFAULT 'queued',
    prompt                 text NOT NULL,
    num_outputs            integer NOT NULL,
    params                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    seed                   bigint,
    price_per_output       bigint NOT NULL,
    reservation_id         uuid REFERENCES credit_reservations (id),
    provider_prediction_id text,
    attempt                integer NOT NULL DEFAULT 0,
    max_attempts           integer NOT NULL DEFAULT 3,
    lease_owner            text,
    lease_expires_at       timestamptz,
    cancel_requested_at    timestamptz,
    outputs_made           integer,
    error_code             text,
    error_message          text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    enqueued_at            timestamptz,
    started_at             timestamptz,
    finished_at            timestamptz,
    CONSTRAINT generation_jobs_status_valid
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    CONSTRAINT generation_jobs_num_outputs_positive CHECK (num_outputs > 0),
    CONSTRAINT generation_jobs_terminal_has_finished_at CHECK (
        (status IN ('succeeded', 'failed', 'canceled')) = (finished_at IS NOT NULL)
    )
);
CREATE INDEX generation_jobs_user_created_idx ON generation_jobs (user_id, created_at DESC, id DESC);
CREATE INDEX generation_jobs_queued_idx ON generation_jobs (created_at) WHERE status = 'queued';
CREATE INDEX generation_jobs_running_lease_idx
    ON generation_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX generation_jobs_finished_idx
    ON generation_jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Stripe-style idempotency for POST requests: the key, a hash of the request, and what it made.
CREATE TABLE idempotency_keys (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key          text NOT NULL,
    request_hash text NOT NULL,
    job_id       uuid REFERENCES generation_jobs (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE workspace_assets (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    job_id              uuid NOT NULL REFERENCES generation_jobs (id) ON DELETE CASCADE,
    asset_index         integer NOT NULL,
    asset_type          text NOT NULL,
    temp_storage_path   text NOT NULL,
    file_size_bytes     bigint NOT NULL,
    mime_type           text NOT NULL,
    duration_seconds    double precision,
    width               integer,
    height              integer,
    generation_seed     bigint,
    original_prompt     text,
    model_used          text,
    generation_settings jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL DEFAULT (now() + interval '7 days'),
    CONSTRAINT workspace_assets_user_job_index_key UNIQUE (user_id, job_id, asset_index),
    CONSTRAINT workspace_assets_asset_type_valid CHECK (asset_type IN ('image', 'video')),
    CONSTRAINT workspace_assets_asset_index_nonnegative CHECK (asset_index >= 0),
    CONSTRAINT workspace_assets_size_nonnegative CHECK (file_size_bytes >= 0)
);
CREATE INDEX workspace_assets_expires_idx ON workspace_assets (expires_at);
CREATE INDEX workspace_assets_user_created_idx ON workspace_assets (user_id, created_at DESC, id DESC);
CREATE INDEX workspace_assets_job_idx ON workspace_assets (job_id);


-- Ledger operations. Each one locks the account row first, so every operation on one account
-- is serialized and an idempotency key checked after the lock sees any racer's committed row.
-- Domain errors are raised with named constraints that shared/ledger.py maps to exceptions.

CREATE FUNCTION genq_grant(p_user uuid, p_amount bigint, p_key text, p_reason text)
RETURNS TABLE (entry_id bigint, balance_after bigint, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_prior credit_ledger;
    v_balance bigint;
BEGIN
    PERFORM 1 FROM credit_accounts a WHERE a.user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user USING ERRCODE = 'no_data_found';
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT * INTO v_prior FROM credit_ledger l WHERE l.user_id = p_user AND l.idempotency_key = p_key;
        IF FOUND THEN
            IF v_prior.kind <> 'grant' OR v_prior.amount <> p_amount THEN
                RAISE EXCEPTION 'idempotency key % was used with other parameters', p_key
                    USING ERRCODE = 'unique_violation', CONSTRAINT = 'credit_ledger_idempotency_mismatch';
            END IF;
            RETURN QUERY SELECT v_prior.id, v_prior.balance_after, true;
            RETURN;
        END IF;
    END IF;
    UPDATE credit_accounts a SET balance = a.balance + p_amount, updated_at = now()
        WHERE a.user_id = p_user RETURNING a.balance INTO v_balance;
    RETURN QUERY
        INSERT INTO credit_ledger AS l (user_id, kind, amount, balance_after, idempotency_key, reason)
        VALUES (p_user, 'grant', p_amount, v_balance, p_key, p_reason)
        RETURNING l.id, l.balance_after, false;
END;
$$;

CREATE FUNCTION genq_reserve(
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

-- Settle a reservation exactly once: capture p_capture of it and refund the rest (p_capture = 0
-- is a full refund). A reservation already settled is returned unchanged with replayed = true.
CREATE FUNCTION genq_settle(p_reservation uuid, p_capture bigint)
RETURNS TABLE (
    reservation_id uuid, user_id uuid, status text, captured bigint, refunded bigint,
    balance_after bigint, replayed boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    v_res credit_reservations;
    v_refund bigint;
    v_balance bigint;
BEGIN
    SELECT * INTO v_res FROM credit_reservations r WHERE r.id = p_reservation FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no reservation %', p_reservation USING ERRCODE = 'no_data_found';
    END IF;
    IF v_res.status <> 'open' THEN
        SELECT a.balance INTO v_balance FROM credit_accounts a WHERE a.user_id = v_res.user_id;
        RETURN QUERY SELECT v_res.id, v_res.user_id, v_res.status, v_res.captured, v_res.refunded,
            v_balance, true;
        RETURN;
    END IF;
    IF p_capture < 0 OR p_capture > v_res.amount THEN
        RAISE EXCEPTION 'capture % outside 0..%', p_capture, v_res.amount
            USING ERRCODE = 'check_violation', CONSTRAINT = 'credit_reservations_capture_in_range';
    END IF;
    v_refund := v_res.amount - p_capture;
    UPDATE credit_accounts a
        SET balance = a.balance + v_refund, reserved = a.reserved - v_res.amount, updated_at = now()
        WHERE a.user_id = v_res.user_id RETURNING a.balance INTO v_balance;
    IF p_capture > 0 THEN
        INSERT INTO credit_ledger
            (user_id, kind, amount, reserved_delta, balance_after, reservation_id, job_id, idempotency_key)
        VALUES (v_res.user_id, 'capture', 0, -p_capture, v_balance - v_refund, v_res.id, v_res.job_id,
            'settle:' || v_res.id || ':capture');
    END IF;
    IF v_refund > 0 THEN
        INSERT INTO credit_ledger
            (user_id, kind, amount, reserved_delta, balance_after, reservation_id, job_id, idempotency_key)
        VALUES (v_res.user_id, 'refund', v_refund, -v_refund, v_balance, v_res.id, v_res.job_id,
            'settle:' || v_res.id || ':refund');
    END IF;
    UPDATE credit_reservations r
        SET status = CASE WHEN p_capture > 0 THEN 'captured' ELSE 'refunded' END,
            captured = p_capture, refunded = v_refund, settled_at = now()
        WHERE r.id = v_res.id;
    RETURN QUERY SELECT v_res.id, v_res.user_id,
        CASE WHEN p_capture > 0 THEN 'captured' ELSE 'refunded' END,
        p_capture, v_refund, v_balance, false;
END;
$$;

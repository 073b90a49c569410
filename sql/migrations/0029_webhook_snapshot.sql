-- The outbox trigger of 0023 took each event's snapshot from job_responses, whose queue
-- position (0024) reads the head of the queued jobs' index and the queue's rate for every
-- snapshot, though an event's job is never queued (it has started or ended). The snapshot is
-- now the job row, its reservation and its webhook, read by key, with the view's columns (no
-- queue place); as before it is taken at the commit of the change's transaction, so it shows
-- the job as that transaction leaves it.
CREATE OR REPLACE FUNCTION genq_webhook_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_hook job_webhooks;
    v_snapshot jsonb;
BEGIN
    SELECT w.* INTO v_hook FROM job_webhooks w
    WHERE w.job_id = NEW.id AND w.disabled_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT to_jsonb(s) INTO v_snapshot FROM (
        SELECT j.user_id, j.id, j.status, j.model, j.prompt, j.num_outputs, j.params, j.seed,
               j.price_per_output, j.error_code, j.error_message, j.created_at, j.started_at,
               j.finished_at, j.enqueued_at, j.cancel_requested_at, j.provider_queue_position,
               j.ran_model,
               r.amount AS reserved, r.captured, r.refunded,
               v_hook.url AS webhook_url, v_hook.events AS webhook_events,
               j.outputs_staged,
               NULL::bigint AS queue_position, NULL::bigint AS queue_eta_s
        FROM generation_jobs j
        LEFT JOIN credit_reservations r ON r.id = j.reservation_id
        WHERE j.id = NEW.id
    ) s;
    IF OLD.started_at IS NULL AND NEW.started_at IS NOT NULL
       AND 'started' = ANY(v_hook.events) THEN
        INSERT INTO webhook_deliveries (job_id, user_id, event_type, url, snapshot)
        VALUES (NEW.id, NEW.user_id, 'job.started', v_hook.url, v_snapshot);
    END IF;
    IF OLD.status NOT IN ('succeeded', 'failed', 'canceled')
       AND NEW.status IN ('succeeded', 'failed', 'canceled') THEN
        IF 'output' = ANY(v_hook.events) THEN
            INSERT INTO webhook_deliveries
                (job_id, user_id, event_type, url, snapshot, output_index)
            SELECT NEW.id, NEW.user_id, 'job.output', v_hook.url, v_snapshot, a.asset_index
            FROM workspace_assets a WHERE a.job_id = NEW.id
            ORDER BY a.asset_index;
        END IF;
        IF 'completed' = ANY(v_hook.events) THEN
            INSERT INTO webhook_deliveries (job_id, user_id, event_type, url, snapshot)
            VALUES (NEW.id, NEW.user_id, 'job.completed', v_hook.url, v_snapshot);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

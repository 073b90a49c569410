-- job_responses as in 0024_job_events.sql, the same columns, with its queue place worked out only
-- for a queued job. Before, the lowest queued number (the head of the partial index) was read
-- and queue_stats joined for every row, queued or not: every job event's snapshot (four or more
-- per job) and every read of a job paid for them. Measured in PL/pgSQL, 2,000 snapshots of
-- finished jobs: 118-158 ms against 157-223 ms, alternating runs on a loaded machine.
CREATE OR REPLACE VIEW job_responses AS
SELECT j.user_id, j.id, j.status, j.model, j.prompt, j.num_outputs, j.params, j.seed,
       j.price_per_output, j.error_code, j.error_message, j.created_at, j.started_at,
       j.finished_at, j.enqueued_at, j.cancel_requested_at, j.provider_queue_position,
       j.ran_model,
       r.amount AS reserved, r.captured, r.refunded,
       w.url AS webhook_url, w.events AS webhook_events,
       j.outputs_staged,
       q.position AS queue_position,
       CASE WHEN q.position IS NOT NULL THEN (
           SELECT ceil((q.position + 1) / s.head_per_s)::bigint FROM queue_stats s
           WHERE s.head_per_s > 0)
       END AS queue_eta_s
FROM generation_jobs j
LEFT JOIN credit_reservations r ON r.id = j.reservation_id
LEFT JOIN job_webhooks w ON w.job_id = j.id
CROSS JOIN LATERAL (
    SELECT CASE WHEN j.status = 'queued' THEN
               j.queue_seq - (SELECT min(h.queue_seq) FROM generation_jobs h
                              WHERE h.status = 'queued')
           END AS position
) q;

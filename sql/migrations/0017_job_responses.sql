-- The job as the API answers it, defined once: the columns GET /v1/jobs/{id}, GET /v1/jobs and
-- the answer to a submission all read (the job with its reservation's settlement). A field added
-- to the job response is a column here and a field of api/jobs/models.py's Job.
CREATE VIEW job_responses AS
SELECT j.user_id, j.id, j.status, j.model, j.prompt, j.num_outputs, j.params, j.seed,
       j.price_per_output, j.error_code, j.error_message, j.created_at, j.started_at,
       j.finished_at, j.enqueued_at, j.cancel_requested_at, j.provider_queue_position,
       j.ran_model,
       r.amount AS reserved, r.captured, r.refunded
FROM generation_jobs j
LEFT JOIN credit_reservations r ON r.id = j.reservation_id;

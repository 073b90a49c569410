"""``/v1/jobs``: submit, list, read and cancel generation jobs."""

from __future__ import annotations

import uuid

from starlette.responses import Response

from api.errors import JobNotFound, ValidationFailed
from api.jobs.intake import admit_submission
from api.jobs.models import Job, JobCreate, JobPage, check_job
from api.jobs.reads import JOB_STATUSES, list_jobs, load_job
from api.pagination import PAGE_PARAMS, decode_time_cursor, page_limit
from api.query import QueryParams, one_of
from api.routing import REPLAYED_HEADER, Call, Endpoint, Reply, reply
from api.spec import BAD_QUERY, IDEMPOTENCY_KEY, PAGE_PARAMETERS, QUERY_RULES, REPLAYED, path_id
from api.validation import field_error, idempotency_key, path_uuid
from shared.webhooks import address_problem


def path_job_id(call: Call) -> uuid.UUID:
    """The ``{job_id}`` of the path; a malformed one is simply not found."""
    return path_uuid(call, "job_id", JobNotFound)


async def create_job(call: Call) -> Response:
    """POST /v1/jobs: 202 with the queued job (or the original one, on an idempotent replay)."""
    ctx, request = call.ctx, call.request
    key = idempotency_key(request.headers.get("idempotency-key"))
    job = await call.body(JobCreate)
    check_job(
        job,
        max_prompt_chars=ctx.settings.max_prompt_chars,
        max_params_bytes=ctx.settings.max_params_bytes,
    )
    if job.webhook_url is not None:
        problem = await address_problem(job.webhook_url, ctx.settings.webhook_allowed_hosts)
        if problem is not None:
            raise ValidationFailed("invalid request body",
                                   details=[field_error("webhook_url", problem)])
    await admit_submission(ctx, call.user)
    result = await ctx.intake.submit(call.user, job, key)
    headers = {"Location": f"/v1/jobs/{result.job.id}"}
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    else:
        ctx.metrics.jobs_submitted.labels(result.job.model).inc()
        ctx.metrics.credits_reserved.inc(result.job.cost.reserved)
    return reply(result.job, 202, headers)


async def get_jobs(call: Call) -> Response:
    """GET /v1/jobs: the caller's jobs, newest first."""
    ctx = call.ctx
    query = QueryParams(call.request, ("status", *PAGE_PARAMS))
    status = query.get("status", one_of("status", JOB_STATUSES))
    limit = page_limit(query)
    after = query.get("cursor", decode_time_cursor)
    async with ctx.pool.acquire() as conn:
        data, next_cursor = await list_jobs(
            conn, call.user, status=status, after=after, limit=limit, sign=ctx.content_url
        )
    return reply(JobPage(data=data, next_cursor=next_cursor))


async def get_job(call: Call) -> Response:
    """GET /v1/jobs/{job_id}."""
    job_id = path_job_id(call)
    async with call.ctx.pool.acquire() as conn:
        return reply(await load_job(conn, call.user, job_id, sign=call.ctx.content_url))


async def post_cancel(call: Call) -> Response:
    """POST /v1/jobs/{job_id}/cancel: 200 canceled now, 202 cancel requested, 409 finished."""
    status_code, job = await call.ctx.intake.cancel(call.user, path_job_id(call))
    if status_code == 200:
        # This call canceled it (a second one finds it finished: 409).
        call.ctx.metrics.job_finished(job.model, job.status, job.cost.refunded)
    return reply(job, status_code)


# Where a created job leads (OpenAPI links: clients and API test tools follow them).
_JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
    "ListJobAssets": {"operationId": "listAssets",
                      "parameters": {"job_id": "$response.body#/id"}},
}

ENDPOINTS = [
    Endpoint(
        "POST", "/v1/jobs", create_job, "createJob", "Submit a generation job",
        {202: Reply(
            "Accepted (or replayed: Idempotent-Replayed: true)", Job,
            headers={"Location": {"description": "The job's URL.", "required": True,
                                  "schema": {"type": "string"}},
                     REPLAYED_HEADER: REPLAYED},
            links=_JOB_LINKS,
        )},
        body=JobCreate, parameters=[IDEMPOTENCY_KEY],
        description="A job sent without `seed` gets one chosen at submit and recorded. "
                    "With `webhook_url`, its `webhook_events` are POSTed there, signed.",
        errors={402: "insufficient_credits",
                409: "idempotency_key_reused; or conflict: the model changed during the "
                     "request, send it again",
                422: "validation_error: details name each failing field, e.g. params.width "
                     "or webhook_url; nothing was reserved",
                429: "rate_limited: more submissions this minute than the user's limit; "
                     "nothing was written"},
    ),
    Endpoint(
        "GET", "/v1/jobs", get_jobs, "listJobs", "List the caller's jobs, newest first",
        {200: Reply("A page of jobs", JobPage)}, description=QUERY_RULES,
        parameters=[{"name": "status", "in": "query", "schema": {"enum": list(JOB_STATUSES)}},
                    *PAGE_PARAMETERS],
        errors={422: BAD_QUERY},
    ),
    Endpoint("GET", "/v1/jobs/{job_id}", get_job, "getJob", "Get a job",
             {200: Reply("The job", Job)}, parameters=[path_id("job_id")],
             errors={404: "No such job"}),
    Endpoint("POST", "/v1/jobs/{job_id}/cancel", post_cancel, "cancelJob", "Cancel a job",
             {200: Reply("Was queued: canceled and refunded", Job),
              202: Reply("Is running: cancel requested", Job)},
             parameters=[path_id("job_id")],
             errors={404: "No such job", 409: "job_not_cancelable"}),
]

"""``/v1/jobs``: submit, list, read and cancel generation jobs."""

from __future__ import annotations

import uuid

from starlette.responses import Response

from api.body import read_json
from api.errors import JobNotFound, echo
from api.jobs.models import JobCreate, JobPage, check_job
from api.jobs.reads import JOB_STATUSES, list_jobs, load_job
from api.pagination import DEFAULT_LIMIT, PAGE_PARAMS, decode_time_cursor, parse_limit
from api.query import QueryParams, one_of
from api.routing import REPLAYED_HEADER, Call, Endpoint, Reply, reply
from api.validation import idempotency_key, parse_body, parse_id


def path_job_id(call: Call) -> uuid.UUID:
    """The ``{job_id}`` of the path; a malformed one is simply not found."""
    raw = call.path["job_id"]
    job_id = parse_id(raw)
    if job_id is None:
        raise JobNotFound(f"no job {echo(raw)}")
    return job_id


async def create_job(call: Call) -> Response:
    """POST /v1/jobs: 202 with the queued job (or the original one, on an idempotent replay)."""
    ctx, request = call.ctx, call.request
    key = idempotency_key(request.headers.get("idempotency-key"))
    job = parse_body(JobCreate, await read_json(request, ctx.settings.max_body_bytes))
    check_job(
        job,
        max_prompt_chars=ctx.settings.max_prompt_chars,
        max_params_bytes=ctx.settings.max_params_bytes,
    )
    result = await ctx.intake.submit(call.user, job, key)
    headers = {"Location": f"/v1/jobs/{result.job.id}"}
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    return reply(result.job, 202, headers)


async def get_jobs(call: Call) -> Response:
    """GET /v1/jobs: the caller's jobs, newest first."""
    ctx = call.ctx
    query = QueryParams(call.request, ("status", *PAGE_PARAMS))
    status = query.get("status", one_of("status", JOB_STATUSES))
    limit = query.get("limit", parse_limit) or DEFAULT_LIMIT
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
    return reply(job, status_code)


ENDPOINTS = [
    Endpoint("POST", "/v1/jobs", create_job, "createJob", "Submit a generation job",
             {202: Reply("Accepted (or replayed: Idempotent-Replayed: true)")}, body=JobCreate),
    Endpoint("GET", "/v1/jobs", get_jobs, "listJobs", "List the caller's jobs, newest first",
             {200: Reply("A page of jobs")}),
    Endpoint("GET", "/v1/jobs/{job_id}", get_job, "getJob", "Get a job",
             {200: Reply("The job")}),
    Endpoint("POST", "/v1/jobs/{job_id}/cancel", post_cancel, "cancelJob", "Cancel a job",
             {200: Reply("Was queued: canceled and refunded"),
              202: Reply("Is running: cancel requested")}),
]

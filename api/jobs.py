"""``/v1/jobs``: submit, list, read and cancel generation jobs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import authenticate
from api.body import read_json
from api.context import context
from api.errors import JobNotFound, echo
from api.intake import admit_submission, cancel_job, submit_job
from api.pagination import DEFAULT_LIMIT, PAGE_PARAMS, decode_time_cursor, parse_limit
from api.query import QueryParams, one_of
from api.reads import JOB_STATUSES, list_jobs, load_job, parse_id
from api.validation import JobCreate, check_job, idempotency_key, parse_body

REPLAYED_HEADER = "Idempotent-Replayed"


async def create_job(request: Request) -> Response:
    """POST /v1/jobs: 202 with the queued job (or the original one, on an idempotent replay)."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    key = idempotency_key(request.headers.get("idempotency-key"))
    job = parse_body(JobCreate, await read_json(request, ctx.settings.max_body_bytes))
    check_job(
        job,
        max_prompt_chars=ctx.settings.max_prompt_chars,
        max_params_bytes=ctx.settings.max_params_bytes,
    )
    await admit_submission(ctx, user_id)
    result = await submit_job(ctx, user_id, job, key)
    headers = {"Location": f"/v1/jobs/{result.job['id']}"}
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse(result.job, status_code=202, headers=headers)


async def get_jobs(request: Request) -> Response:
    """GET /v1/jobs: the caller's jobs, newest first."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    query = QueryParams(request, ("status", *PAGE_PARAMS))
    status = query.get("status", one_of("status", JOB_STATUSES))
    limit = query.get("limit", parse_limit) or DEFAULT_LIMIT
    after = query.get("cursor", decode_time_cursor)
    async with ctx.pool.acquire() as conn:
        data, next_cursor = await list_jobs(
            conn, user_id, status=status, after=after, limit=limit, sign=ctx.content_url
        )
    return JSONResponse({"data": data, "next_cursor": next_cursor})


async def jobs_collection(request: Request) -> Response:
    """/v1/jobs: one route for both methods, so a 405 lists both in its Allow header."""
    if request.method == "POST":
        return await create_job(request)
    return await get_jobs(request)


async def get_job(request: Request) -> Response:
    """GET /v1/jobs/{job_id}."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    job_id = parse_id(request.path_params["job_id"])
    if job_id is None:
        raise JobNotFound(f"no job {echo(request.path_params['job_id'])}")
    async with ctx.pool.acquire() as conn:
        return JSONResponse(await load_job(conn, user_id, job_id, sign=ctx.content_url))


async def post_cancel(request: Request) -> Response:
    """POST /v1/jobs/{job_id}/cancel: 200 canceled now, 202 cancel requested, 409 finished."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    job_id = parse_id(request.path_params["job_id"])
    if job_id is None:
        raise JobNotFound(f"no job {echo(request.path_params['job_id'])}")
    status_code, job = await cancel_job(ctx, user_id, job_id)
    return JSONResponse(job, status_code=status_code)

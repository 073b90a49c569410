"""``/v1/events`` and ``/v1/jobs/{job_id}/events``: a user's job changes as Server-Sent Events.

Each event is ``id: <event id>``, ``event: job.queued | job.started | job.output |
job.succeeded | job.failed | job.canceled`` and ``data: <the job JSON>`` as it was at that
change (a succeeded job's outputs with fresh signed URLs). Ids increase for each user; a client
that reconnects with ``Last-Event-ID`` gets exactly the events after it that are still kept
(``GENQ_EVENTS_RETENTION_S``). A comment line every ``GENQ_EVENTS_HEARTBEAT_S`` keeps the
connection open through proxies; a stream ends after ``GENQ_EVENTS_MAX_STREAM_S`` (the client
reconnects with its last id), and a job's stream ends after the job's terminal event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from api.assets.reads import signed_urls
from api.errors import JobNotFound
from api.events.hub import BATCH
from api.jobs.models import Job
from api.jobs.routes import path_job_id
from api.query import QueryParams, invalid
from api.routing import Call, Endpoint, Reply
from api.spec import QUERY_RULES, path_id
from shared.logging import get_logger
from shared.types import TERMINAL_EVENTS, TERMINAL_STATUSES, JobEventType, JobStatus
from sql import queries

log = get_logger(__name__)

LAST_EVENT_ID = "Last-Event-ID"
_MAX_ID_DIGITS = 19
#: Event ids are PostgreSQL bigints.
_MAX_ID = 2**63 - 1


def last_event_id(call: Call) -> int | None:
    """The ``Last-Event-ID`` header: ASCII digits (an id this API sent), or absent."""
    raw = call.request.headers.get(LAST_EVENT_ID)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_ID_DIGITS
            and int(raw) <= _MAX_ID):
        raise invalid(LAST_EVENT_ID, "must be the id of an event this API sent (digits)")
    return int(raw)


async def _render(call: Call, row: asyncpg.Record) -> ServerSentEvent:
    """One event as SSE: its id, type and the job as it was then."""
    outputs: list[asyncpg.Record] = []
    if row["status"] == JobStatus.SUCCEEDED:
        outputs = await call.ctx.pool.fetch(queries["list_job_assets"], [call.user], [row["id"]])
    job = Job.from_row(row, outputs, await signed_urls(call.ctx.content_url, outputs))
    return ServerSentEvent(data=job.model_dump_json(), event=row["event_type"],
                           id=str(row["event_id"]))


async def _events(call: Call, job_id: uuid.UUID | None, after: int, *, ended: bool = False,
                  ) -> AsyncIterator[ServerSentEvent]:
    """The stream: what was missed (from the table), then what happens (from the hub).
    ``ended``: the job of a job's stream had already ended when the request came, so the
    stream ends once it has sent what is kept after ``after``."""
    ctx = call.ctx
    hub = ctx.events
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.settings.events_max_stream_s
    sent = 0
    try:
        with hub.subscribe(call.user, job_id) as sub:
            catch_up = True
            caught_up = False
            while loop.time() < deadline:
                if catch_up:
                    # From the table: everything after `after`. The subscription is already
                    # open, so an event committed after this read reaches the queue.
                    rows = await ctx.pool.fetch(queries["list_user_events"], call.user, after,
                                                job_id, BATCH)
                    catch_up = len(rows) == BATCH
                    # A job that had ended: its final event is in these rows (the stream ends
                    # there), the client had it already, or it is no longer kept.
                    caught_up = ended and not catch_up
                elif sub.overflowed:
                    # The client fell behind and the hub dropped events: read them again.
                    log.info("event_stream_behind", after=after)
                    sub.reset()
                    catch_up = True
                    continue
                else:
                    try:
                        async with asyncio.timeout(deadline - loop.time()):
                            rows = [await sub.queue.get()]
                    except TimeoutError:
                        return
                for row in rows:
                    if row["event_id"] <= after:
                        continue
                    yield await _render(call, row)
                    sent += 1
                    after = row["event_id"]
                    if job_id is not None and row["event_type"] in TERMINAL_EVENTS:
                        return
                if caught_up:
                    return
    finally:
        log.info("event_stream_closed", job_id=job_id and str(job_id), events=sent,
                 open_streams=hub.subscriptions)


async def _stream(call: Call, job_id: uuid.UUID | None, *, ended: bool = False) -> Response:
    after = last_event_id(call)
    if after is None:
        # No Last-Event-ID: a job's stream starts with the job's first event still kept; the
        # user's stream with what is committed after this request arrived (read before the
        # answer starts, so a job submitted once the client has it is in the stream).
        after = 0 if job_id is not None else await call.ctx.pool.fetchval(
            queries["events_head"])
    return EventSourceResponse(_events(call, job_id, after, ended=ended),
                               ping=call.ctx.settings.events_heartbeat_s)


async def get_events(call: Call) -> Response:
    """GET /v1/events: every job of the caller."""
    QueryParams(call.request, ())
    return await _stream(call, None)


async def get_job_events(call: Call) -> Response:
    """GET /v1/jobs/{job_id}/events: one job of the caller (404 if it is not theirs)."""
    QueryParams(call.request, ())
    job_id = path_job_id(call)
    async with call.ctx.pool.acquire() as conn:
        status = await conn.fetchval(queries["get_job_status"], job_id, call.user)
    if status is None:
        raise JobNotFound.of(job_id)
    return await _stream(call, job_id, ended=status in TERMINAL_STATUSES)


#: Each event of the stream (OpenAPI 3.1 describes a text/event-stream by one event).
_SSE = {"text/event-stream": {"schema": {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$",
               "description": "Increases for each user; send it back as Last-Event-ID."},
        "event": {"enum": [t.value for t in JobEventType]},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/Job"},
                 "description": "The job as GET /v1/jobs/{job_id} showed it at that change."},
    },
}}}
_LAST_EVENT_ID = {
    "name": LAST_EVENT_ID, "in": "header", "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
    "description": "Resume after this event: the id of the last event received (EventSource "
                   "sends it by itself when it reconnects).",
}
_DESCRIPTION = (
    "Server-Sent Events: `id` (increasing for each user), `event` (job.queued with the queue "
    "place, job.started, job.output as each output is made, job.succeeded, job.failed, "
    "job.canceled) and `data`, the job as GET /v1/jobs/{job_id} showed it at that change. A "
    "comment line is sent every GENQ_EVENTS_HEARTBEAT_S (15 s); the stream ends after "
    "GENQ_EVENTS_MAX_STREAM_S and the client reconnects with Last-Event-ID. " + QUERY_RULES)

ENDPOINTS = [
    Endpoint(
        "GET", "/v1/events", get_events, "streamEvents",
        "Follow every job of the caller as it changes",
        {200: Reply("An event stream (text/event-stream)", content=_SSE)},
        description=_DESCRIPTION + " Without Last-Event-ID it starts with what happens next.",
        parameters=[_LAST_EVENT_ID],
        errors={422: "validation_error: a query parameter, or a Last-Event-ID that is not "
                     "digits"},
    ),
    Endpoint(
        "GET", "/v1/jobs/{job_id}/events", get_job_events, "streamJobEvents",
        "Follow one job as it changes",
        {200: Reply("An event stream (text/event-stream)", content=_SSE)},
        description=_DESCRIPTION + " Without Last-Event-ID it starts with the job's first "
                                   "event still kept; it ends after the job's terminal event.",
        parameters=[path_id("job_id"), _LAST_EVENT_ID],
        errors={404: "No such job",
                422: "validation_error: a query parameter, or a Last-Event-ID that is not "
                     "digits"},
    ),
]

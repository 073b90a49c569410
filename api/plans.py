"""Plans on the API, self-contained: ``PUT /v1/admin/users/{user_id}/plan`` (an admin assigns a
plan) and ``GET /v1/me`` (the caller, their plan and balance), with their request model and
OpenAPI entries (:data:`OPENAPI_PATHS`, :data:`OPENAPI_SCHEMAS`, merged by api/openapi.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import authenticate, require_admin
from api.body import read_json
from api.context import context
from api.errors import UserNotFound, ValidationFailed, echo
from api.reads import parse_id
from api.validation import INTEGRAL, field_error, parse_body
from shared.logging import get_logger
from shared.plans import plan_json
from sql import queries

log = get_logger(__name__)


class PlanAssign(BaseModel):
    """``PUT /v1/admin/users/{id}/plan``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    plan: str = Field(min_length=1, max_length=64)
    # The user's own running cap over the plan's (null: the plan's); left out: unchanged.
    max_running: Annotated[int, Field(ge=1, le=1_000_000), INTEGRAL] | None = None


def _me_json(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "email": row["email"], "created_at": row["created_at"].isoformat(),
        "plan": plan_json(row),
        "max_running": row["user_max_running"] if row["user_max_running"] is not None
        else row["max_running"],
        "credits": {"balance": row["balance"] or 0, "reserved": row["reserved"] or 0},
    }


async def get_me(request: Request) -> Response:
    """GET /v1/me: the caller, their plan and their credits."""
    ctx = context(request)
    user_id = await authenticate(ctx, request)
    row = await ctx.pool.fetchrow(queries["user_with_plan"], user_id)
    if row is None:
        raise UserNotFound(f"no user {user_id}")
    return JSONResponse(_me_json(row))


async def put_user_plan(request: Request) -> Response:
    """PUT /v1/admin/users/{user_id}/plan: put the user on an existing plan (and, with
    ``max_running``, set their own running cap); 200 with the user as GET /v1/me shows them."""
    ctx = context(request)
    require_admin(ctx, request)
    user_id = parse_id(request.path_params["user_id"])
    if user_id is None:
        raise UserNotFound(f"no user {echo(request.path_params['user_id'])}")
    body = parse_body(PlanAssign, await read_json(request, ctx.settings.max_body_bytes))
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(queries["get_plan"], body.plan) is None:
            raise ValidationFailed("unknown plan", details=[
                field_error("plan", f"no plan {echo(body.plan)!r}")])
        if await conn.fetchval(queries["set_user_plan"], user_id, body.plan) is None:
            raise UserNotFound(f"no user {user_id}")
        if "max_running" in body.model_fields_set:
            await conn.execute(queries["set_user_max_running"], user_id, body.max_running)
        row = await conn.fetchrow(queries["user_with_plan"], user_id)
    assert row is not None
    log.info("user_plan_set", target_user_id=str(user_id), plan=body.plan)
    return JSONResponse(_me_json(row))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_NULLABLE_INT = {"type": ["integer", "null"]}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "Plan": {"type": "object", "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "credits_per_period": {"type": "integer",
                               "description": "Credits granted at the start of each period."},
        "period": {"enum": ["day", "month"], "description": "A UTC day or month."},
        "priority_tier": {"type": "integer", "description": "Higher tiers' jobs start first."},
        "max_running": {**_NULLABLE_INT, "description": "Jobs running at once; null: the "
                                                        "server's GENQ_USER_MAX_RUNNING."},
        "submits_per_minute": {**_NULLABLE_INT, "description": "null: the server's "
                                                               "GENQ_USER_SUBMITS_PER_MINUTE."},
        "storage_quota_bytes": _NULLABLE_INT}},
    "Me": {"type": "object", "properties": {
        "id": {"type": "string"}, "email": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "plan": _ref("Plan"),
        "max_running": {**_NULLABLE_INT,
                        "description": "The user's own cap, else the plan's."},
        "credits": _ref("Credits")}},
}


def openapi_schemas(plan_names: list[str] | None) -> dict[str, Any]:
    """The schemas of these routes; ``plan_names`` (the plans of this server's catalog) become
    the request's enum, so a name outside it is schema-invalid (422)."""
    assign = PlanAssign.model_json_schema()
    if plan_names:
        assign["properties"]["plan"] = {**assign["properties"]["plan"], "enum": plan_names}
    return {**OPENAPI_SCHEMAS, "PlanAssign": assign}


def openapi_paths(common: dict[str, Any], admin: dict[str, Any],
                  body_errors: dict[str, Any], id_param: dict[str, Any],
                  error: Any) -> dict[str, Any]:
    """The two routes' OpenAPI entries, with the document's shared responses."""
    return {
        "/v1/me": {"get": {
            "summary": "The caller: their plan and credits", "operationId": "getMe",
            "responses": {"200": _json(_ref("Me"), "The caller"), **common}}},
        "/v1/admin/users/{user_id}/plan": {"put": {
            "summary": "Put a user on a plan (admin)", "operationId": "setUserPlan",
            "parameters": [{"name": "user_id", **id_param}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("PlanAssign")}}},
            "responses": {"200": _json(_ref("Me"), "The user on their new plan"),
                          "404": error("No such user"),
                          "422": error("validation_error, also for a plan that does not "
                                       "exist"),
                          **body_errors, **admin}}},
    }

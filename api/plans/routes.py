"""``/v1/admin/users/{user_id}/plan`` and ``.../storage-quota``: an admin puts a user on a plan,
and sets a user's own library storage quota over the plan's."""

from __future__ import annotations

from starlette.responses import Response

from api.admin.routes import path_user_id
from api.audit.models import entry
from api.errors import UserNotFound, ValidationFailed, echo
from api.me.models import Me
from api.me.reads import load_me
from api.plans.models import PlanAssign, StorageQuotaSet, plan_assign_schema
from api.routing import Call, Endpoint, Reply, reply
from api.spec import path_id
from api.validation import field_error
from shared import audit
from shared.logging import get_logger
from sql import queries

log = get_logger(__name__)


async def put_user_plan(call: Call) -> Response:
    """PUT /v1/admin/users/{user_id}/plan: put the user on an existing plan (and, with
    ``max_running``, set their own running cap); 200 with the user as GET /v1/me shows them."""
    ctx = call.ctx
    user_id = path_user_id(call)
    body = await call.body(PlanAssign)
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(queries["get_plan"], body.plan) is None:
            raise ValidationFailed("unknown plan", details=[
                field_error("plan", f"no plan {echo(body.plan)!r}")])
        if await conn.fetchval(queries["set_user_plan"], user_id, body.plan) is None:
            raise UserNotFound.of(user_id)
        if "max_running" in body.model_fields_set:
            await conn.execute(queries["set_user_max_running"], user_id, body.max_running)
        me = await load_me(conn, user_id, default_quota_bytes=ctx.settings.library_quota_bytes)
        await audit.record(conn, entry(call, "user.plan", "user", user_id, details={
            "plan": body.plan, **({"max_running": body.max_running}
                                  if "max_running" in body.model_fields_set else {})}))
    assert me is not None
    log.info("user_plan_set", target_user_id=str(user_id), plan=body.plan)
    return reply(me)


async def put_storage_quota(call: Call) -> Response:
    """PUT /v1/admin/users/{user_id}/storage-quota: the user's own library storage quota (null:
    their plan's again); 200 with the user as GET /v1/me shows them. Items already saved stay,
    also past a lowered quota; only later saves and restores are checked against it."""
    ctx = call.ctx
    user_id = path_user_id(call)
    body = await call.body(StorageQuotaSet)
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(queries["set_storage_quota"], user_id, body.quota_bytes) is None:
            raise UserNotFound.of(user_id)
        me = await load_me(conn, user_id, default_quota_bytes=ctx.settings.library_quota_bytes)
        await audit.record(conn, entry(call, "user.storage_quota", "user", user_id,
                                       details={"quota_bytes": body.quota_bytes}))
    assert me is not None
    log.info("user_storage_quota_set", target_user_id=str(user_id), quota_bytes=body.quota_bytes)
    return reply(me)


def endpoints(plan_names: list[str] | None = None) -> list[Endpoint]:
    """The plan routes; ``plan_names``: the plans an admin may assign (the document lists
    them)."""
    return [
        Endpoint(
            "PUT", "/v1/admin/users/{user_id}/plan", put_user_plan, "setUserPlan",
            "Put a user on a plan (admin)",
            {200: Reply("The user on their new plan, as GET /v1/me shows them", Me)},
            auth="admin", body=plan_assign_schema(plan_names), parameters=[path_id("user_id")],
            errors={404: "No such user",
                    422: "validation_error, also for a plan that does not exist"},
        ),
        Endpoint(
            "PUT", "/v1/admin/users/{user_id}/storage-quota", put_storage_quota,
            "setUserStorageQuota", "Set a user's library storage quota (admin)",
            {200: Reply("The user with their new quota, as GET /v1/me shows them", Me)},
            description="`quota_bytes` is the user's own quota over their plan's "
                        "`storage_quota_bytes` (null: the plan's again, else "
                        "GENQ_LIBRARY_QUOTA_BYTES). Items already saved stay, also past a "
                        "lowered quota; later saves and restores past it are 403 "
                        "`storage_quota_exceeded`.",
            auth="admin", body=StorageQuotaSet, parameters=[path_id("user_id")],
            errors={404: "No such user", 422: "validation_error"},
        ),
    ]

"""What the plan routes read and answer: the assignment an admin sends, and a plan as the API
shows it (in ``/v1/me``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from api.fields import ResponseModel
from api.validation import INTEGRAL

#: The largest storage quota an admin may set (1 PB: exact in every JSON client).
MAX_QUOTA_BYTES = 10**15


class PlanAssign(BaseModel):
    """``PUT /v1/admin/users/{user_id}/plan``: the plan, and optionally the user's own
    running cap over the plan's (null: the plan's; left out: unchanged)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    plan: str = Field(min_length=1, max_length=64)
    max_running: Annotated[int, Field(ge=1, le=1_000_000), INTEGRAL] | None = None


class StorageQuotaSet(BaseModel):
    """``PUT /v1/admin/users/{user_id}/storage-quota``: the user's own library storage quota
    over their plan's (null: their plan's again)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    quota_bytes: Annotated[int, Field(ge=0, le=MAX_QUOTA_BYTES), INTEGRAL] | None = Field(
        description="Bytes the user's library items (not deleted) may take; 0 refuses every "
                    "save; null: the plan's `storage_quota_bytes` (else GENQ_LIBRARY_QUOTA_BYTES).")


def plan_assign_schema(plan_names: list[str] | None) -> type[BaseModel]:
    """:class:`PlanAssign` as the document shows it: ``plan_names`` (the plans of this server's
    catalog) become the field's enum, so a name outside it is schema-invalid (422)."""
    if not plan_names:
        return PlanAssign
    field: Any = (str, Field(min_length=1, max_length=64,
                             json_schema_extra={"enum": list(plan_names)}))
    model: type[BaseModel] = create_model("PlanAssign", __base__=PlanAssign,
                                          __doc__=PlanAssign.__doc__, plan=field)
    return model


class Plan(ResponseModel):
    """A plan: credits granted each period, a priority tier and limits."""

    name: str
    description: str
    credits_per_period: int = Field(description="Credits granted at the start of each period.")
    period: Literal["day", "month"] = Field(description="A UTC day or month.")
    priority_tier: int = Field(description="Higher tiers' jobs start first.")
    max_running: int | None = Field(
        description="Jobs running at once; null: the server's GENQ_USER_MAX_RUNNING.")
    submits_per_minute: int | None = Field(
        description="null: the server's GENQ_USER_SUBMITS_PER_MINUTE.")
    storage_quota_bytes: int | None = Field(
        description="Bytes its users' library items may take (a user's own quota, set by an "
                    "admin, comes first); null: the server's GENQ_LIBRARY_QUOTA_BYTES.")

    @classmethod
    def from_row(cls, row: Any) -> Plan:
        """A row of ``user_with_plan`` (or ``get_plan``)."""
        return cls(
            name=row["name"], description=row["description"],
            credits_per_period=row["credits_per_period"], period=row["period"],
            priority_tier=row["priority_tier"], max_running=row["max_running"],
            submits_per_minute=row["submits_per_minute"],
            storage_quota_bytes=row["storage_quota_bytes"])

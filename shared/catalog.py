"""The model catalog: TOML files an operator edits, synced into the ``models`` table."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.db import Connection
from shared.errors import ConfigError
from shared.types import AssetType
from sql import queries


class ModelSpec(BaseModel):
    """One ``[[models]]`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(
        min_length=3, max_length=200, pattern=r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9._/-]+$"
    )
    provider: str = Field(min_length=1, max_length=50)
    ref: str = Field(min_length=1, max_length=500)
    media_type: AssetType
    price_per_output: int = Field(ge=0, le=1_000_000)
    max_outputs: int = Field(ge=1, le=100)
    timeout_s: int = Field(ge=1, le=24 * 3600)
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    enabled: bool = True


@dataclass(frozen=True)
class CatalogModel:
    """A model as stored in the database."""

    key: str
    provider: str
    ref: str
    media_type: str
    price_per_output: int
    max_outputs: int
    timeout_s: int
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    enabled: bool = True


def _parse(text: str, origin: str) -> list[ModelSpec]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    entries = data.get("models", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{origin}: [[models]] must be an array of tables")
    specs = []
    for i, entry in enumerate(entries):
        try:
            specs.append(ModelSpec.model_validate(entry))
        except ValidationError as exc:
            raise ConfigError(f"{origin}: models[{i}]: {exc}") from exc
    return specs


def load_catalog(models_file: Path | None) -> list[ModelSpec]:
    """The built-in models, overlaid with the operator's file (same key: the file wins)."""
    builtin = resources.files("shared").joinpath("models.toml").read_text(encoding="utf-8")
    merged = {spec.key: spec for spec in _parse(builtin, "built-in models.toml")}
    if models_file is not None:
        try:
            text = models_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"GENQ_MODELS_FILE: cannot read {models_file}: {exc}") from exc
        for spec in _parse(text, str(models_file)):
            merged[spec.key] = spec
    return list(merged.values())


async def sync_catalog(conn: Connection, specs: list[ModelSpec]) -> int:
    """Upsert every model; disable the ones no longer listed. Returns the number listed."""
    async with conn.transaction():
        for s in specs:
            await conn.execute(
                queries["upsert_model"], s.key, s.provider, s.ref, s.media_type,
                s.price_per_output, s.max_outputs, s.timeout_s, s.params, s.description,
                s.enabled,
            )
        await conn.execute(queries["disable_models_not_in"], [s.key for s in specs])
    return len(specs)


def _model(row: Any) -> CatalogModel:
    return CatalogModel(**dict(row.items()))


async def list_models(conn: Connection) -> list[CatalogModel]:
    """Every enabled model."""
    return [_model(r) for r in await conn.fetch(queries["list_models"])]

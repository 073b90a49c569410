"""The model catalog: TOML files an operator edits, synced into the ``models`` table.

Each model declares what a client may send as ``params`` (a JSON Schema, Draft 2020-12) and how
its price per output follows from them (optional tiers on megapixels). :class:`ModelRules` is
the one place both are applied: the intake checks every submission with it before anything is
reserved, and the price it computes is what the job reserves and records.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import jsonschema
import referencing.exceptions
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.db import Connection
from shared.entries import load_entries
from shared.errors import ConfigError
from shared.types import AssetType
from sql import queries

# A problem message quotes the client's value; long values are cut to keep the 422 readable.
MAX_PROBLEM_CHARS = 300


class PriceTier(BaseModel):
    """Above ``above_megapixels`` (width x height / 1e6 of the merged params) one output costs
    ``price_per_output``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    above_megapixels: float = Field(gt=0, allow_inf_nan=False)
    price_per_output: int = Field(ge=0, le=1_000_000)


class ModelSpec(BaseModel):
    """One ``[[models]]`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(
        min_length=3, max_length=200, pattern=r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9._/-]+$"
    )
    provider: str = Field(min_length=1, max_length=50)
    ref: str = Field(min_length=1, max_length=500)
    media_type: AssetType
    # One of the two: the price of one output, or (video models) the price of one second of
    # output, reserved on the requested ``duration`` param and captured on the real one.
    price_per_output: int | None = Field(default=None, ge=0, le=1_000_000)
    price_per_second: int | None = Field(default=None, ge=0, le=1_000_000)
    max_outputs: int = Field(ge=1, le=100)
    timeout_s: int = Field(ge=1, le=24 * 3600)
    params: dict[str, Any] = Field(default_factory=dict)
    # None: clients may send no params but the defaults' own values (see effective_schema).
    params_schema: dict[str, Any] | None = None
    price_tiers: list[PriceTier] = Field(default_factory=list)
    description: str = ""
    enabled: bool = True
    # Provider limits across every worker (None: none): predictions running at once, and
    # predictions created in any 60 s.
    max_concurrency: int | None = Field(default=None, ge=1, le=1_000_000)
    max_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    # provider = "openai" only: the server's API root (e.g. https://api.openai.com/v1) and the
    # name of the environment variable holding its key, so several servers can be used at once.
    base_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=500)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    max_length=200)
    # The key of another model a job moves to, once, when this model's provider stays
    # unavailable (checked across the catalog by load_catalog).
    fallback: str | None = Field(default=None, min_length=3, max_length=200)

    @model_validator(mode="after")
    def _rules_hold(self) -> ModelSpec:
        if (problem := _entry_problem(self)) is not None:
            raise ValueError(problem)
        try:
            Draft202012Validator.check_schema(self.effective_schema())
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise ValueError(f"params_schema is not a valid JSON Schema at {where}: "
                             f"{exc.message}") from exc
        if (problem := _reference_problem(self.effective_schema())) is not None:
            raise ValueError(f"params_schema: {problem}")
        above = [t.above_megapixels for t in self.price_tiers]
        if above != sorted(set(above)):
            raise ValueError("price_tiers must be in increasing order of above_megapixels")
        rules = ModelRules.from_spec(self)
        try:
            problems = rules.problems(self.params)
        except referencing.exceptions.Unresolvable as exc:
            raise ValueError(f"params_schema has a $ref that cannot be resolved: {exc}") from exc
        if problems:
            raise ValueError("the default params do not match params_schema: "
                             + "; ".join(f"{f}: {m}" for f, m in problems))
        try:
            rules.price_per_output(self.params)
        except ValueError as exc:
            raise ValueError(f"price_tiers need numeric width and height in params ({exc})"
                             ) from exc
        return self

    def effective_schema(self) -> dict[str, Any]:
        """The schema the merged params must match.

        A declared schema is an object schema that refuses unknown keys unless it says
        otherwise (``additionalProperties`` or ``unevaluatedProperties``). Without one, the only
        keys allowed are the defaults', each with its default value: nothing a client sends
        reaches a provider unchecked.
        """
        if self.params_schema is None:
            return {"type": "object",
                    "properties": {k: {"const": v} for k, v in self.params.items()},
                    "additionalProperties": False}
        schema: dict[str, Any] = {"type": "object"}
        if not {"additionalProperties", "unevaluatedProperties"} & self.params_schema.keys():
            schema["additionalProperties"] = False
        schema.update(self.params_schema)
        return schema

    def revision(self) -> str:
        """A digest of everything the intake checks and prices with: a submission checked
        against one revision is refused by the database once the model has another."""
        entry = self.model_dump(mode="json")
        # Absent when unset: entries that do not use them keep the digest they had before.
        for optional in ("base_url", "api_key_env", "price_per_second", "fallback"):
            if entry[optional] is None:
                del entry[optional]
        return hashlib.sha256(json.dumps(
            entry, sort_keys=True, separators=(",", ":")
        ).encode()).hexdigest()[:32]


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
    params_schema: dict[str, Any] = field(default_factory=dict)
    price_tiers: list[dict[str, Any]] = field(default_factory=list)
    revision: str = ""
    description: str = ""
    enabled: bool = True
    max_concurrency: int | None = None
    max_per_minute: int | None = None
    price_per_second: int | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class Checked:
    """A submission's params, checked: merged over the defaults, and the price per output
    they imply."""

    params: dict[str, Any]
    price_per_output: int


class ModelRules:
    """One model's params schema (compiled once) and pricing.

    Pricing is computed here and not in SQL: the schema check needs Python (jsonschema) anyway,
    so the intake passes the price it computed into ``genq_submit`` together with the model's
    revision, and the database refuses the submission if the model changed in between. One
    function prices for the intake, ``/v1/models`` and the tests.
    """

    def __init__(self, key: str, revision: str, defaults: dict[str, Any],
                 schema: dict[str, Any], base_price: int, tiers: list[PriceTier],
                 per_second: int | None = None) -> None:
        self.key, self.revision, self.defaults = key, revision, defaults
        self.schema, self.base_price, self.tiers = schema, base_price, tiers
        self.per_second = per_second
        self.validator = Draft202012Validator(schema)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelRules:
        """The rules of a catalog entry (as loaded from TOML)."""
        return cls(spec.key, spec.revision(), spec.params, spec.effective_schema(),
                   spec.price_per_output or 0, spec.price_tiers, spec.price_per_second)

    @classmethod
    def from_model(cls, model: CatalogModel) -> ModelRules:
        """The rules of a stored model (its schema was checked before it was stored)."""
        return cls(model.key, model.revision, model.params, model.params_schema,
                   model.price_per_output,
                   [PriceTier.model_validate(t) for t in model.price_tiers],
                   model.price_per_second)

    def problems(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Every way ``params`` (merged) fails the schema: ``(field, message)``, the field a
        path like ``params.width``."""
        found: list[tuple[str, str]] = []
        for error in sorted(self.validator.iter_errors(params), key=lambda e: list(e.path)):
            path = ["params", *(str(p) for p in error.absolute_path)]
            for name, message in _named(error):
                found.append((".".join([*path, name] if name else path), _cut(message)))
        return found

    def price_per_output(self, params: dict[str, Any]) -> int:
        """The price of one output for these (merged, valid) params (see
        :func:`price_per_output`)."""
        return price_per_output(self.base_price, self.tiers, params, per_second=self.per_second)

    def check(self, client_params: dict[str, Any]) -> Checked | list[tuple[str, str]]:
        """The merged params and their price, or every problem with them."""
        merged = {**self.defaults, **client_params}
        problems = self.problems(merged)
        if problems:
            return problems
        try:
            return Checked(merged, self.price_per_output(merged))
        except ValueError as exc:
            return [("params.width", str(exc)), ("params.height", str(exc))]


# Compiled schemas of stored models, by revision (a revision names one schema): the worker
# checks every job's params again before a provider sees them.
_STORED_RULES: dict[tuple[str, str], ModelRules] = {}
_STORED_RULES_MAX = 256


def stored_params_problems(key: str, revision: str, schema: dict[str, Any],
                           params: dict[str, Any]) -> list[tuple[str, str]]:
    """How a job's stored params fail its model's current schema (jobs accepted before the
    model had one, or under an older one), as :meth:`ModelRules.problems` says it."""
    rules = _STORED_RULES.get((key, revision))
    if rules is None:
        if len(_STORED_RULES) >= _STORED_RULES_MAX:
            _STORED_RULES.clear()
        rules = _STORED_RULES[(key, revision)] = ModelRules(key, revision, {}, schema, 0, [])
    return rules.problems(params)


def _reference_problem(schema: dict[str, Any]) -> str | None:
    """Why a ``$ref`` in ``schema`` could fail when a request reaches it: genq resolves no
    remote schema, so every reference must point into the schema itself."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        for keyword in ("$ref", "$dynamicRef"):
            ref = node.get(keyword)
            if not isinstance(ref, str):
                continue
            if not ref.startswith("#"):
                return f"{keyword} {ref!r} cannot be resolved: only references into the " \
                       "schema itself (#/...) are"
            if ref.startswith("#/") and not _pointer_exists(schema, ref[2:]):
                return f"{keyword} {ref!r} points at nothing in the schema"
    return None


def _pointer_exists(document: Any, pointer: str) -> bool:
    node = document
    for raw in pointer.split("/"):
        part = urllib.parse.unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def price_per_output(base: int, tiers: list[PriceTier], params: dict[str, Any], *,
                     per_second: int | None = None) -> int:
    """The price of one output of a model for its merged params: ``base``, or the price of the
    highest tier whose ``above_megapixels`` the size (width x height / 1e6) is above.
    :class:`ValueError` if tiers are declared and ``width`` / ``height`` are not numbers.

    A video model priced ``per_second`` costs ``ceil(duration) x per_second`` per output, on
    the requested ``duration`` param (what is reserved; the capture follows the real duration).

    Every way a price follows from params lives here, so the intake, ``/v1/models`` and the
    tests agree on it.
    """
    if per_second is not None:
        duration = params.get("duration")
        if not _is_number(duration):
            raise ValueError("duration must be a number: this model is priced per second")
        return math.ceil(duration) * per_second
    if not tiers:
        return base
    width, height = params.get("width"), params.get("height")
    if not (_is_number(width) and _is_number(height)):
        raise ValueError("width and height must be numbers: this model is priced by size")
    megapixels = float(width) * float(height) / 1e6
    price = base
    for tier in tiers:
        if megapixels > tier.above_megapixels:
            price = tier.price_per_output
    return price


def _entry_problem(spec: ModelSpec) -> str | None:
    """What is wrong with an entry's provider settings, price or fallback, if anything."""
    if spec.provider == "openai" and (spec.base_url is None or spec.api_key_env is None):
        return "an openai model needs base_url and api_key_env"
    if spec.provider != "openai" and (spec.base_url is not None
                                      or spec.api_key_env is not None):
        return "base_url and api_key_env are for provider = \"openai\" only"
    if (spec.price_per_output is None) == (spec.price_per_second is None):
        return "a model has either price_per_output or price_per_second"
    if spec.fallback == spec.key:
        return "a model cannot be its own fallback"
    return _per_second_problem(spec) if spec.price_per_second is not None else None


def _per_second_problem(spec: ModelSpec) -> str | None:
    """Why a model cannot be priced per second: it must be a video model without tiers whose
    schema bounds a numeric ``duration`` (so the reservation is bounded too)."""
    if spec.media_type != AssetType.VIDEO:
        return "price_per_second is for video models"
    if spec.price_tiers:
        return "price_per_second and price_tiers cannot be combined"
    prop = spec.effective_schema().get("properties", {}).get("duration")
    if not isinstance(prop, dict) or prop.get("type") not in ("integer", "number") \
            or not _is_number(prop.get("maximum")) or not _is_number(prop.get("minimum")):
        return ("price_per_second needs params_schema to bound duration: "
                "{ type = \"number\", minimum = ..., maximum = ... }")
    if not _is_number(spec.params.get("duration")):
        return "price_per_second needs a default duration in params"
    return None


def _is_number(value: Any) -> TypeGuard[float]:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _cut(message: str) -> str:
    return message if len(message) <= MAX_PROBLEM_CHARS else message[:MAX_PROBLEM_CHARS] + "..."


def _named(error: jsonschema.ValidationError) -> list[tuple[str | None, str]]:
    """The keys an error is about, when it is about keys of an object: each unexpected key of
    ``additionalProperties`` and each missing one of ``required``, so the 422 names them."""
    instance, kind = error.instance, error.validator
    if kind == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        known = schema.get("properties", {})
        patterns = list(schema.get("patternProperties", {}))
        extra = [k for k in instance
                 if k not in known and not any(re.search(p, k) for p in patterns)]
        if extra:
            return [(k, "is not an accepted parameter of this model") for k in sorted(extra)]
    required = error.validator_value
    if kind == "required" and isinstance(instance, dict) and isinstance(required, list):
        missing = [k for k in required if k not in instance]
        if missing:
            return [(k, "is required") for k in missing]
    return [(None, _message(error))]


def _message(error: jsonschema.ValidationError) -> str:
    """What the common keywords say in JSON's terms (jsonschema's own messages quote Python
    values: None, True)."""
    kind, expected = error.validator, error.validator_value
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"must be of type {' or '.join(str(n) for n in names)}"
    if kind == "enum" and isinstance(expected, list):
        return "must be one of " + ", ".join(json.dumps(v) for v in expected)
    if kind == "const":
        return f"must be {json.dumps(expected)}"
    words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
             "exclusiveMaximum": "less than", "minLength": "at least {} characters long",
             "maxLength": "at most {} characters long", "minItems": "at least {} items long",
             "maxItems": "at most {} items long"}
    if isinstance(kind, str) and kind in words:
        phrase = words[kind]
        return "must be " + (phrase.format(expected) if "{}" in phrase else f"{phrase} {expected}")
    return str(error.message)


def load_catalog(models_file: Path | None) -> list[ModelSpec]:
    """The built-in models, overlaid with the operator's file (same key: the file wins)."""
    merged = load_entries(ModelSpec, "models", "key", "models.toml", models_file,
                          "GENQ_MODELS_FILE")
    for spec in merged.values():
        if spec.fallback is None:
            continue
        target = merged.get(spec.fallback)
        if target is None:
            raise ConfigError(f"{spec.key}: fallback {spec.fallback!r} is not in the catalog")
        if target.media_type != spec.media_type:
            raise ConfigError(f"{spec.key}: fallback {spec.fallback!r} makes "
                              f"{target.media_type}s, not {spec.media_type}s")
        if target.fallback is not None:
            raise ConfigError(f"{spec.key}: fallback {spec.fallback!r} has a fallback of its "
                              "own; a job moves to a fallback once")
    return list(merged.values())


async def sync_catalog(conn: Connection, specs: list[ModelSpec]) -> int:
    """Upsert every model; disable the ones no longer listed. Returns the number listed."""
    async with conn.transaction():
        for s in specs:
            await conn.execute(
                queries["upsert_model"], s.key, s.provider, s.ref, s.media_type,
                s.price_per_output or 0, s.max_outputs, s.timeout_s, s.params, s.description,
                s.enabled, s.effective_schema(),
                [t.model_dump(mode="json") for t in s.price_tiers], s.revision(),
                s.base_url, s.api_key_env, s.price_per_second, s.fallback,
                s.max_concurrency, s.max_per_minute,
            )
        await conn.execute(queries["disable_models_not_in"], [s.key for s in specs])
    return len(specs)


def _model(row: Any) -> CatalogModel:
    return CatalogModel(**dict(row.items()))


async def list_models(conn: Connection) -> list[CatalogModel]:
    """Every enabled model."""
    return [_model(r) for r in await conn.fetch(queries["list_models"])]


async def load_rules(conn: Connection) -> dict[str, ModelRules]:
    """The rules of every enabled model, by key (compiled once per load)."""
    return {m.key: ModelRules.from_model(m) for m in await list_models(conn)}


"""The TOML files of ``[[models]]`` and ``[[plans]]``: the built-in file of this package,
overlaid entry by entry with the operator's own (GENQ_MODELS_FILE, GENQ_PLANS_FILE)."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


def parse_entries(model: type[S], table: str, key: str, text: str, origin: str) -> list[S]:
    """The ``[[table]]`` entries of ``text``, each checked as ``model``; :class:`ConfigError`
    naming ``origin`` and the entry (by its ``key`` field where it has one) otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    entries = data.get(table, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{origin}: [[{table}]] must be an array of tables")
    specs = []
    for i, entry in enumerate(entries):
        try:
            specs.append(model.model_validate(entry))
        except ValidationError as exc:
            name = entry.get(key) if isinstance(entry, dict) else None
            where = f"{table}[{i}] ({name})" if isinstance(name, str) else f"{table}[{i}]"
            raise ConfigError(f"{origin}: {where}: {exc}") from exc
    return specs


def load_entries(model: type[S], table: str, key: str, builtin: str, path: Path | None,
                 setting: str) -> dict[str, S]:
    """The entries of the built-in ``shared/<builtin>`` by their ``key`` field, with those of
    ``path`` (the file ``setting`` names; None: none) over them: the same key, the file's wins."""
    text = resources.files("shared").joinpath(builtin).read_text(encoding="utf-8")
    merged = {getattr(s, key): s for s in parse_entries(model, table, key, text,
                                                        f"built-in {builtin}")}
    if path is not None:
        try:
            extra = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{setting}: cannot read {path}: {exc}") from exc
        for spec in parse_entries(model, table, key, extra, str(path)):
            merged[getattr(spec, key)] = spec
    return merged

"""The SQL genq runs: ordered migrations and named queries.

Queries live in ``sql/queries/*.sql`` under a ``-- name --`` header followed by ``-- `` description
lines (which list the ``$n`` parameters). They are parsed once at import and called by name::

    await conn.fetchrow(queries["get_job"], job_id)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_HEADER = re.compile(r"(?:\n|^)-- ([a-z0-9_]+) --\n(?:-- .*\n)*", re.MULTILINE)


def parse_query_file(text: str) -> dict[str, str]:
    """Split one .sql file into ``{name: query}``."""
    parts = _HEADER.split(text)
    result: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in result:
            raise ValueError(f"query {name!r} is defined twice")
        result[name] = body.strip()
    return result


def load_queries() -> dict[str, str]:
    """Every named query of every file in ``sql/queries``."""
    queries: dict[str, str] = {}
    folder = resources.files(__package__) / "queries"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, body in parse_query_file(entry.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice ({entry.name})")
            queries[name] = body
    return queries


@dataclass(frozen=True)
class Migration:
    """One ordered schema change, e.g. ``0001_schema.sql``."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration file, ordered by its numeric prefix."""
    migrations = []
    folder = resources.files(__package__) / "migrations"
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        prefix, _, _ = entry.name.partition("_")
        migrations.append(
            Migration(int(prefix), entry.name, entry.read_text(encoding="utf-8"))
        )
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions: {versions}")
    return migrations


queries: dict[str, str] = load_queries()

from __future__ import annotations

import re

import pytest

from sql import load_migrations, parse_query_file, queries


def test_parse_query_file() -> None:
    text = (
        "-- file header\n\n"
        "-- first_query --\n-- What it does. $1 id.\nSELECT $1\n\n"
        "-- second_query --\nSELECT 2\nFROM t\n"
    )
    assert parse_query_file(text) == {
        "first_query": "SELECT $1",
        "second_query": "SELECT 2\nFROM t",
    }


def test_duplicate_names_are_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_query_file("-- a --\nSELECT 1\n-- a --\nSELECT 2\n")


def test_every_query_documents_its_parameters() -> None:
    # Description lines must mention each $n the query uses.
    from importlib import resources

    folder = resources.files("sql") / "queries"
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text()
        for block in re.split(r"\n(?=-- [a-z0-9_]+ --\n)", text):
            m = re.match(r"-- ([a-z0-9_]+) --\n((?:-- .*\n)*)", block)
            if not m:
                continue
            name, doc = m.group(1), m.group(2)
            used = set(re.findall(r"\$(\d+)", queries[name]))
            documented = set(re.findall(r"\$(\d+)", doc))
            assert used <= documented, f"{name}: parameters {used - documented} undocumented"


def test_migrations_are_ordered_and_unique() -> None:
    migrations = load_migrations()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    assert migrations[0].name == "0001_schema.sql"

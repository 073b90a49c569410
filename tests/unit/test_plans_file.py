"""GENQ_PLANS_FILE: its plans over the built-in ones by name, and its mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.plans import load_plans


def test_a_file_adds_plans_and_replaces_built_in_ones_by_name(tmp_path: Path) -> None:
    f = tmp_path / "plans.toml"
    f.write_text('[[plans]]\nname = "free"\ncredits_per_period = 5\n\n'
                 '[[plans]]\nname = "gold"\npriority_tier = 2\n')
    plans = {p.name: p for p in load_plans(f)}
    builtin = {p.name for p in load_plans(None)}
    assert set(plans) == builtin | {"gold"}
    assert plans["free"].credits_per_period == 5
    assert plans["gold"].priority_tier == 2


def test_a_bad_entry_names_the_file_and_the_plan(tmp_path: Path) -> None:
    f = tmp_path / "plans.toml"
    f.write_text('[[plans]]\nname = "gold"\nperiod = "week"\n')
    with pytest.raises(ConfigError) as caught:
        load_plans(f)
    assert f"{f}: plans[0] (gold)" in str(caught.value)


@pytest.mark.parametrize("body", ["[[plans]\n", 'plans = "gold"\n'])
def test_a_file_that_is_not_a_table_of_plans_names_the_file(tmp_path: Path, body: str) -> None:
    f = tmp_path / "plans.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=str(f)):
        load_plans(f)


def test_an_unreadable_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GENQ_PLANS_FILE"):
        load_plans(tmp_path / "absent.toml")

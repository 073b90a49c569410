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


@pytest.mark.parametrize(("body", "says"), [
    ('[[plans]]\nname = "gold"\nperiod = "week"\n', "plans[0] (gold): "),
    ('[[plans]]\nname = "gold"\n[[plans]]\ncredits_per_period = -1\n', "plans[1]: "),
    ("[[plans]\n", "not valid TOML"),
    ('plans = "gold"\n', "[[plans]] must be an array of tables"),
])
def test_a_bad_file_names_itself_and_the_plan(tmp_path: Path, body: str, says: str) -> None:
    f = tmp_path / "plans.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_plans(f)
    assert f"{f}: {says}" in str(caught.value)

"""The README stays true: every setting and every command is documented."""

from __future__ import annotations

import argparse
from pathlib import Path

from genq.cli import build_parser
from shared.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [
        f"GENQ_{name.upper()}" for name in Settings.model_fields
        if f"`GENQ_{name.upper()}`" not in README
    ]
    assert missing == []


def test_every_command_is_in_the_readme_and_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"genq {name}" in README, name
        assert command.description, f"genq {name} has no --help description"

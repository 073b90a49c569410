"""The README stays true: every setting and every command is documented."""

from __future__ import annotations

import argparse
from pathlib import Path

from genq.cli import build_parser
from shared.catalog import Checked, ModelRules, load_catalog
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


def test_the_replicate_example_is_a_valid_catalog(tmp_path: Path) -> None:
    start = README.index("**Switching to Replicate.**")
    block = README[README.index("```toml\n", start) + len("```toml\n"):]
    models = tmp_path / "models.toml"
    models.write_text(block[: block.index("```")])
    flux = {m.key: m for m in load_catalog(models)}["replicate/flux-schnell"]
    rules = ModelRules.from_spec(flux)
    assert rules.check({"num_inference_steps": 4}) == Checked(
        {"aspect_ratio": "1:1", "output_format": "webp", "num_inference_steps": 4}, 3)
    assert rules.check({"disable_safety_checker": True}) == [
        ("params.disable_safety_checker", "is not an accepted parameter of this model")]

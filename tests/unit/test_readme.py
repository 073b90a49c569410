"""The README and docs/ stay true: every setting, every command and every route is documented,
and the Replicate example is a catalog genq loads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from api.app import endpoints
from genq.cli import build_parser
from shared.catalog import Checked, ModelRules, load_catalog
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text()
API_DOC = (ROOT / "docs" / "api.md").read_text()
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_every_setting_is_in_the_settings_doc() -> None:
    missing = [
        f"GENQ_{name.upper()}" for name in Settings.model_fields
        if f"`GENQ_{name.upper()}`" not in SETTINGS_DOC
    ]
    assert missing == []


def test_the_settings_table_names_only_real_settings() -> None:
    real = {f"GENQ_{name.upper()}" for name in Settings.model_fields}
    rows = [line for line in SETTINGS_DOC.splitlines() if line.startswith("| `GENQ_")]
    named = {name for row in rows for name in re.findall(r"`(GENQ_\w+)`", row.split(" | ")[0])}
    assert len(rows) > 50
    assert named - real == set()


def test_every_command_is_in_the_readme_and_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"genq {name}" in README, name
        assert command.description, f"genq {name} has no --help description"


def _documented_routes(doc: str) -> set[tuple[str, str]]:
    """(method, path) of each route in the doc's route table, path parameters as ``{}``.

    A first cell lists backticked items: ``GET``, ``POST /v1/x`` (methods pile up until a path
    takes them all), ``/v1/x/{id}`` (the previous methods), ``/enable`` (the previous path with
    its last segment replaced); other backticked items (query parameters) are skipped."""
    table = doc[doc.index("| method, path | what |"):]
    routes: set[tuple[str, str]] = set()
    for row in table.splitlines()[2:]:
        if not row.startswith("| "):
            break
        pending: list[str] = []
        methods: list[str] = []
        path = ""
        for item in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            words = item.split()
            if words[0] in METHODS and len(words) == 1:
                pending.append(words[0])
                continue
            if words[0] in METHODS:
                methods, pending = [*pending, words[0]], []
                item = words[1]
            elif not item.startswith("/"):
                continue
            item = item.split("?")[0]
            if item.count("/") == 1 and path:
                item = path.rsplit("/", 1)[0] + item
            path = item
            routes.update((m, re.sub(r"\{[^}]*\}", "{}", path)) for m in methods)
    return routes


def test_every_route_is_in_the_api_doc_and_every_documented_route_exists() -> None:
    served = {(e.method, re.sub(r"\{[^}]*\}", "{}", e.path)) for e in endpoints()}
    documented = _documented_routes(API_DOC)
    assert len(served) > 40
    assert sorted(served - documented) == []
    assert sorted(documented - served) == []


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

"""Production modules hold no function that only tests call: a helper the tests need lives in
tests/factories.py, so a newcomer reading shared/ reads what production runs."""

from __future__ import annotations

import ast
import importlib
import inspect
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("api", "worker", "genq", "shared")
MODULES = ["shared.ledger", "shared.catalog", "shared.queue", "shared.retry"]


def _names_used_by_production() -> Counter[str]:
    """Every name production code refers to (a call, an attribute, an import), not counting
    the definitions themselves, comments or docstrings."""
    used: Counter[str] = Counter()
    for folder in PRODUCTION:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Name):
                    used[node.id] += 1
                elif isinstance(node, ast.Attribute):
                    used[node.attr] += 1
                elif isinstance(node, ast.ImportFrom):
                    used.update(alias.name for alias in node.names)
    return used


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_function_is_called_by_production(module_name: str) -> None:
    module = importlib.import_module(module_name)
    used = _names_used_by_production()
    public = [
        name for name, fn in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__ == module_name
    ]
    assert public, module_name
    assert [name for name in public if not used[name]] == [], f"{module_name}: only tests call"

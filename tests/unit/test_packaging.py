"""The project as pip builds it: no packaging warnings, and every file genq reads at run time
is in the wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WARNING = re.compile(r"BuildBackendWarning|SetuptoolsDeprecationWarning|would be ignored")


def test_the_wheel_builds_without_packaging_warnings_and_holds_every_module_and_sql_file(
    tmp_path: Path,
) -> None:
    # Build from a copy: pip builds in the source tree and would leave build/ and egg-info there.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".genq", "*.egg-info", "build", "__pycache__", ".*_cache"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if WARNING.search(line)] == []

    [wheel] = (tmp_path / "dist").glob("genq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sql").rglob("*.sql")}
    assert len(expected) >= 10  # the migrations and the queries
    assert expected <= names, sorted(expected - names)
    assert {"shared/models.toml", "shared/py.typed"} <= names
    # Every module of the five packages genq runs from (a package left out of pyproject's
    # list would import from a source checkout and fail from the wheel).
    modules = {p.relative_to(ROOT).as_posix()
               for top in ("genq", "api", "worker", "shared", "sql")
               for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)

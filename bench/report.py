"""The result rows of a run: a table on the terminal and a JSON file."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench.stats import fmt, ratio

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Row:
    """One figure: genq against its baseline, and the target it must meet (if any).

    ``limit`` is compared with ``ratio`` when ``on`` is ``"ratio"``, with ``genq`` itself when it
    is ``"genq"``; ``better`` says which side of the limit passes.
    """

    scenario: str
    figure: str
    genq: float | None
    baseline: float | None
    unit: str
    better: Better = "higher"
    limit: float | None = None
    on: Literal["ratio", "genq"] = "ratio"
    target: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """genq / baseline."""
        return ratio(self.genq, self.baseline)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when the row has no target."""
        if self.limit is None:
            return None
        value = self.ratio if self.on == "ratio" else self.genq
        if value is None:
            return False
        return value >= self.limit if self.better == "higher" else value < self.limit

    def as_json(self) -> dict[str, Any]:
        """The row as the JSON file stores it."""
        data = asdict(self)
        data.update(ratio=self.ratio, met=self.met)
        return data


def _met_text(met: bool | None) -> str:
    return {None: "", True: "yes", False: "NO"}[met]


def table(rows: list[Row]) -> str:
    """A Markdown table of ``rows`` (it reads fine on a terminal too)."""
    header = ["figure", "genq", "baseline", "ratio", "unit", "target", "met"]
    lines = [header]
    for r in rows:
        lines.append([
            r.figure, fmt(r.genq), fmt(r.baseline),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.unit, r.target, _met_text(r.met),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def write_json(path: Path, rows: list[Row], *, quick: bool, extra: dict[str, Any]) -> None:
    """Write the run's rows and the machine it ran on to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated_at": datetime.now(UTC).isoformat(),
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **extra,
        "rows": [r.as_json() for r in rows],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")

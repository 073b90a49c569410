"""``python -m bench``: run the scenarios against their baselines, print a table, write JSON.

    python -m bench                       # every scenario, full size
    python -m bench --quick               # smaller sizes, for a smoke run
    python -m bench --only pipeline,intake
    python -m bench --out path/to/results.json

Services come from ``GENQ_DATABASE_URL`` / ``GENQ_REDIS_URL`` or are the embedded servers under
``GENQ_DATA_DIR`` (default ``.genq``), as for every genq process.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

from bench.env import BenchEnv
from bench.report import Row, table, write_json
from bench.scenarios import SCENARIOS, combined
from shared.logging import configure_logging
from shared.settings import load_settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="",
                        help=f"comma-separated scenarios (default all: {', '.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json",
                        help="where to write the JSON results")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(SCENARIOS)}")
    args.names = names
    return args


async def _main(args: argparse.Namespace) -> int:
    settings = load_settings()
    # Logs and output files of the processes under test live with the embedded servers' data,
    # outside the source tree (mypy would take their folders for packages).
    work_dir = settings.data_dir / "bench"
    shutil.rmtree(work_dir, ignore_errors=True)
    env = BenchEnv(settings, work_dir)
    rows: list[Row] = []
    failed: dict[str, str] = {}
    try:
        async with env.running():
            for name in args.names:
                print(f"== {name}", file=sys.stderr, flush=True)
                started = time.perf_counter()
                try:
                    new = await SCENARIOS[name](env, args.quick)
                except Exception as exc:  # one broken scenario should not hide the others
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    print(f"   failed: {failed[name]}", file=sys.stderr, flush=True)
                    for proc in list(env.procs):
                        env.stop(proc)
                    continue
                rows.extend(new)
                print(table(new), file=sys.stderr)
                print(f"   ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(env.storage_dir, ignore_errors=True)
    rows.extend(combined(rows))
    write_json(args.out, rows, quick=args.quick, extra={"failed": failed, "run_id": env.run_id})
    print(table(rows))
    print(f"\nwritten to {args.out}; process logs in {work_dir / 'logs'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 if a scenario failed to run (a missed target is not a failure)."""
    args = _parse(argv)
    configure_logging("warning")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())

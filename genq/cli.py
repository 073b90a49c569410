"""The ``genq`` command line: one entry point for every process and operator task."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable, Sequence

from shared.errors import GenqError
from shared.logging import configure_logging
from shared.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from genq import ops

    return asyncio.run(ops.migrate_command(settings))


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from genq import ops

    return asyncio.run(ops.status_command(settings))


def _cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    from genq import ops

    return asyncio.run(ops.cleanup_command(settings, args.only or None))


def _cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from genq import ops

    return ops.run_until_signal(ops.scheduler_command(settings))


def _cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.server import serve

    return serve(settings, host=args.host or settings.host,
                 port=settings.port if args.port is None else args.port)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.main import run_worker_command

    return run_worker_command(settings)


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from genq import ops

    return ops.up_command(settings, args.host or settings.host,
                          settings.port if args.port is None else args.port)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from genq.demo import run_demo

    return run_demo(settings)


def _cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from genq import ops

    return asyncio.run(ops.users_create_command(settings, args.email))


def _cmd_credits_grant(args: argparse.Namespace, settings: Settings) -> int:
    from genq import ops

    return asyncio.run(ops.credits_grant_command(
        settings, args.user_id, args.amount, args.reason, args.idempotency_key
    ))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with ``--help`` on every command."""
    from worker.scheduler import TASKS

    parser = argparse.ArgumentParser(
        prog="genq",
        description="genq: the job backend for AI image and video generation. "
        "Settings come from GENQ_* variables and .env; with no GENQ_DATABASE_URL / "
        "GENQ_REDIS_URL, embedded servers run under GENQ_DATA_DIR (default .genq).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="run API, worker and scheduler together (Ctrl-C stops all)",
                       description="Start the services (embedded PostgreSQL and valkey when "
                       "GENQ_DATABASE_URL / GENQ_REDIS_URL are unset), migrate, then run "
                       "`genq api`, `genq worker` and `genq scheduler` until Ctrl-C or SIGTERM, "
                       "which stops all of them and the embedded servers. A process that dies "
                       "is started again after a growing backoff; one that dies 5 times within "
                       "60 s makes genq up stop everything and exit 1.")
    p.add_argument("--host", help="API bind address (default GENQ_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (default GENQ_PORT, 8000; 0 = any free)")
    p.set_defaults(handler=_cmd_up)

    p = sub.add_parser("demo", help="run the whole system and drive a few jobs over HTTP",
                       description="Start everything on the configured or embedded services, "
                       "create a demo user with credits, submit jobs to the built-in provider, "
                       "show live progress, cancel one to show the refund, print outputs, "
                       "balances and the ledger, then stop everything.")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("api", help="run the HTTP intake service",
                       description="Migrate, then serve the HTTP API (GENQ_HOST/GENQ_PORT, "
                       "or the flags) until SIGINT or SIGTERM.")
    p.add_argument("--host", default=None, help="interface to bind (default: GENQ_HOST)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: GENQ_PORT)")
    p.set_defaults(handler=_cmd_api)

    p = sub.add_parser("worker", help="run an arq worker that processes generation jobs",
                       description="Run the generation worker until SIGTERM/SIGINT; running jobs "
                       "get GENQ_SHUTDOWN_GRACE_S to finish, then are handed back.")
    p.set_defaults(handler=_cmd_worker)

    p = sub.add_parser("scheduler", help="run the maintenance tasks on their schedule",
                       description="Run the maintenance tasks as arq cron jobs every "
                       "GENQ_SWEEP_INTERVAL_S seconds (one run at a time across schedulers).")
    p.set_defaults(handler=_cmd_scheduler)

    p = sub.add_parser("migrate", help="apply pending migrations and sync the model catalog",
                       description="Apply pending migrations (under an advisory lock, so "
                       "concurrent runs are safe) and sync the model catalog.")
    p.set_defaults(handler=_cmd_migrate)

    p = sub.add_parser("users", help="manage users", description="Manage users.")
    users = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    q = users.add_parser("create", help="create a user and print its API key (shown once)",
                         description="Create a user with an empty credit account and print "
                         "its id and API key. The key is shown this once; genq keeps its hash.")
    q.add_argument("email")
    q.set_defaults(handler=_cmd_users_create)

    p = sub.add_parser("credits", help="manage credits", description="Manage credits.")
    credits = p.add_subparsers(dest="credits_command", required=True, metavar="ACTION")
    q = credits.add_parser("grant", help="grant credits to a user",
                           description="Grant credits to a user. With --idempotency-key, "
                           "running the same grant again changes nothing.")
    q.add_argument("user_id", type=uuid.UUID)
    q.add_argument("amount", type=_positive_int)
    q.add_argument("--reason", default=None)
    q.add_argument("--idempotency-key", default=None)
    q.set_defaults(handler=_cmd_credits_grant)

    p = sub.add_parser("cleanup", help="run the maintenance tasks once and report what they did",
                       description="Run maintenance once: enqueue jobs the intake could not, "
                       "delete expired workspace assets, re-enqueue jobs Redis lost, take back "
                       "jobs whose worker died, settle stale reservations, retire old jobs, "
                       "delete orphan files.")
    p.add_argument("--only", action="append", choices=list(TASKS), metavar="TASK",
                   help=f"run only this task (repeatable): {', '.join(TASKS)}")
    p.set_defaults(handler=_cmd_cleanup)

    p = sub.add_parser("status", help="print the database state: migrations, models, counts",
                       description="Print applied migrations, the model catalog, and row counts.")
    p.set_defaults(handler=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit status 0 on success, 2 on bad settings or usage."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except GenqError as exc:
        print(f"genq: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except GenqError as exc:
        print(f"genq: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

"""``bastion demo``: serve the demo music catalog with uvicorn, after checking the settings."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from bastion._urls import redact_url
from bastion.auth import generate_key
from bastion.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, settings_or_report
from bastion.exceptions import BastionError

if TYPE_CHECKING:
    from types import FrameType

    from fastapi import FastAPI

    from bastion._app import Bastion

__all__ = ["banner", "register"]

APP = "bastion.demo:app"
"""What uvicorn serves: an import string, so ``--reload`` and ``--workers`` can re-import it."""

DEMO_KEY_VARIABLE = "BASTION_DEMO_API_KEY"
"""Carries the demo's API key to every worker (read by ``bastion.demo.keys``, which this module
does not import: that needs FastAPI, checked only when the command runs)."""

# Ops endpoints worth a line in the banner, in the order shown; each only if registered.
_OPS_LINES = (
    ("health", ("/health/live", "/health")),
    ("readiness", ("/health/ready",)),
    ("ops index", ("/",)),
    ("metrics", ("/metrics",)),
    ("stats", ("/stats",)),
    ("dashboard", ("/dashboard",)),
)


class _Stopped(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM reached the command outside uvicorn's graceful handling."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def _workers(text: str) -> int:
    workers = int(text)
    if workers < 1:
        raise argparse.ArgumentTypeError("needs at least 1 worker")
    return workers


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="serve the demo music catalog",
        description=(
            "Serve bastion's reference service, a small music catalog on SQLite "
            "(bastion-demo.sqlite3 in the current directory unless BASTION_DATABASE_URL is set), "
            "with uvicorn. Settings are checked before anything starts."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8000, help="port to bind (default %(default)s)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--reload", action="store_true", help="restart when bastion's source files change"
    )
    mode.add_argument(
        "--workers", type=_workers, default=1, help="worker processes (default %(default)s)"
    )
    parser.set_defaults(run=run)


def _base_url(host: str, port: int) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}"  # a host name
    if address.is_unspecified:
        # Bound to every interface: the loopback address of the same family is one that works.
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}"


def banner(app: FastAPI, bastion: Bastion, *, base_url: str, workers: int, reload: bool) -> str:
    """The lines printed before the server starts: what runs where, and its useful URLs.

    The ops URLs come from the ops prefix and the endpoints actually registered, so that a
    changed ``BASTION_OPS__PREFIX`` or a newly added endpoint shows up without editing this.
    """
    settings = bastion.settings
    mode = "auto-reload" if reload else f"{workers} worker{'s' if workers != 1 else ''}"
    url = app.state.database.url
    database = redact_url(url.render_as_string(hide_password=False))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database += f" ({Path(url.database).resolve()})"  # "which directory?" answered up front
    store = redact_url(settings.redis_url) if settings.redis_url else "memory (this process)"
    lines = [
        f"bastion demo: music catalog on {base_url} ({mode})",
        f"  database   {database}",
        f"  store      {store}",
    ]
    if app.docs_url:
        lines.append(f"  API docs   {base_url}{app.docs_url}")
    demo_key = getattr(app.state, "demo_api_key", None)
    if demo_key:
        # Printed on purpose: the demo's writes need it. Only its hash goes into the store.
        lines.append(f"  API key    {demo_key}  (X-API-Key; writes need it)")
    if settings.ops.enabled:
        registered = set(bastion.ops.paths())
        for label, candidates in _OPS_LINES:
            path = next((path for path in candidates if path in registered), None)
            if path is not None:
                lines.append(f"  {label:<10} {base_url}{settings.ops.prefix}{path}")
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Check the settings, print the banner, then serve until stopped."""
    settings = settings_or_report()
    if settings is None:
        return EXIT_USAGE
    missing = [name for name in ("uvicorn", "fastapi", "sqlalchemy") if find_spec(name) is None]
    if missing:
        print(
            f"bastion: the demo needs {', '.join(missing)}; install it with: "
            "pip install 'bastion[demo]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if sys.stderr.isatty() and "format" not in settings.logging.model_fields_set:
        # A person is watching: readable lines rather than JSON, unless the format was chosen.
        # Set in the environment, so that every worker process makes the same choice.
        os.environ["BASTION_LOGGING__FORMAT"] = "console"
    if not os.environ.get(DEMO_KEY_VARIABLE):
        # One key for the banner and every worker process, which inherit the environment.
        os.environ[DEMO_KEY_VARIABLE] = generate_key(settings.auth.api_key_prefix)[0]
    try:
        # The very app the server will serve: with one worker uvicorn imports this same module
        # object, so the banner describes exactly what runs.
        from bastion.demo import app  # heavy (FastAPI, SQLAlchemy): only this command needs it
    except BastionError as exc:  # the settings changed under us, or the app could not be built
        print(f"bastion: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import uvicorn  # the server extra: only this command needs it

    print(
        banner(
            app,
            app.state.bastion,
            base_url=_base_url(args.host, args.port),
            workers=args.workers,
            reload=args.reload,
        ),
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the process dies of
    # it (exit status 143). A requested, completed shutdown is a success for this command: the
    # re-raised signal lands in this handler and the command exits 0. The handler also covers a
    # SIGTERM that arrives before uvicorn installs its own.
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        uvicorn.run(
            APP,
            host=args.host,
            port=args.port,
            workers=args.workers if not args.reload else None,
            reload=args.reload,
            # The demo's code is in bastion's package, wherever the command runs from.
            reload_dirs=[str(Path(__file__).resolve().parent.parent)] if args.reload else None,
            # "on", not "auto": a failed startup (database unreachable) must stop the server
            # with its message, not be mistaken for an app without lifespan support.
            lifespan="on",
        )
    except _Stopped:
        return EXIT_OK
    except SystemExit as exc:  # uvicorn exits this way when the startup failed
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK

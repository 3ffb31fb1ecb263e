"""What every command shares: exit codes, reading the settings, sub-commands, the Redis store."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bastion._urls import redact_url
from bastion.exceptions import ConfigurationError, StoreError
from bastion.settings import Settings, load_settings
from bastion.stores import store_from_url

if TYPE_CHECKING:
    from bastion.stores import Store

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "StoreWork",
    "add_actions",
    "run_with_store",
    "settings_or_report",
]

EXIT_OK = 0
"""Everything worked."""
EXIT_FAILED = 1
"""A check failed, or the server could not start or stopped with an error."""
EXIT_USAGE = 2
"""Invalid settings or command line: nothing was attempted."""

StoreWork = Callable[["Settings", "Store"], Awaitable[int]]
"""What a command does with the configured Redis store; returns the exit code."""


def settings_or_report() -> Settings | None:
    """Load the settings, or print why they are invalid to stderr and return ``None``."""
    try:
        return load_settings()
    except ConfigurationError as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return None


def add_actions(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The sub-commands of ``parser``; without one, the command prints its help and exits 2."""
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    parser.set_defaults(run=usage)
    return actions


def run_with_store(command: str, no_redis: str, work: StoreWork, *, max_connections: int) -> int:
    """Run ``work`` with the store at ``BASTION_REDIS_URL``, closed afterwards.

    A memory store is refused: it would be this command's own process's memory, which no app
    shares. Invalid settings and a missing URL exit 2 (``no_redis`` says why), a failing store 1.

    Args:
        command: the command's words after ``bastion``, in the failure message.
        no_redis: what to print when ``BASTION_REDIS_URL`` is not set.
        work: what to do with the settings and the store.
        max_connections: the size of the store's connection pool.
    """
    settings = settings_or_report()
    if settings is None:
        return EXIT_USAGE
    if not settings.redis_url:
        print(no_redis, file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_with_store(settings, work, max_connections))
    except StoreError as exc:
        where = redact_url(settings.redis_url)
        print(f"bastion {command}: the store at {where} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _with_store(settings: Settings, work: StoreWork, max_connections: int) -> int:
    stores = settings.stores
    store = store_from_url(
        settings.redis_url,
        prefix=stores.key_prefix,
        # A command may wait longer than a request would; one failure is enough to report.
        socket_timeout_s=max(stores.redis_socket_timeout_s, 2.0),
        connect_timeout_s=max(stores.redis_connect_timeout_s, 2.0),
        max_connections=max_connections,
        failure_threshold=1,
    )
    try:
        return await work(settings, store)
    finally:
        await store.aclose()

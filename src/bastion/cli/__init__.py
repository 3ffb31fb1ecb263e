"""``bastion``: the command line.

::

    bastion demo [--host H] [--port P] [--reload | --workers N]   serve the demo music catalog
    bastion config [--json]                                       print the effective settings
    bastion doctor                                                check settings and backends
    bastion keys create|list|revoke|rotate                        manage API keys in Redis
    bastion cache purge --tag T [--tag T2]                        purge cached entries by tag

Every command validates the settings first and stops on invalid ones. Exit codes: ``0`` success,
``1`` a check or the server failed, ``2`` invalid settings or command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from bastion.cli import _cache, _config, _demo, _doctor, _keys
from bastion.cli._common import EXIT_USAGE

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Each command module contributes ``register(subparsers)``; new commands (bench, jobs, cache)
# add a module and a line here.
_COMMANDS = (_demo, _config, _doctor, _keys, _cache)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bastion`` command, one sub-command per module."""
    parser = argparse.ArgumentParser(
        prog="bastion",
        description="Production-grade ASGI services in one line.",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bastion`` command line and return its exit code.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        ``0`` on success, ``1`` when a check or the server failed, ``2`` for invalid settings or
        arguments (argparse's own convention for usage errors).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits for --help (0) and usage errors (2); callers of main() get a code.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130  # the shell's convention for "stopped by Ctrl+C" (128 + SIGINT)
    except BrokenPipeError:
        # The reader went away (`bastion doctor | head -1`): stop quietly, as cat does. Python
        # would otherwise print a second error when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # the shell's convention for "killed by SIGPIPE" (128 + 13)
    return code

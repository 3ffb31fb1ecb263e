"""``bastion config``: the effective settings, secrets masked, as env lines or JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bastion.cli._common import EXIT_OK, EXIT_USAGE, settings_or_report
from bastion.settings import env_name

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Mapping

__all__ = ["env_lines", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``config`` command."""
    parser = subparsers.add_parser(
        "config",
        help="print the effective settings (secrets masked)",
        description=(
            "Print the settings bastion would run with, read from BASTION_* variables and .env, "
            "with secrets and URL passwords masked. One BASTION_...=value line per setting, "
            "nested sections joined with '__'."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(run=run)


def _env_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        # Lists are read back comma-separated (BASTION_CONTEXT__TRUSTED_PROXIES=a,b).
        return ",".join(_env_value(item) for item in value)
    return json.dumps(value)  # true/false and numbers, as pydantic reads them back


def env_lines(data: Mapping[str, Any], location: tuple[str, ...] = ()) -> Iterator[str]:
    """``BASTION_...=value`` lines for ``data`` (``Settings.masked()``), sections flattened."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from env_lines(value, (*location, key))
        else:
            yield f"{env_name((*location, key))}={_env_value(value)}"


def run(args: argparse.Namespace) -> int:
    """Print the masked settings; exit 2 if they are invalid."""
    settings = settings_or_report()
    if settings is None:
        return EXIT_USAGE
    masked = settings.masked()
    if args.json:
        print(json.dumps(masked, indent=2, ensure_ascii=False))
    else:
        print("\n".join(env_lines(masked)))
    return EXIT_OK

"""``bastion keys``: create, list, revoke and rotate API keys in the configured Redis.

Keys live in bastion's store. Without ``BASTION_REDIS_URL`` that store is the memory of the
process that runs it, which for this command would die the moment it exits: the command refuses
instead of printing keys that work nowhere.

A new key is printed once, alone on standard output (``KEY=$(bastion keys create ...)``), with
what it is on standard error; the store keeps only its hash, so it can never be shown again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bastion.auth import ApiKeyRecord, ApiKeys, NewApiKey
from bastion.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_actions, run_with_store

if TYPE_CHECKING:
    from bastion.settings import Settings
    from bastion.stores import Store

__all__ = ["parse_duration", "register"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_NO_REDIS = (
    "bastion keys: BASTION_REDIS_URL is not set, so bastion's store is the memory of this "
    "command's own process: a key created here would vanish when it exits and work nowhere. "
    "Set BASTION_REDIS_URL (and BASTION_STORES__KEY_PREFIX, if the app sets it) to the Redis "
    "your app uses. An app on the memory store creates its keys in code: "
    "await bastion.api_keys.create(...)."
)


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``15m``, ``90s``, ``2w`` or a plain number of seconds.

    Raises:
        argparse.ArgumentTypeError: for anything else, or a duration that is not positive.
    """
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 90s, 15m, 12h, 30d or 2w"
        )
    seconds = float(found.group(1)) * _UNITS[found.group(2) or "s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return seconds


def _key_id(text: str) -> str:
    if not _KEY_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a key id (16 hex digits, as shown by 'bastion keys list')"
        )
    return text


def _scopes(text: str) -> list[str]:
    return [scope.strip() for scope in text.split(",") if scope.strip()]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command and its sub-commands."""
    parser = subparsers.add_parser(
        "keys",
        help="create, list, revoke and rotate API keys",
        description=(
            "Manage the API keys of the apps sharing BASTION_REDIS_URL. Only a hash of each key "
            "is stored: a new key is printed once. Exit 0 on success, 1 if the store failed or "
            "the key does not exist, 2 for invalid settings or arguments."
        ),
    )
    actions = add_actions(parser)

    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--scopes", type=_scopes, default=[], help="comma-separated scopes (a:read,a:write)"
    )
    create.add_argument(
        "--expires-in", type=parse_duration, default=None, help="lifetime: 90d, 12h, ..."
    )
    create.set_defaults(run=_runner(_create))

    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    listing.set_defaults(run=_runner(_list))

    revoke = actions.add_parser("revoke", help="revoke a key for good")
    revoke.add_argument("id", type=_key_id, help="the key's id")
    revoke.set_defaults(run=_runner(_revoke))

    rotate = actions.add_parser(
        "rotate", help="create a replacement key; the old one expires after an overlap"
    )
    rotate.add_argument("id", type=_key_id, help="the id of the key to replace")
    rotate.add_argument(
        "--overlap",
        type=parse_duration,
        default=86_400.0,
        help="how long the old key keeps working (default 1d)",
    )
    rotate.add_argument(
        "--expires-in", type=parse_duration, default=None, help="the new key's lifetime"
    )
    rotate.set_defaults(run=_runner(_rotate))


Action = Callable[[ApiKeys, argparse.Namespace], Awaitable[int]]


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def with_keys(settings: Settings, store: Store) -> int:
            return await action(ApiKeys(store, prefix=settings.auth.api_key_prefix), args)

        return run_with_store("keys", _NO_REDIS, with_keys, max_connections=4)

    return run


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _announce(new: NewApiKey, what: str) -> None:
    record = new.record
    scopes = " ".join(sorted(record.scopes)) or "(none)"
    expires = _when(record.expires) if record.expires is not None else "never"
    print(new.key, flush=True)
    print(
        f"{what} key {record.id} for {record.name!r}: scopes {scopes}, expires {expires}.\n"
        "This is the only time the key is shown: only its hash is stored.",
        file=sys.stderr,
    )


async def _create(keys: ApiKeys, args: argparse.Namespace) -> int:
    try:
        new = await keys.create(args.name, scopes=args.scopes, expires_in_s=args.expires_in)
    except ValueError as exc:
        print(f"bastion keys create: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _announce(new, "created")
    return EXIT_OK


async def _rotate(keys: ApiKeys, args: argparse.Namespace) -> int:
    try:
        new = await keys.rotate(args.id, overlap_s=args.overlap, expires_in_s=args.expires_in)
    except KeyError:
        print(f"bastion keys rotate: no key {args.id}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        print(f"bastion keys rotate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _announce(new, "created replacement")
    old = await keys.get(args.id)
    until = _when(old.expires if old is not None else None)
    print(f"The old key {args.id} keeps working until {until}.", file=sys.stderr)
    return EXIT_OK


async def _revoke(keys: ApiKeys, args: argparse.Namespace) -> int:
    if not await keys.revoke(args.id):
        print(f"bastion keys revoke: no key {args.id}", file=sys.stderr)
        return EXIT_FAILED
    print(f"revoked key {args.id}; every worker refuses it within a second", file=sys.stderr)
    return EXIT_OK


def _row(record: ApiKeyRecord, now: float) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "scopes": sorted(record.scopes),
        "status": record.status(now),
        "created": _when(record.created),
        "expires": _when(record.expires),
        "last_used": _when(record.last_used),
        "replaced_by": record.replaced_by,
    }


async def _list(keys: ApiKeys, args: argparse.Namespace) -> int:
    now = datetime.now(UTC).timestamp()
    rows = [_row(record, now) for record in await keys.list()]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    columns = ("id", "name", "scopes", "status", "created", "expires", "last_used")
    header = [column.upper().replace("_", " ") for column in columns]
    table = [header] + [
        [" ".join(row[c]) if c == "scopes" else str(row[c] or "-") for c in columns] for row in rows
    ]
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    return EXIT_OK

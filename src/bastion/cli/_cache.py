"""``bastion cache purge --tag T``: invalidate cached responses and values by tag, in Redis.

Purging gives each tag a new version in the configured Redis: every worker of every app sharing
``BASTION_REDIS_URL`` (and ``BASTION_STORES__KEY_PREFIX``) stops serving the entries carrying it
at once. Without ``BASTION_REDIS_URL``, each app process caches in its own memory, which this
command cannot reach: it says so and exits with status 2 instead of pretending to purge.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from bastion._urls import redact_url
from bastion.cache import backend_for_store
from bastion.cli._common import EXIT_OK, add_actions, run_with_store

if TYPE_CHECKING:
    from bastion.settings import Settings
    from bastion.stores import Store

__all__ = ["register"]

_NO_REDIS = (
    "bastion cache: BASTION_REDIS_URL is not set, so every app process caches in its own "
    "memory, which this command cannot reach: nothing was purged. Set BASTION_REDIS_URL (and "
    "BASTION_STORES__KEY_PREFIX, if the app sets it) to the Redis your app uses, or purge from "
    "inside the app: await bastion.cache_purge('tag')."
)


def _tag(text: str) -> str:
    tag = text.strip()
    if not tag:
        raise argparse.ArgumentTypeError("a tag must not be empty")
    return tag


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``cache`` command and its ``purge`` action."""
    parser = subparsers.add_parser(
        "cache",
        help="purge cached responses by tag",
        description=(
            "Act on the response and function caches of the apps sharing BASTION_REDIS_URL. "
            "Exit 0 on success, 1 if Redis failed, 2 for invalid settings or arguments, or "
            "without Redis."
        ),
    )
    actions = add_actions(parser)
    purge = actions.add_parser(
        "purge", help="invalidate every entry carrying one of the tags, in every worker"
    )
    purge.add_argument(
        "--tag",
        dest="tags",
        action="append",
        type=_tag,
        required=True,
        metavar="TAG",
        help="a tag to purge (repeat for several: --tag albums --tag album:42)",
    )
    purge.set_defaults(run=_purge)


def _purge(args: argparse.Namespace) -> int:
    tags: list[str] = list(dict.fromkeys(args.tags))

    async def purge(settings: Settings, store: Store) -> int:
        await backend_for_store(store).purge(*tags)
        where = redact_url(settings.redis_url or "")  # set: the store was built from it
        print(f"purged {', '.join(tags)} in {where}", file=sys.stderr)
        return EXIT_OK

    return run_with_store("cache purge", _NO_REDIS, purge, max_connections=2)

"""The demo's API key: writes to the catalog need scope ``catalog:write``.

``bastion demo`` makes one key before the workers start and hands it to all of them in
``BASTION_DEMO_API_KEY``, so every worker (and the banner) knows the same key. Started any other
way (``uvicorn bastion.demo:app``), the app takes the variable if it is set and otherwise makes a
key of its own, which it logs at startup. At startup each worker adds the key to bastion's store
(its memory, or Redis when ``BASTION_REDIS_URL`` is set), where only its hash is kept.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from bastion.auth import generate_key, parse_key
from bastion.exceptions import ConfigurationError, InvalidCredentials, StoreError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bastion import Bastion

__all__ = ["DEMO_KEY_VARIABLE", "WRITE_SCOPE", "install_demo_key"]

DEMO_KEY_VARIABLE = "BASTION_DEMO_API_KEY"
"""The environment variable that carries the demo's key to every worker."""
WRITE_SCOPE = "catalog:write"
"""The scope the catalog's write endpoints require."""

logger = logging.getLogger("bastion.demo")


def install_demo_key(app: FastAPI, bastion: Bastion) -> str:
    """Choose the demo key, keep it in ``app.state.demo_api_key``, and add it at startup.

    Raises:
        ConfigurationError: ``BASTION_DEMO_API_KEY`` is set but is not a key of bastion's prefix.
    """
    api_keys = bastion.api_keys
    given = os.environ.get(DEMO_KEY_VARIABLE)
    if given:
        try:
            parse_key(given, api_keys.prefix)
        except InvalidCredentials:
            raise ConfigurationError(
                f"{DEMO_KEY_VARIABLE} is not an API key of prefix {api_keys.prefix!r}; unset it "
                "to get a fresh one"
            ) from None
        key = given
    else:
        key = generate_key(api_keys.prefix)[0]
    app.state.demo_api_key = key

    async def add_key() -> None:
        try:
            record = await api_keys.add(key, name="demo", scopes=[WRITE_SCOPE])
        except StoreError as exc:  # the store's outage policy applies; the catalog still reads
            logger.warning("could not add the demo API key to the store: %s", exc)
            return
        if not given:
            # Nobody printed this key: say it once, at startup, as the banner would have.
            logger.warning("demo API key for writes (scope %s): %s", WRITE_SCOPE, key)
        logger.info("demo API key %s ready (scope %s)", record.id, WRITE_SCOPE)

    bastion.add_resource("demo API key", open=add_key)
    return key

"""bastion: production-grade ASGI services in one line.

::

    from fastapi import FastAPI
    from bastion import Bastion

    app = FastAPI()
    Bastion(app)

Public names are imported on first use, so ``import bastion`` stays cheap and an optional extra
is only imported by the feature that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bastion._app import Bastion
    from bastion._clock import Clock, ManualClock, SystemClock
    from bastion.context import RequestContext, current_context
    from bastion.events import Event, Hooks
    from bastion.exceptions import (
        BastionError,
        ConfigurationError,
        LifespanError,
        MissingDependencyError,
        StoreError,
        StoreTimeout,
        StoreUnavailable,
    )
    from bastion.settings import Settings, load_settings
    from bastion.stores import MemoryStore, RedisStore, Store

__all__ = [
    "Bastion",
    "BastionError",
    "Clock",
    "ConfigurationError",
    "Event",
    "Hooks",
    "LifespanError",
    "ManualClock",
    "MemoryStore",
    "MissingDependencyError",
    "RedisStore",
    "RequestContext",
    "Settings",
    "Store",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "SystemClock",
    "__version__",
    "current_context",
    "load_settings",
]

_LOCATIONS = {
    "Bastion": "bastion._app",
    "BastionError": "bastion.exceptions",
    "Clock": "bastion._clock",
    "ConfigurationError": "bastion.exceptions",
    "Event": "bastion.events",
    "Hooks": "bastion.events",
    "LifespanError": "bastion.exceptions",
    "ManualClock": "bastion._clock",
    "MemoryStore": "bastion.stores",
    "MissingDependencyError": "bastion.exceptions",
    "RedisStore": "bastion.stores",
    "RequestContext": "bastion.context",
    "Settings": "bastion.settings",
    "Store": "bastion.stores",
    "StoreError": "bastion.exceptions",
    "StoreTimeout": "bastion.exceptions",
    "StoreUnavailable": "bastion.exceptions",
    "SystemClock": "bastion._clock",
    "current_context": "bastion.context",
    "load_settings": "bastion.settings",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("bastion")
    try:
        module = _LOCATIONS[name]
    except KeyError:
        raise AttributeError(f"module 'bastion' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""The reference service: a small music catalog that uses bastion the way an application would.

``bastion demo`` serves it; so does any ASGI server, with as many workers as you like::

    uvicorn bastion.demo:app --workers 4

It keeps its data in SQLite (``bastion-demo.sqlite3`` in the current directory, or
``BASTION_DATABASE_URL``), created and seeded on first start. The pieces are laid out as a real
service would be, so each new bastion capability can be shown where it belongs:

- ``factory``: ``create_app(settings)``; ``main``: the ``app`` built from the environment;
- ``models``: SQLAlchemy models; ``schemas``: the API's pydantic models;
- ``db``: engine, sessions, and a create-and-seed that is safe with several workers;
- ``seed``: deterministic seed data; ``routers``: the endpoints, one module per resource.

``app`` and ``create_app`` are imported on first use, so importing ``bastion.demo.seed`` or
``bastion.demo.db`` does not build an app (and does not read settings).
"""

from __future__ import annotations

import importlib
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from bastion.exceptions import MissingDependencyError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bastion.demo.factory import create_app

    app: FastAPI

__all__ = ["app", "create_app"]

_LOCATIONS = {"app": "bastion.demo.main", "create_app": "bastion.demo.factory"}

# Checked without importing, so a missing extra is named before anything half-imports.
for _package in ("fastapi", "sqlalchemy", "aiosqlite"):
    if find_spec(_package) is None:
        raise MissingDependencyError(_package, "demo")


def __getattr__(name: str) -> Any:
    # The app lives in ``main`` rather than an ``app`` module: a submodule named ``app`` would be
    # bound as this package's ``app`` attribute on import and shadow the ASGI app uvicorn looks up.
    if name in _LOCATIONS:
        value = getattr(importlib.import_module(_LOCATIONS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bastion.demo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

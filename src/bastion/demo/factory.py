"""``create_app()``: the demo app, wrapped by ``Bastion``, its database a lifespan resource.

The database is registered with ``bastion.add_resource``: it opens after bastion's store at
startup (so it could use it) and closes before it at shutdown. Importing this module builds
nothing; ``bastion.demo.main`` holds the app built from the environment.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from bastion import Bastion
from bastion.demo.db import DEFAULT_DATABASE_URL, Database
from bastion.demo.routers import ROUTERS
from bastion.health import sqlalchemy_check

if TYPE_CHECKING:
    from bastion.settings import Settings

__all__ = ["create_app"]

_DESCRIPTION = """\
A small music catalog (artists, albums, tracks) served through bastion's pipeline: every
response carries an `X-Request-ID`, every error is an RFC 9457 problem, and the ops endpoints
live under the ops prefix (`/_bastion` by default).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the demo app, wrapped by ``Bastion``.

    Args:
        settings: bastion's settings (``database_url`` picks the database); read from the
            environment and ``.env`` when omitted.

    Returns:
        The FastAPI app; its ``state.bastion`` is the ``Bastion`` and ``state.database`` the
        ``Database``, both opened by the app's lifespan.

    Raises:
        ConfigurationError: the settings are invalid (the message names the variables).
    """
    app = FastAPI(
        title="bastion demo: music catalog",
        version=version("bastion"),
        description=_DESCRIPTION,
    )
    bastion = Bastion(app, settings)
    database = Database(bastion.settings.database_url or DEFAULT_DATABASE_URL)
    app.state.database = database
    bastion.add_resource("database", open=database.open, close=database.close)
    # The catalog cannot answer without its database: not ready while it does not.
    bastion.health.add("database", sqlalchemy_check(database.engine), groups=("ready",))
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        # Relative, so it still lands on the docs when served under a root path.
        return RedirectResponse("docs")

    return app

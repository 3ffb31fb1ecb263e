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
from bastion.demo.keys import install_demo_key
from bastion.demo.routers import ROUTERS
from bastion.health import sqlalchemy_check
from bastion.settings import load_settings

if TYPE_CHECKING:
    from bastion.settings import Settings

__all__ = ["DEMO_SHEDDING", "WRITE_BODY_LIMITS", "create_app"]

WRITE_BODY_LIMITS = [f"POST /artists={16 * 1024}"]
"""The demo's body limits when ``BASTION_GUARD__BODY_LIMITS`` sets none: an artist is a few
hundred bytes of JSON, so 16 KiB refuses junk before FastAPI parses it (the default for every
other route is 10 MiB)."""

DEMO_SHEDDING = {
    "max_concurrent": 16,
    "queue_size": 32,
    "queue_timeout_s": 1.0,
    "priorities": ["/slow=-10"],
}
"""The demo's load shedding when ``BASTION_SHEDDING__MAX_CONCURRENT`` is unset: 16 requests at
once per worker, 32 more waiting at most a second, and ``/slow`` served after everything else,
so a burst on it shows 503s with ``Retry-After`` while the catalog keeps answering."""

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
    settings = settings if settings is not None else load_settings()
    if not settings.guard.body_limits:
        guard = settings.guard.model_copy(update={"body_limits": WRITE_BODY_LIMITS})
        settings = settings.model_copy(update={"guard": guard})
    if settings.shedding.max_concurrent is None:
        shedding = settings.shedding.model_copy(update=DEMO_SHEDDING)
        settings = settings.model_copy(update={"shedding": shedding})
    bastion = Bastion(app, settings)
    database = Database(bastion.settings.database_url or DEFAULT_DATABASE_URL)
    app.state.database = database
    bastion.add_resource("database", open=database.open, close=database.close)
    # The catalog cannot answer without its database: not ready while it does not.
    bastion.health.add("database", sqlalchemy_check(database.engine), groups=("ready",))
    install_demo_key(app, bastion)  # writes need an API key with scope catalog:write
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        # Relative, so it still lands on the docs when served under a root path.
        return RedirectResponse("docs")

    return app

"""The demo app built from the environment: what ``uvicorn bastion.demo:app`` serves.

``Bastion(app)`` runs when this module is imported, so invalid ``BASTION_*`` settings stop the
import (and the server, in every worker) with a ``ConfigurationError`` naming the variable.
"""

from __future__ import annotations

from bastion.demo.factory import create_app

__all__ = ["app"]

app = create_app()
"""The demo app, with settings from the environment and ``.env``."""

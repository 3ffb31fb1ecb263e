"""The demo's endpoints, one router per resource; ``ROUTERS`` is what the app includes."""

from __future__ import annotations

from bastion.demo.routers import albums, artists, slow, tracks

__all__ = ["ROUTERS"]

ROUTERS = (artists.router, albums.router, tracks.router, slow.router)
"""Every router of the demo, in the order they appear in the API docs."""

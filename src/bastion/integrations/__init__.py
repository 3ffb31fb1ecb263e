"""Framework integrations: what bastion adds to a Starlette or FastAPI app beyond middleware."""

from __future__ import annotations

__all__: list[str] = []

"""A FastAPI app behind ``Bastion``, configured only by the environment: one worker process of
the multi-process authentication tests (served by ``tests.servers.serve``)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from bastion import Bastion
from bastion.context import current_context

app = FastAPI()
bastion = Bastion(app)


@app.get("/me")
async def me() -> dict[str, Any]:
    """Who the request is, and which process answered."""
    return {"principal": current_context().principal, "pid": os.getpid()}

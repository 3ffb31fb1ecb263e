"""An app the two-process ban test serves with uvicorn, configured by ``BASTION_*`` variables.

``/login`` always answers 401; ``/ok`` 200; ``/listening`` says whether this process follows
the bans other workers decide.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, HTTPException

from bastion import Bastion

app = FastAPI()
bastion = Bastion(app)


@app.get("/login")
async def login() -> None:
    """A failed sign-in."""
    raise HTTPException(401)


@app.get("/ok")
async def ok() -> dict[str, int]:
    """A clean request: answers with the worker's process id."""
    return {"pid": os.getpid()}


@app.get("/listening")
async def listening() -> dict[str, bool]:
    """Whether this worker has subscribed to the bans channel."""
    return {"listening": bastion.bans is not None and bastion.bans.listening}

"""An app served by ``uvicorn --workers 2`` in the metrics test: says which worker answered."""

from __future__ import annotations

import os

from fastapi import FastAPI

from bastion import Bastion

app = FastAPI()
Bastion(app)


@app.get("/pid/{item}")
async def pid(item: int) -> dict[str, int]:
    """The worker's process id, so the test can tell the requests reached both workers."""
    return {"pid": os.getpid(), "item": item}

"""An app served by a real uvicorn in the graceful-shutdown test: slow requests to drain."""

from __future__ import annotations

import anyio
from fastapi import FastAPI

from bastion import Bastion, Settings

app = FastAPI()
Bastion(app, Settings(_env_file=None, shutdown={"pre_stop_delay_s": 1.0}))


@app.get("/slow")
async def slow() -> dict[str, bool]:
    """Take a while, so that requests are in flight when SIGTERM arrives."""
    await anyio.sleep(1.5)
    return {"done": True}

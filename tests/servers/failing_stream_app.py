"""An app served by a real uvicorn in tests: a stream that fails after it started."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from bastion import Bastion, Settings

app = FastAPI()
Bastion(app, Settings(_env_file=None))


@app.get("/stream")
async def stream() -> StreamingResponse:
    """Send one chunk, then fail: the response has started and cannot become a 500."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first chunk\n"
        raise RuntimeError("the upstream died mid-stream")

    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/boom")
async def boom() -> None:
    """Fail before responding: this one becomes a problem+json 500."""
    raise RuntimeError("kaboom")

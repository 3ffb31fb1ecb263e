"""A stand-in identity provider for the JWT tests, served by a real uvicorn (``serve()``).

``GET /jwks.json`` answers with the file named by ``JWKS_FILE`` as it is at that moment (the test
rewrites it to rotate keys), or 503 while the file is missing (the IdP is down). ``GET /hits``
counts the JWKS requests served so far, so tests can prove how often bastion fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

_hits = 0


async def jwks(request: Request) -> Response:
    """The JWKS file, or 503 while it does not exist."""
    global _hits
    _hits += 1
    path = Path(os.environ["JWKS_FILE"])
    try:
        body = path.read_bytes()  # noqa: ASYNC240 - a tiny local file in a test server
    except FileNotFoundError:
        return PlainTextResponse("identity provider down", status_code=503)
    return Response(body, media_type="application/json")


async def hits(request: Request) -> Response:
    """How many JWKS requests were served."""
    return JSONResponse({"hits": _hits})


async def health(request: Request) -> Response:
    """Readiness for ``serve()``."""
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/jwks.json", jwks), Route("/hits", hits), Route("/health", health)])

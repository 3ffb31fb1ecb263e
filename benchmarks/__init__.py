"""Side-by-side benchmarks of bastion and the stacks users assemble today.

Not a test suite: nothing here runs in CI or under pytest. ``python -m benchmarks.run`` measures
every registered app in one run, in-process (the ASGI callable driven directly) and over HTTP
(uvicorn + wrk on loopback), and writes a Markdown and a JSON report to ``benchmarks/results/``.
See ``benchmarks/README.md`` for the method.
"""

from __future__ import annotations

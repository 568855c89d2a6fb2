"""The review service serving a config on its port for a test, with a logged-out HTTP client (cookies kept)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from edge.config import Config
from edge.review.service import serve


@asynccontextmanager
async def review_http(cfg: Config) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """(the service's base URL, a client) once it answers; the service is stopped on leaving."""
    stop = asyncio.Event()
    server = asyncio.create_task(serve(cfg, stop))
    base = f"http://127.0.0.1:{cfg.review.port}"
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
            for _ in range(100):
                try:
                    async with http.get(f"{base}/metrics"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            yield base, http
    finally:
        stop.set()
        await server

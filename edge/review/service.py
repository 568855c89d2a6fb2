"""``edge-inspect review --config FILE``: the review service as a process of its own, so the inspection path never
waits on it. It opens the station's capture store and calibration store (the files the daemon writes; SQLite WAL
lets both processes at them) and reads the wafers in the daemon's outbox, serves ``edge.review.app`` on
``review.host``:``review.port`` (127.0.0.1 by default; TLS belongs in a reverse proxy in front of it) and stops on
SIGTERM or SIGINT.

    edge-inspect review --config /etc/edge-inspect/edge.toml
    edge-inspect review --hash-password          # reads a password on stdin, prints its argon2 hash for the config
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys

from aiohttp import web

from calibration.errors import CalibrationError
from calibration.store import CalibrationStore
from edge.capture.store import CaptureStore
from edge.config import Config, load_config
from edge.errors import EdgeError
from edge.ops.async_db import AsyncDb
from edge.ops.logs import configure, get
from edge.review.app import ReviewService, Stores
from edge.review.auth import hash_password
from edge.review.wafers import WaferBook

log = get("edge.review")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the station's TOML config ([review], [capture], [calibration])")
    parser.add_argument(
        "--hash-password", action="store_true", help="read a password on stdin, print its hash for review.users"
    )


async def open_stores(cfg: Config) -> Stores:
    """The capture and calibration stores, opened on the service's thread."""
    thread = AsyncDb()
    c = cfg.capture
    captures = await thread(CaptureStore, c.path, c.max_bytes, c.retention_days * 86400, c.tombstone_days * 86400)
    calibration = await thread(CalibrationStore, cfg.calibration.path)
    return Stores(captures, calibration, WaferBook(cfg.outbox.path), thread)


async def close_stores(stores: Stores) -> None:
    await stores.thread(stores.captures.close)
    await stores.thread(stores.calibration.close)
    await stores.thread(stores.wafers.close)
    stores.thread.close()


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set."""
    stores = await open_stores(cfg)
    runner = web.AppRunner(ReviewService(cfg, stores).app(), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, cfg.review.host, cfg.review.port)
        await site.start()
        port = runner.addresses[0][1]
        log.info("review_started", url=f"http://{cfg.review.host}:{port}/", users=len(cfg.review.users))
        print(f"review service on http://{cfg.review.host}:{port}/", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        await close_stores(stores)
        log.info("review_stopped")


def main(args: argparse.Namespace) -> int:
    if args.hash_password:
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if not password:
            print("edge-inspect review: an empty password", file=sys.stderr)
            return 2
        print(hash_password(password))
        return 0
    if not args.config:
        print("edge-inspect review: --config is required", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except EdgeError as err:
        print(f"edge-inspect review: {err}", file=sys.stderr)
        return 2
    configure("info")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    try:
        asyncio.run(run())
    except (EdgeError, CalibrationError, OSError) as err:
        print(f"edge-inspect review: {err}", file=sys.stderr)
        return 1
    return 0

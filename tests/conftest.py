"""Shared fixtures: a private Mosquitto broker on a free port (real broker, real sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.station.mosquitto import Mosquitto, mosquitto_binary


@pytest.fixture
def mosquitto(tmp_path) -> Iterator[Mosquitto]:
    """A fresh broker per test; fails (never skips) when Mosquitto is not installed."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: run `make deps` (Debian package mosquitto)", pytrace=False)
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()

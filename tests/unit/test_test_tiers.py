"""The test tiers (DESIGN 5): every module that starts a server carries its tier's marker, so
`pytest -m "not integration and not e2e"` runs no server."""

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tier", ["integration", "e2e"])
def test_every_server_test_module_carries_its_tier_marker(tier):
    modules = sorted((TESTS / tier).glob("test_*.py"))
    assert modules
    unmarked = [m.name for m in modules if f"pytestmark = pytest.mark.{tier}" not in m.read_text()]
    assert unmarked == []

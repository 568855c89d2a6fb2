"""What a fresh install gets: floors that hold up (a paho-mqtt that has ``drop_out_messages``, a setuptools that
takes the SPDX ``license`` string), and a constraints file whose pins every range in pyproject.toml allows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements() -> list[Requirement]:
    extras = PROJECT["project"]["optional-dependencies"]
    return [Requirement(r) for r in PROJECT["project"]["dependencies"] + [r for rs in extras.values() for r in rs]]


def pins() -> dict[str, str]:
    lines = (ROOT / "tools" / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pairs}


def spec(name: str) -> Requirement:
    [found] = [r for r in requirements() if canonicalize_name(r.name) == name]
    return found


@pytest.mark.parametrize(("name", "refused", "allowed"), [
    ("paho-mqtt", "2.1.0", "2.2.0"),  # 2.1 lacks Client.drop_out_messages(): every connect would fail
])  # fmt: skip
def test_dependency_floors_refuse_versions_that_break_the_daemon(name, refused, allowed):
    assert refused not in spec(name).specifier and allowed in spec(name).specifier


def test_the_build_backend_floor_takes_the_spdx_license_string():
    [setuptools] = [Requirement(r) for r in PROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert isinstance(PROJECT["project"]["license"], str)
    assert "76.1.0" not in setuptools.specifier and "77.0.0" in setuptools.specifier


def test_every_pin_in_the_constraints_file_is_allowed_by_pyproject():
    pinned = pins()
    outside = {
        r.name: (str(r.specifier), pinned[canonicalize_name(r.name)])
        for r in requirements()
        if canonicalize_name(r.name) in pinned and pinned[canonicalize_name(r.name)] not in r.specifier
    }
    assert not outside, f"constraints.txt pins versions pyproject.toml refuses: {outside} (run `make lock`)"


def test_every_runtime_dependency_is_pinned():
    pinned = pins()
    unpinned = [r.name for r in requirements() if canonicalize_name(r.name) not in pinned and r.marker is None]
    gpu_only = {canonicalize_name(r) for r in ("tensorrt-cu13", "pycuda")}  # installed on the GPU host only
    assert {canonicalize_name(n) for n in unpinned} <= gpu_only, unpinned

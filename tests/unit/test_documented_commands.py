"""Every ``python -m`` command the project documents or runs (README, Makefile, Dockerfile, systemd units, shell
scripts, the repository README) names a first-party module that exists: a module that moved is caught here, not
on a station's first start."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("edge", "calibration", "tools")
COMMAND = re.compile(r"(?:python3?|\$\(PY\)|\$PY)\s+-m\s+([A-Za-z_][\w.]*)")


def documents() -> list[Path]:
    named = ["README.md", "Makefile", "Dockerfile.edge", "model_repository/README.md"]
    return [ROOT / n for n in named] + sorted((ROOT / "systemd").rglob("*.service")) + sorted(ROOT.glob("tools/*.sh"))


def runnable(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


def test_every_documented_module_command_exists():
    found = {(doc.relative_to(ROOT).as_posix(), m) for doc in documents() for m in COMMAND.findall(doc.read_text())}
    ours = {(doc, m) for doc, m in found if m.split(".")[0] in FIRST_PARTY}
    assert len(ours) > 20  # the scan sees the commands (make targets, README, units, the container start)
    assert not [(doc, m) for doc, m in sorted(ours) if not runnable(m)]


def test_the_scan_would_catch_a_moved_module():
    assert runnable("tools.gpu.build_engines") and not runnable("tools.build_engines")

"""What produced a set of trained models: digests of the training code and of the data recipe, and the versions of the
libraries that ran it.

    python -m tools.provenance sources    # the first-party files that training and measuring read, one per line
    python -m tools.provenance digest     # the code digest of this checkout

The code is every first-party module that ``tools.train`` and ``tools.quantize`` import, followed import by import
(``sources``), so a new helper module is covered the day it is imported. ``tools.train`` writes ``provenance.json``
beside the models it trains; the model cards print it, and a unit test fails when the cards' code digest no longer
matches this checkout (regenerate them with ``make cards``). The Makefile takes its training prerequisites from
``sources`` too. This module imports only the standard library at load, so the Makefile can run it before the
virtual environment exists.
"""

from __future__ import annotations

import ast
import hashlib
import json
import platform
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("tools", "edge", "calibration")
ENTRY_MODULES = ("tools.train", "tools.quantize")
DEPENDENCIES = ("torch", "numpy", "onnx", "onnxruntime", "opencv-python-headless")
RECORD = "provenance.json"


def _module_file(module: str) -> Path | None:
    """The source file of a first-party ``module`` (a package's ``__init__.py``), None when it is not ours."""
    if module.split(".")[0] not in FIRST_PARTY:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Modules ``path`` imports (absolute names; ``from pkg import name`` also yields ``pkg.name``)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def sources(entries: tuple[str, ...] = ENTRY_MODULES) -> list[Path]:
    """Every first-party source file the ``entries`` modules read, transitively, sorted."""
    seen: dict[str, Path] = {}
    pending = list(entries)
    while pending:
        module = pending.pop()
        path = _module_file(module)
        if path is None or module in seen:
            continue
        seen[module] = path
        pending.extend(_imports(path, module) - set(seen))
        parent = module.rpartition(".")[0]
        if parent:
            pending.append(parent)  # a package's __init__ runs before its modules
    return sorted(set(seen.values()))


def code_digest(paths: list[Path] | None = None) -> str:
    """SHA-256 over each source's path (relative to the checkout) and bytes."""
    digest = hashlib.sha256()
    for path in paths if paths is not None else sources():
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def data_recipe() -> dict[str, Any]:
    """The seeds, sizes and mixes that decide which dies are drawn for training, held-out figures and calibration."""
    from edge.taxonomy import DEFAULT_CLASSES
    from tools import quantize, training

    return {
        "budgets": {"full": asdict(training.FULL), "quick": asdict(training.QUICK)},
        "reference_train_seed": training.TRAIN_SEED,
        "heldout_seed": training.HELDOUT_SEED,
        "bands_seed": training.BANDS_SEED,
        "validation_seed_offset": training.VALIDATION_OFFSET,
        "calibration_seed": quantize.CALIBRATION_SEED,
        "heldout_shift": training.HELDOUT_SHIFT,
        "classes": list(DEFAULT_CLASSES),
        "class_weights": {"heldout": training.class_weights(), "training": training.class_weights(training=True)},
    }


def digest_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def dependency_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def record(budget: str, seed: int) -> dict[str, Any]:
    """The provenance of one training run, as ``tools.train`` writes it."""
    import torch

    recipe = data_recipe()
    return {
        "code_digest": code_digest(),
        "data_recipe_digest": digest_of(recipe),
        "dependencies": dependency_versions(),
        "budget": budget,
        "seed": seed,
        "host": f"{platform.machine()}, torch CPU kernels {torch.backends.cpu.get_cpu_capability()}",
        "sources": [path.relative_to(ROOT).as_posix() for path in sources()],
    }


def read(models: Path) -> dict[str, Any] | None:
    path = models / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["sources"]:
        print("\n".join(path.relative_to(ROOT).as_posix() for path in sources()))
    elif args == ["digest"]:
        print(code_digest())
    else:
        print("usage: python -m tools.provenance sources|digest", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

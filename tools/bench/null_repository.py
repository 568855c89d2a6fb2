"""A null model repository: a built repository's models with their compute taken out (``model_repository/null``).

Every model and version of ``--repository`` keeps its configs (tensors, batching, bands, contract, digests), so the
daemon serves it exactly as it serves the real one; each version's ``model.py`` becomes the null model and its other
files are left out. What the daemon then reaches is its own ceiling: Triton's round trip stays, the models' arithmetic
goes (``tools.bench.ceiling``).

    python -m tools.bench.null_repository --repository build/model_repository --out build/null_repository
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

NULL_MODEL = Path(__file__).resolve().parents[2] / "model_repository" / "null" / "model.py"
CONFIG = "config.pbtxt"


def build(repository: Path, out: Path) -> list[str]:
    """Write the null form of ``repository`` to ``out`` (replaced whole); returns the models written."""
    models = sorted(p.parent.name for p in repository.glob(f"*/{CONFIG}"))
    if not models:
        raise FileNotFoundError(f"no model configs under {repository}: run `make models` first")
    shutil.rmtree(out, ignore_errors=True)
    for name in models:
        source, target = repository / name, out / name
        target.mkdir(parents=True)
        shutil.copyfile(source / CONFIG, target / CONFIG)
        for version in sorted(p for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
            (target / version.name).mkdir()
            shutil.copyfile(NULL_MODEL, target / version.name / "model.py")
            if (version / CONFIG).is_file():
                shutil.copyfile(version / CONFIG, target / version.name / CONFIG)
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.null_repository", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--out", type=Path, default=Path("build/null_repository"))
    args = parser.parse_args(argv)
    try:
        models = build(args.repository, args.out)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"null repository of {', '.join(models)} at {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

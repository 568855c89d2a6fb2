"""The reference models trained over several seeds: every headline figure as a mean with its spread, per precision.

    python -m tools.reports.seed_spread --seeds 1 2 3 4 5 --out build/seeds [--reference build/models] [--quick]

Each seed is trained (``tools.train --seed S --no-baselines``) into ``<out>/seed-S`` and given its precision forms
(``tools.quantize``, which measures FP32, FP16 and INT8 in ONNX Runtime on the same held-out dies and gates them).
A seed folder whose ``provenance.json`` matches this checkout's code digest and budget is reused, and so is
``--reference`` (the folder ``make models`` trains) for its own seed, so a rerun only trains what changed.

``<out>/seed_spread.json`` holds, per model, precision and figure: the values per seed, mean, sample standard
deviation, min and max; and how many seeds' forms passed the precision gate. A training run on another machine of
the same kind lands somewhere inside this spread, not on the reference's figures: its CPU picks other BLAS and
oneDNN kernels, whose different rounding sends training down another path from the first step on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tools import provenance
from tools.precision_gate import PRECISIONS, REPORT
from tools.quantize import MODELS
from tools.quantize import main as quantize
from tools.train import main as train
from tools.training import log

FIGURES = {
    "anomaly": ("auroc", "fnr_at_fpr_5pct", "good_at_or_above_pass_band", "band_changes"),
    "classifier": ("accuracy", "macro_f1", "escape_rate", "false_positive_rate", "top1_changes"),
}
SPREAD = "seed_spread.json"


def current(folder: Path, digest: str, budget: str, seed: int | None = None) -> bool:
    """``folder`` holds trained and measured models of the code with ``digest``, ``budget`` (and ``seed``)."""
    record = provenance.read(folder)
    return bool(
        record
        and (folder / REPORT).is_file()
        and record.get("code_digest") == digest
        and record.get("budget") == budget
        and (seed is None or record.get("seed") == seed)
    )


def train_seed(folder: Path, seed: int, quick: bool) -> None:
    """Train and measure one seed into ``folder``."""
    budget = ["--quick"] if quick else []
    if train(["--model", "all", "--out", str(folder), "--seed", str(seed), "--no-baselines", *budget]) != 0:
        raise SystemExit(f"seed_spread: training seed {seed} into {folder} failed")
    if quantize(["--models", str(folder), "--budget", "quick" if quick else "full"]) != 0:
        raise SystemExit(f"seed_spread: measuring the precision forms in {folder} failed")


def summarise(values: list[float]) -> dict[str, Any]:
    return {
        "values": values,
        "mean": round(statistics.fmean(values), 5),
        "sd": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def spread(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per model, precision and figure, the summary over the seeds' precision reports; gate passes per form."""
    models: dict[str, Any] = {}
    for name in MODELS:
        models[name] = {}
        for precision in PRECISIONS:
            rows = [report["models"][name][precision] for report in reports.values()]
            figures = {
                figure: summarise([float(row["metrics"][figure]) for row in rows])
                for figure in FIGURES[name]
                if all(row["metrics"].get(figure) is not None for row in rows)
            }
            passed = sum(bool(row["gate"]["passed"]) for row in rows)
            models[name][precision] = {"figures": figures, "gate_passed": f"{passed}/{len(rows)}"}
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reports.seed_spread", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=Path("build/seeds"))
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("build/models"),
        help="models already trained by `make models`, counted for their own seed when current",
    )
    parser.add_argument("--quick", action="store_true", help="the QUICK budget (for a trial of the tool)")
    args = parser.parse_args(argv)
    budget = "quick" if args.quick else "full"
    started, digest = time.monotonic(), provenance.code_digest()
    folders: dict[int, Path] = {}
    for seed in args.seeds:
        folder = args.out / f"seed-{seed}"
        if current(args.reference, digest, budget, seed):
            folder = args.reference
        elif not current(folder, digest, budget, seed):
            log(f"seed {seed}: training into {folder}")
            train_seed(folder, seed, args.quick)
        folders[seed] = folder
        log(f"seed {seed}: measured models in {folder}")
    reports = {seed: json.loads((folder / REPORT).read_text()) for seed, folder in folders.items()}
    result = {
        "seeds": list(folders),
        "budget": budget,
        "code_digest": digest,
        "heldout": next(iter(reports.values()))["data"],
        "models": spread(reports),
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / SPREAD).write_text(json.dumps(result, indent=2) + "\n")
    for name, forms in result["models"].items():
        for precision, entry in forms.items():
            shown = ", ".join(f"{k} {v['mean']:.4g}±{v['sd']:.2g}" for k, v in entry["figures"].items())
            log(f"{name} {precision}: {shown}; gate passed {entry['gate_passed']}")
    log(f"wrote {args.out / SPREAD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train, evaluate and export the ``anomaly`` and ``classifier`` models on synthetic fab data.

    python -m tools.train --model anomaly|classifier|all --out build/models [--quick]

Training data comes from seed ``TRAIN_SEED``; every metric is measured on dies from other seeds seen through
slightly shifted tool optics (``tools.training``). Writes ``<model>.onnx`` and ``<model>_metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tools import train_anomaly, train_classifier
from tools.training import FULL, QUICK, THREADS, HeldOut, log

RUNNERS = {"anomaly": train_anomaly, "classifier": train_classifier}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("anomaly", "classifier", "all"), default="all")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    parser.add_argument("--quick", action="store_true", help="same architectures, less data and fewer epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    budget = QUICK if args.quick else FULL
    held = HeldOut(budget)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for name in RUNNERS if args.model == "all" else (args.model,):
        module = RUNNERS[name]
        metrics = module.run(budget, held, args.out)
        metrics["budget"] = {"name": "quick" if args.quick else "full", **asdict(budget)}
        (args.out / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log(module.summary(metrics))
    log(f"done in {time.monotonic() - started:.1f}s, outputs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

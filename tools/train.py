"""Train, evaluate and export the ``anomaly`` and ``classifier`` models on synthetic fab data.

    python -m tools.train --model anomaly|classifier|all --out build/models [--quick] [--seed N] [--no-baselines]

Training data, initial weights and batch order come from ``--seed`` (``TRAIN_SEED`` for the reference models);
every metric is measured on the same held-out dies from other seeds, seen through slightly shifted tool optics
(``tools.training``). Writes ``<model>.onnx``, ``<model>_metrics.json`` and ``provenance.json`` (``tools.provenance``)
to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tools import provenance, train_anomaly, train_classifier
from tools.training import FULL, QUICK, THREADS, TRAIN_SEED, HeldOut, Run, log

RUNNERS = {"anomaly": train_anomaly, "classifier": train_classifier}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("anomaly", "classifier", "all"), default="all")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    parser.add_argument("--quick", action="store_true", help="same architectures, less data and fewer epochs")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED, help="training seed (data, weights, batch order)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip the PCA and vision-only CNN baselines the model cards compare against")
    args = parser.parse_args(argv)
    try:
        run = Run(args.seed, args.baselines)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    budget = QUICK if args.quick else FULL
    held = HeldOut(budget)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for name in RUNNERS if args.model == "all" else (args.model,):
        module = RUNNERS[name]
        metrics = module.run(budget, held, args.out, run)
        metrics["budget"] = {"name": "quick" if args.quick else "full", **asdict(budget)}
        (args.out / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log(module.summary(metrics))
    record = provenance.record("quick" if args.quick else "full", run.seed)
    (args.out / provenance.RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log(f"done in {time.monotonic() - started:.1f}s, outputs in {args.out} (code {record['code_digest'][:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

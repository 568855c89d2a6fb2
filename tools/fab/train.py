"""Train both models on a fab's labelled folder and write them into a model repository as a new version.

    edge-inspect train --data DIR --out REPOSITORY [--budget quick|full] [--resume] [--work DIR] [--seed N]
                       [--spread N] [--precision anomaly=fp32 classifier=int8]

1. The folder is checked whole (``tools.dataset.folder``); a broken one is refused with every problem by file and
   line, before anything trains. Warnings are printed and go into the card.
2. Every image goes through the serving rule (``edge.contract.images``), every process row through the serving
   vector (``tools.dataset.arrays``).
3. The anomaly VAE trains on the GOOD dies of ``train`` (``tools.fab.anomaly``), the classifier on all of
   ``train`` (``tools.fab.classifier``), each stopped early on ``val``; bands and score weights come from ``val``.
4. The FP32, FP16 and INT8 ONNX forms are written and measured on ``test`` (``tools.fab.forms``); the figures of
   the served FP32 graph on ``test``, overall, per tool, per recipe and without the process log, go into
   ``metrics.json``, the card and its pictures (``tools.fab.evaluate``, ``card``, ``figures``).
5. With ``--spread N``, N-1 more seeds are trained and measured the same way (not served): every gated figure of
   every form, and each class's recall, as mean, deviation and range over the N seeds (metrics and card).
6. A new numbered version is written into the repository (``tools.fab.version``), with a config fragment for the
   station (``station.toml``: the classes and each recipe's process parameters the daemon must be given).

Work files (checkpoints after every epoch, the ONNX forms, the report) stay in ``--work`` (default: beside the
repository, ``<REPOSITORY>-training``); ``--resume`` continues an interrupted run of the same data, budget and seed
from its last finished epoch. Exit 0: a version written; 1: the data refused or a step failed; 2: bad arguments.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import EdgeError
from edge.ingest.imaging import png_size
from tools.build_repository import band_parameters, contract_parameters, served_precision
from tools.dataset.arrays import MODEL_SIZE, Arrays, arrays
from tools.dataset.digest import data_digest
from tools.dataset.folder import DataSet, DataSetRefused, load
from tools.dataset.split import SPLITS
from tools.fab import anomaly, card, classifier, figures
from tools.fab.evaluate import anomaly_figures, classifier_figures, targets
from tools.fab.forms import Outputs, feeds, make_forms, write_report
from tools.fab.loop import Schedule, log
from tools.fab.version import next_version, write_version
from tools.metrics import classification_report
from tools.precision_gate import parse_precisions
from tools.quantize import run_all
from tools.reports.seed_spread import spread, summarise

THREADS = 2


@dataclass(frozen=True)
class Budget:
    name: str
    vae_epochs: int
    cls_epochs: int
    patience: int
    epoch_dies: int | None  # dies drawn per epoch (None: the whole training split)


BUDGETS = {
    "quick": Budget("quick", vae_epochs=4, cls_epochs=4, patience=2, epoch_dies=1000),
    "full": Budget("full", vae_epochs=10, cls_epochs=20, patience=5, epoch_dies=None),
}
VAE_LR, CLS_LR = 2e-3, 2e-3
DEFAULT_PRECISION = {"anomaly": "fp32", "classifier": "fp32"}


def describe(data: DataSet, digest: str, warnings: list[str]) -> dict[str, Any]:
    counts = {s: dict(Counter(d.cls for d in data.split(s))) for s in SPLITS}
    return {
        "name": data.root.name, "digest": digest, "dies": len(data.dies), "classes": list(data.classes),
        "parameters": list(data.parameters), "tools": sorted({d.tool_id for d in data.dies}),
        "recipes": sorted({d.recipe_id for d in data.dies}), "split_given": data.split_given, "splits": list(SPLITS),
        "counts": counts, "warnings": warnings,
    }  # fmt: skip


def image_sizes(data: DataSet) -> list[tuple[int, int]]:
    """The (height, width) of the set's dies, each size once, read from the PNG headers."""
    sizes = set()
    for die in data.dies:
        with die.path.open("rb") as f:
            size = png_size(f.read(24))
        if size is not None:
            sizes.add(size)
    return sorted(sizes)


def station_fragment(data: DataSet, version: int) -> str:
    """The part of a station's config that must agree with this version's contract: the classes, each recipe's
    parameters and, when the dies are not at the models' size, fitting frames by the rule training applied."""
    lines = [
        f"# The classes and process parameters of model version {version}: the daemon refuses to start",
        "# when its config says otherwise. Paste into the station's config (edge-inspect check-config).",
    ]
    other = [f"{h}x{w}" for h, w in image_sizes(data) if (h, w) != MODEL_SIZE]
    if other:
        lines += [f"# These dies are {', '.join(other)}: the station fits frames of another size than "
                  f"{MODEL_SIZE[0]}x{MODEL_SIZE[1]} by the rule", "# training applied only with this in [ingest]:",
                  "#   resize = true"]  # fmt: skip
    lines += ["[decision]", f"classes = {json.dumps(list(data.classes))}", ""]
    for recipe in sorted({d.recipe_id for d in data.dies}):
        lines += [f"[recipes.{json.dumps(recipe)}]", f"parameters = {json.dumps(list(data.parameters))}", ""]
    return "\n".join(lines)


def _masked(test: Arrays) -> dict[str, np.ndarray]:
    inputs = feeds("classifier", test)
    present = inputs["PRESENT"].copy()
    present[:, 0] = 0.0
    return {**inputs, "PROCESS": np.zeros_like(inputs["PROCESS"]), "PRESENT": present}


@dataclass
class Run:
    """One training run: its data, where it works, and what each step leaves for the next."""

    data: DataSet
    budget: Budget
    work: Path
    seed: int
    resume: bool
    digest: str
    split: dict[str, Arrays]
    seconds: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> Path:
        return self.work / "models"

    @property
    def key(self) -> str:
        return f"{self.digest}:{self.budget.name}:{self.seed}"


def fit(run: Run) -> tuple[anomaly.StandardisedAnomaly, dict[str, float]]:
    """Train both models and export their FP32 graphs; the anomaly graph and its bands."""
    train_set, val, test = (run.split[s] for s in SPLITS)
    t0 = time.monotonic()
    val_good = val.grey[val.labels == 0]
    schedule = Schedule(run.budget.vae_epochs, run.budget.patience, VAE_LR, run.key, run.budget.epoch_dies)
    vae, run.facts["anomaly"] = anomaly.train(train_set.grey[train_set.labels == 0], val_good, schedule,
                                              run.work / "anomaly.ckpt", run.seed, run.resume)  # fmt: skip
    graph, bands = anomaly.calibrate(vae, val_good)
    anomaly.export(graph, test.grey[:4], run.models / "anomaly.onnx")
    run.seconds["anomaly"] = time.monotonic() - t0
    t0 = time.monotonic()
    schedule = Schedule(run.budget.cls_epochs, run.budget.patience, CLS_LR, run.key, run.budget.epoch_dies)
    model, run.facts["classifier"] = classifier.train(
        classifier.with_residual(train_set, graph), classifier.with_residual(val, graph), run.data.classes,
        schedule, run.work / "classifier.ckpt", run.seed, run.resume,
    )  # fmt: skip
    classifier.export(graph, model, feeds("classifier", test, slice(0, 4)), run.models / "classifier.onnx")
    run.seconds["classifier"] = time.monotonic() - t0
    return graph, bands


def forms(run: Run, bands: dict[str, float]) -> tuple[dict[str, Any], dict[str, Outputs]]:
    """The FP16 and INT8 forms beside the FP32 graphs, all measured on ``test`` and gated (``precision_metrics.json``
    in the models folder); the report entries and the FP32 outputs on ``test``, per model."""
    entries, outputs = {}, {}
    for name in ("anomaly", "classifier"):
        entries[name], outputs[name] = make_forms(run.models, name, run.split["train"], run.split["test"],
                                                  run.data.classes, bands, log)  # fmt: skip
    write_report(run.models, entries, len(run.split["test"]))
    return entries, outputs


def seed_spread(run: Run, metrics: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Train and measure ``seeds`` the way ``run`` was (each in ``<work>/seed-S``, resumable, nothing served) and
    summarise every gated figure of every form, and each class's recall, over ``run``'s seed and these."""
    reports = {run.seed: {"models": metrics["precision"]["models"],
                          "recall": metrics["classifier"]["test"]["per_class_recall"]}}  # fmt: skip
    test = run.split["test"]
    for seed in seeds:
        other = replace(run, work=run.work / f"seed-{seed}", seed=seed, seconds={}, facts={})
        other.models.mkdir(parents=True, exist_ok=True)
        log(f"seed {seed}: training into {other.work}")
        _, bands = fit(other)
        entries, outputs = forms(other, bands)
        report = classification_report(outputs["classifier"]["PROBS"].argmax(1), test.labels, run.data.classes)
        reports[seed] = {"models": entries, "recall": report["per_class_recall"]}
    recall = {c: summarise([r["recall"][c] for r in reports.values()]) for c in run.data.classes
              if all(r["recall"].get(c) is not None for r in reports.values())}  # fmt: skip
    return {"seeds": list(reports), "budget": run.budget.name, "models": spread(reports),
            "per_class_recall": recall}  # fmt: skip


def measure(run: Run, bands: dict[str, float], report: Path) -> dict[str, Any]:
    """The forms, gated on ``test``; the figures of the FP32 graphs on ``test``; the card's pictures in ``report``."""
    classes, test = run.data.classes, run.split["test"]
    t0 = time.monotonic()
    entries, outputs = forms(run, bands)
    run.seconds["forms"] = time.monotonic() - t0
    probs, attention = outputs["classifier"]["PROBS"], outputs["classifier"]["ATTENTION"]
    probs_no_log = run_all(run.models / "classifier.onnx", _masked(test))["PROBS"]
    groups = {"tool": (test.tools, test.tool), "recipe": (test.recipes, test.recipe)}
    cls_test = classifier_figures(probs, probs_no_log, test.labels, classes, groups)
    scores, heat = outputs["anomaly"]["SCORE"][:, 0], outputs["anomaly"]["HEATMAP"]
    shutil.rmtree(report, ignore_errors=True)
    report.mkdir(parents=True)
    figures.confusion_png(report / "confusion.png", cls_test["confusion_matrix"]["rows_true_cols_pred"], classes)
    figures.recall_png(report / "recall.png", cls_test["per_class_recall"],
                       cls_test["without_process_log"]["per_class_recall"])  # fmt: skip
    worst = figures.worst_errors(probs, test.labels)
    captions = [f"{test.ids[k]}: {classes[test.labels[k]]} called {classes[probs[k].argmax()]} "
                f"({probs[k].max():.2f}), score {scores[k]:.3g}" for k in worst]  # fmt: skip
    figures.worst_errors_png(report / "worst_errors.png", test.grey[worst], heat[worst], attention[worst], captions)
    return {
        "anomaly": {"training": run.facts["anomaly"],
                    "test": anomaly_figures(scores, test.labels, classes, bands, cls_test["log_dependent_classes"])},
        "classifier": {"training": run.facts["classifier"], "test": cls_test},
        "precision": {"models": entries},
    }  # fmt: skip


def contract(data: DataSet, digest: str, version: int, bands: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per model, the parameters its config carries (``tools.fab.version``)."""
    common = {"data_digest": digest, "version": str(version), "trained_on": data.root.name}
    side = "x".join(str(n) for n in MODEL_SIZE)
    return {
        "anomaly": {**band_parameters(bands), **common, "input": f"1x{side}"},
        "classifier": {**contract_parameters(data.classes, data.parameters), **common, "input": f"3x{side}"},
    }


def train(args: argparse.Namespace, data: DataSet, warnings: list[str]) -> int:
    started = time.monotonic()
    work: Path = args.work or args.out.with_name(args.out.name + "-training")
    (work / "models").mkdir(parents=True, exist_ok=True)
    digest = data_digest(data)
    log(f"{len(data.dies)} dies, classes {', '.join(data.classes)}, {len(data.parameters)} process parameters; "
        f"data digest {digest[:16]}")  # fmt: skip
    split = {s: arrays(data, s, MODEL_SIZE) for s in SPLITS}
    for name, part in split.items():
        if not (part.labels == 0).any():
            raise ValueError(f"the {name} split holds no GOOD die: the models need GOOD dies in train, val and test")
    run = Run(data, BUDGETS[args.budget], work, args.seed, args.resume, digest, split)
    run.seconds["load"] = time.monotonic() - started
    graph, bands = fit(run)
    report = work / "report"
    metrics = measure(run, bands, report)
    metrics["anomaly"]["score_weights"] = [float(w) for w in graph.weights]
    version = next_version(args.out)
    precision = parse_precisions(args.precision, DEFAULT_PRECISION)
    if args.spread > 1:
        t0 = time.monotonic()
        metrics["seed_spread"] = seed_spread(run, metrics, [args.seed + k for k in range(1, args.spread)])
        run.seconds["seed_spread"] = time.monotonic() - t0
    run.seconds["total"] = time.monotonic() - started
    metrics = {
        "version": version, "seed": args.seed, "threads": THREADS, "budget": asdict(run.budget),
        "data": describe(data, digest, warnings), **metrics,
        "served": {name: served_precision(name, run.models, precision[name]).log_line(name) for name in precision},
        "seconds": {k: round(v, 1) for k, v in run.seconds.items()},
    }  # fmt: skip
    (report / "station.toml").write_text(station_fragment(data, version))
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (report / "card.md").write_text(card.render(metrics))
    dims = {"anomaly": {}, "classifier": {"PROCESS": (len(data.parameters),), "PROBS": (len(data.classes),)}}
    write_version(args.out, run.models, version, contract(data, digest, version, bands), dims, report, precision)
    log(f"version {version} written to {args.out} in {metrics['seconds']['total']:.0f} s "
        f"(card: {args.out / 'classifier' / str(version) / 'report' / 'card.md'})")  # fmt: skip
    for what, measured, met in targets(metrics["classifier"]["test"], metrics["anomaly"]["test"]):
        log(f"  {'met    ' if met else 'NOT MET'} {what}: {measured}")
    return 0


def main(argv: list[str] | None = None, prog: str = "edge-inspect train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the labelled folder (README: own data)")
    parser.add_argument("--out", type=Path, required=True, help="the model repository to add a version to")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full",
                        help="quick: fewer epochs, for a first look; full: what to serve")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    parser.add_argument("--work", type=Path, help="checkpoints, forms and report (default: <out>-training)")
    parser.add_argument("--seed", type=int, default=1, help="weights and batch order")
    parser.add_argument("--spread", type=int, default=1, metavar="N",
                        help="train N seeds in all (the next N-1 after --seed, not served) and report each figure's "
                        "spread over them")  # fmt: skip
    parser.add_argument("--precision", nargs="*", default=[], metavar="MODEL=PRECISION",
                        help="the form each model serves (fp32, fp16 or int8; only if it passed the gate)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.spread < 1:
        parser.error("--spread: at least 1 seed")
    try:
        parse_precisions(args.precision, DEFAULT_PRECISION)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(THREADS)
    try:
        data, checked = load(args.data)
    except DataSetRefused as err:
        print(err, file=sys.stderr)
        return 1
    warnings = [str(w) for w in checked.warnings]
    for line in warnings:
        log(f"warning: {line}")
    try:
        return train(args, data, warnings)
    except (EdgeError, OSError, RuntimeError, ValueError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m tools.fab.train"))

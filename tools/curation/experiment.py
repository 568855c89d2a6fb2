"""Does a curated training set beat a random one of the same size? And does the label audit find flipped labels?

    python -m tools.curation.experiment --pool DIR --repository REPO [--budget 200] [--seeds 1 2 3]
                                        [--flip 0.05] [--epochs 15] [--out report.json]

``DIR`` is a labelled folder with its split given (``train`` is the pool to choose from; ``val`` stops training
early; ``test`` measures). The anomaly VAE is trained once on the pool's GOOD dies and frozen (it sees no label and
both arms share it, as ``tools.fab.classifier`` needs its residual channels). Then per seed the classifier of
``edge-inspect train`` (``tools.fab.classifier``, same losses, sampling and augmentations) is trained on

- **curated**: ``budget`` dies chosen by ``tools.curation.select`` from the embeddings of ``REPO``'s classifier,
- **curated_good**: the same, with GOOD promised its share of the pool (``min_share``) and the rest by spread, and
- **random**: ``budget`` dies drawn uniformly from the pool with the seed,

each for at most ``--epochs`` epochs with early stopping on ``val``, and measured on ``test``: accuracy, macro-F1,
escape rate (a defect called GOOD) and false-positive rate (a GOOD die called a defect), at the model's top class.
Finally ``--flip`` of the pool's labels are changed to another class at random and ``tools.curation.audit`` ranks the
pool: the share of flipped dies among its top N suspects (N = the number flipped) and among the top 2N.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.taxonomy import GOOD
from tools.curation.audit import audit
from tools.curation.embed import Embedder
from tools.curation.select import select
from tools.dataset.arrays import Arrays, arrays
from tools.dataset.folder import DataSet, DataSetRefused, load
from tools.fab import anomaly, classifier
from tools.fab.loop import Schedule
from tools.metrics import classification_report

ARMS = ("curated", "curated_good", "random")
LR = 2e-3  # the learning rate of ``edge-inspect train``
FIGURES = ("accuracy", "macro_f1", "escape_rate", "false_positive_rate")


def subset(data: Arrays, index: npt.NDArray[np.int64]) -> Arrays:
    """The dies ``index`` of ``data``."""
    return replace(
        data, ids=tuple(data.ids[i] for i in index), images=data.images[index], grey=data.grey[index],
        labels=data.labels[index], process=data.process[index], present=data.present[index],
        notes=data.notes[index], tool=data.tool[index], recipe=data.recipe[index],
    )  # fmt: skip


def frozen_anomaly(pool: Arrays, val: Arrays, epochs: int, work: Path) -> anomaly.StandardisedAnomaly:
    """The VAE on the pool's GOOD dies, standardised on val's: the residual channels both arms read."""
    schedule = Schedule(epochs, max(2, epochs // 3), LR, "curation-experiment", 1000)
    vae, _ = anomaly.train(pool.grey[pool.labels == 0], val.grey[val.labels == 0], schedule, work / "vae.ckpt", 1)
    graph, _ = anomaly.calibrate(vae, val.grey[val.labels == 0])
    return graph


def trained_figures(
    train: Arrays, val: Arrays, test: Arrays, classes: tuple[str, ...], seed: int, epochs: int, work: Path
) -> dict[str, Any]:
    schedule = Schedule(epochs, max(3, epochs // 3), LR, f"curation-{seed}-{time.monotonic_ns()}", None)
    t0 = time.monotonic()
    model, facts = classifier.train(train, val, classes, schedule, work / f"cls-{seed}.ckpt", seed)
    probs, _ = classifier.predict(model, test)
    report = classification_report(probs.argmax(1), test.labels, classes)
    return {**{k: report[k] for k in FIGURES}, "best_epoch": facts["best_epoch"],
            "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


def flipped_hit_rate(
    vectors: npt.NDArray[np.float32], labels: list[str], probs: npt.NDArray[np.float32], classes: tuple[str, ...],
    share: float, seed: int,
) -> dict[str, Any]:  # fmt: skip
    rng = np.random.default_rng(seed)
    n = max(1, round(share * len(labels)))
    flipped = rng.choice(len(labels), n, replace=False)
    names = sorted(set(labels))
    noisy = list(labels)
    for i in flipped:
        noisy[i] = str(rng.choice([c for c in names if c != labels[i]]))
    ranked = [s.index for s in audit(vectors, noisy, probs, classes)]
    hits = {f"top_{m}n": len(set(ranked[: m * n]) & set(flipped.tolist())) / n for m in (1, 2)}
    return {"pool": len(labels), "flipped": n, **hits}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in FIGURES:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = {"mean": round(float(np.mean(values)), 4), "sd": round(float(np.std(values)), 4)} if values else None
    return out


def run(args: argparse.Namespace, data: DataSet) -> dict[str, Any]:
    t0 = time.monotonic()
    split = {s: arrays(data, s) for s in ("train", "val", "test")}
    embedded = Embedder(args.repository).embed(data, data.split("train"))
    labels = list(embedded.labels)
    chosen = select(embedded.vectors, labels, embedded.probs, embedded.classes, args.budget)
    good = select(embedded.vectors, labels, embedded.probs, embedded.classes, args.budget,
                  min_share={GOOD: labels.count(GOOD) / len(labels)})  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="curation-") as tmp:
        work = Path(tmp)
        graph = frozen_anomaly(split["train"], split["val"], args.vae_epochs, work)
        pool, val, test = (classifier.with_residual(split[s], graph) for s in ("train", "val", "test"))
        if len(val) > args.val_dies:  # early stopping reads val every epoch: a seeded sample of it is enough
            val = subset(val, np.sort(np.random.default_rng(0).choice(len(val), args.val_dies, replace=False)))
        results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
        for seed in args.seeds:
            picks = {"curated": np.array(chosen.chosen, np.int64), "curated_good": np.array(good.chosen, np.int64),
                     "random": np.random.default_rng(seed).choice(len(pool), args.budget, replace=False)}  # fmt: skip
            for arm in ARMS:
                figures = trained_figures(subset(pool, picks[arm]), val, test, data.classes, seed, args.epochs, work)
                results[arm].append({"seed": seed, **figures})
                print(f"{arm:8s} seed {seed}: " + ", ".join(f"{k} {figures[k]}" for k in (*FIGURES, "seconds")),
                      flush=True)  # fmt: skip
    audit_figures = flipped_hit_rate(embedded.vectors, list(embedded.labels), embedded.probs, embedded.classes,
                                     args.flip, args.seeds[0])  # fmt: skip
    return {
        "pool": {"root": str(data.root), "train": len(pool), "val": len(val), "test": len(test)},
        "embedding_model": embedded.model, "budget": args.budget, "epochs": args.epochs, "seeds": args.seeds,
        "curated_allocation": chosen.allocation, "curated_good_allocation": good.allocation,
        "curated_borderline": sum(1 for w in chosen.why.values() if w == "borderline"),
        "runs": results, "summary": {arm: summary(results[arm]) for arm in ARMS},
        "flipped_labels": audit_figures, "seconds": round(time.monotonic() - t0, 1),
    }  # fmt: skip


def render(report: dict[str, Any]) -> str:
    lines = [f"| arm | {' | '.join(FIGURES)} |", "| --- |" + " --- |" * len(FIGURES)]
    for arm in ARMS:
        cells = [f"{s['mean']:.3f} +/- {s['sd']:.3f}" if s else "-" for s in report["summary"][arm].values()]
        lines.append(f"| {arm} ({len(report['seeds'])} seeds) | {' | '.join(cells)} |")
    f = report["flipped_labels"]
    lines.append(f"flipped labels: {f['flipped']} of {f['pool']}; found in the top {f['flipped']} suspects: "
                 f"{f['top_1n']:.1%}, in the top {2 * f['flipped']}: {f['top_2n']:.1%}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.curation.experiment", description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=Path, required=True, help="labelled folder with train, val and test given")
    parser.add_argument("--repository", type=Path, required=True, help="model repository: the embedding classifier")
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--flip", type=float, default=0.05, help="share of labels flipped for the audit")
    parser.add_argument("--epochs", type=int, default=15, help="classifier epochs at most (early stopping on val)")
    parser.add_argument("--vae-epochs", type=int, default=4)
    parser.add_argument("--val-dies", type=int, default=300, help="val dies early stopping reads (a seeded sample)")
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)
    try:
        data, _ = load(args.pool, training=False)
    except DataSetRefused as exc:
        print(exc, file=sys.stderr)
        return 1
    if not data.split_given:
        print(f"{args.pool}: give the split (train, val, test) on every row", file=sys.stderr)
        return 2
    report = run(args, data)
    print(render(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train, evaluate and export the ``anomaly`` and ``classifier`` models on synthetic fab data.

    python -m tools.train --model anomaly|classifier|all --out build/models [--quick]

Training data comes from seed ``TRAIN_SEED``; every metric is measured on dies from other seeds seen through
slightly shifted tool optics (``HELDOUT_SHIFT``). Writes ``<model>.onnx`` and ``<model>_metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge.taxonomy import DEFAULT_CLASSES, GOOD
from tools.export import export_anomaly, export_classifier
from tools.metrics import auroc, classification_report, decision_bands, detection_report
from tools.models import AnomalyExport, ConvVAE, DefectClassifier, normalise_image, vae_loss
from tools.synth import Dataset, grey, make_dataset

TRAIN_SEED, HELDOUT_SEED, BANDS_SEED = 1, 1001, 2001
HELDOUT_SHIFT = 1.0
GOOD_WEIGHT = 3.0  # GOOD is drawn this many times as often as each defect class (half of them cosmetic)
THREADS = 2  # torch threads, and processes that render synthetic data


@dataclass(frozen=True)
class Budget:
    """Data sizes and epochs; ``FULL`` fits about 6 minutes on 2 CPU cores, ``QUICK`` about 2."""

    vae_train: int  # GOOD dies for the VAE
    vae_epochs: int
    cls_train: int  # dies for the classifier
    cls_epochs: int
    heldout: int  # held-out dies, all classes
    heldout_good: int  # held-out GOOD dies that set the anomaly bands


FULL = Budget(vae_train=1500, vae_epochs=12, cls_train=3200, cls_epochs=5, heldout=960, heldout_good=480)
QUICK = Budget(vae_train=600, vae_epochs=6, cls_train=960, cls_epochs=4, heldout=320, heldout_good=160)


def _log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _batches(n: int, size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Index batches over ``n`` items in order; with ``rng`` (training) shuffled, dropping the last partial batch."""
    if rng is None:
        yield from (np.arange(start, min(start + size, n)) for start in range(0, n, size))
        return
    order = rng.permutation(n)
    for start in range(0, n - size + 1, size):
        yield order[start : start + size]


def _weights() -> list[float]:
    return [GOOD_WEIGHT if c == GOOD else 1.0 for c in DEFAULT_CLASSES]


class HeldOut:
    """Held-out datasets, generated on first use and shared between the two models."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._mixed: Dataset | None = None
        self._good: Dataset | None = None

    @property
    def mixed(self) -> Dataset:
        if self._mixed is None:
            self._mixed = make_dataset(
                HELDOUT_SEED, self.budget.heldout, shift=HELDOUT_SHIFT, class_weights=_weights(), workers=THREADS
            )
        return self._mixed

    @property
    def good(self) -> Dataset:
        if self._good is None:
            self._good = make_dataset(
                BANDS_SEED, self.budget.heldout_good, classes=(GOOD,), shift=HELDOUT_SHIFT, workers=THREADS
            )
        return self._good


# --- anomaly -------------------------------------------------------------------------------------------------


def train_vae(grey_images: np.ndarray, epochs: int, beta_max: float = 0.5, batch: int = 32) -> ConvVAE:
    """Fit the VAE on grey GOOD dies (N, 1, 256, 256) uint8.

    AdamW with a cosine learning rate; beta rises linearly from 0 to ``beta_max`` over the first 40% of the steps
    (KL annealing), so the decoder learns to reconstruct before the latent space is pulled to the prior. A beta
    under 1 keeps reconstructions sharp, which is what makes small defects stand out in the score.
    """
    vae = ConvVAE().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=1e-5)
    steps = epochs * (len(grey_images) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-5)
    rng, step = np.random.default_rng(0), 0
    data = torch.from_numpy(grey_images)
    for epoch in range(epochs):
        vae.train()
        totals = np.zeros(3)
        for idx in _batches(len(data), batch, rng):
            beta = beta_max * min(1.0, step / (0.4 * steps))
            x = (data[idx].float() / 255.0).contiguous(memory_format=torch.channels_last)
            logits, mu, logvar = vae(x)
            loss, recon, kl = vae_loss(logits, x, mu, logvar, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            totals += [loss.item(), recon.item(), kl.item()]
        loss, recon, kl = totals / (len(data) // batch)
        _log(f"vae epoch {epoch + 1}/{epochs} loss={loss:.1f} recon={recon:.1f} kl={kl:.1f} beta={beta:.2f}")
    return vae.eval().to(memory_format=torch.contiguous_format)


@torch.no_grad()
def anomaly_scores(vae: ConvVAE, grey_images: np.ndarray, batch: int = 64) -> np.ndarray:
    """SCORE of the export wrapper for grey uint8 dies."""
    wrapper = AnomalyExport(vae).eval()
    scores = [wrapper(torch.from_numpy(grey_images[idx]))[0][:, 0] for idx in _batches(len(grey_images), batch)]
    return torch.cat(scores).numpy()


def evaluate_anomaly(vae: ConvVAE, held: HeldOut) -> dict:
    """AUROC (defect vs GOOD by SCORE), PASS/REJECT bands from held-out GOOD dies, detection rates per class."""
    bands = decision_bands(anomaly_scores(vae, grey(held.good.images)))
    mixed = held.mixed
    scores = anomaly_scores(vae, grey(mixed.images))
    defect = mixed.labels != DEFAULT_CLASSES.index(GOOD)
    visible = mixed.labels != DEFAULT_CLASSES.index("DISCOLOR")
    good_scores = scores[~defect]
    return {
        "auroc": round(auroc(scores, defect), 4),
        "auroc_without_discolor": round(auroc(scores[visible], defect[visible]), 4),
        **{k: float(f"{v:.6g}") for k, v in bands.items()},
        "bands_rule": "pass: 99th percentile of held-out GOOD scores; reject: 1.25 x the largest of them",
        "good_fpr_at_pass": round(float((good_scores >= bands["pass_band"]).mean()), 4),
        "good_fpr_at_reject": round(float((good_scores >= bands["reject_band"]).mean()), 4),
        "per_class": detection_report(scores, mixed.labels, DEFAULT_CLASSES, bands),
        "note": "DISCOLOR looks exactly like a cosmetic GOOD die; only the process log tells them apart, "
        "so the image-only anomaly score cannot separate them (auroc_without_discolor leaves them out).",
    }


def run_anomaly(budget: Budget, held: HeldOut, out: Path) -> dict:
    started = time.monotonic()
    train = make_dataset(TRAIN_SEED, budget.vae_train, classes=(GOOD,), with_process=False, workers=THREADS)
    train_grey = grey(train.images)
    del train
    _log(f"anomaly: {len(train_grey)} GOOD training dies in {time.monotonic() - started:.1f}s")
    torch.manual_seed(0)
    vae = train_vae(train_grey, budget.vae_epochs)
    trained = time.monotonic()
    metrics = evaluate_anomaly(vae, held)
    metrics["onnx"] = export_anomaly(vae, grey(held.mixed.images[:4]), out / "anomaly.onnx")
    metrics["data"] = {"train_seed": TRAIN_SEED, "train_good": len(train_grey), "heldout_seed": HELDOUT_SEED,
                       "bands_seed": BANDS_SEED, "heldout_shift": HELDOUT_SHIFT, "heldout": len(held.mixed.labels),
                       "heldout_good": len(held.good.labels)}  # fmt: skip
    metrics["seconds"] = {"train": round(trained - started, 1), "total": round(time.monotonic() - started, 1)}
    return metrics


# --- classifier ----------------------------------------------------------------------------------------------


def _classifier_inputs(ds: Dataset, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    image = torch.from_numpy(ds.images[idx]).permute(0, 3, 1, 2)
    return image, torch.from_numpy(ds.process[idx]), torch.from_numpy(ds.present[idx]), torch.from_numpy(ds.notes[idx])


def _drop_modalities(process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor, p: float, gen: torch.Generator):
    """Mark each modality missing with probability ``p``, zeroing its inputs as the daemon would."""
    keep = (torch.rand(present.shape, generator=gen) >= p).float()
    present = present * keep
    return process * present[:, :1], present, notes * present[:, 1:].long()


def train_classifier(ds: Dataset, epochs: int, batch: int = 32, modality_dropout: float = 0.2) -> DefectClassifier:
    """Cross-entropy with label smoothing, AdamW + one-cycle LR, random flips and modality dropout."""
    model = DefectClassifier().to(memory_format=torch.channels_last)
    logged = torch.from_numpy(ds.process[ds.present[:, 0] > 0])
    model.process.set_normalisation(logged.mean(0), logged.std(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(ds.labels) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    labels = torch.from_numpy(ds.labels)
    for epoch in range(epochs):
        model.train()
        total, correct, seen = 0.0, 0, 0
        for idx in _batches(len(labels), batch, rng):
            image, process, present, notes = _classifier_inputs(ds, idx)
            flips = torch.rand(2, len(idx), 1, 1, 1, generator=gen) < 0.5
            image = torch.where(flips[0], image.flip(3), image)
            image = torch.where(flips[1], image.flip(2), image)
            process, present, notes = _drop_modalities(process, present, notes, modality_dropout, gen)
            x = normalise_image(image).contiguous(memory_format=torch.channels_last)
            logits, _ = model(x, process, present, notes)
            loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
            seen += len(idx)
        _log(f"classifier epoch {epoch + 1}/{epochs} loss={total / seen:.3f} train_acc={correct / seen:.3f}")
    return model.eval().to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict(model: DefectClassifier, ds: Dataset, mask: tuple[bool, bool] = (False, False), batch: int = 64):
    """Predicted class ids; ``mask`` = (hide process, hide note) marks those modalities missing."""
    hide = torch.tensor([float(not mask[0]), float(not mask[1])])
    preds = []
    for idx in _batches(len(ds.labels), batch):
        image, process, present, notes = _classifier_inputs(ds, idx)
        present = present * hide
        logits, _ = model(normalise_image(image), process * present[:, :1], present, notes * present[:, 1:].long())
        preds.append(logits.argmax(1).numpy())
    return np.concatenate(preds)


def evaluate_classifier(model: DefectClassifier, held: HeldOut) -> dict:
    ds = held.mixed
    report = classification_report(predict(model, ds), ds.labels, DEFAULT_CLASSES)
    report["accuracy_masked"] = {
        name: round(float((predict(model, ds, mask) == ds.labels).mean()), 4)
        for name, mask in {"process": (True, False), "notes": (False, True), "both": (True, True)}.items()
    }
    return report


def run_classifier(budget: Budget, held: HeldOut, out: Path) -> dict:
    started = time.monotonic()
    train = make_dataset(TRAIN_SEED, budget.cls_train, class_weights=_weights(), workers=THREADS)
    _log(f"classifier: {len(train.labels)} training dies in {time.monotonic() - started:.1f}s")
    torch.manual_seed(0)
    model = train_classifier(train, budget.cls_epochs)
    trained = time.monotonic()
    metrics = evaluate_classifier(model, held)
    ds, sample = held.mixed, np.arange(4)
    metrics["onnx"] = export_classifier(
        model, ds.images[sample].transpose(0, 3, 1, 2).copy(), ds.process[sample], ds.present[sample],
        ds.notes[sample], out / "classifier.onnx",
    )  # fmt: skip
    metrics["data"] = {"train_seed": TRAIN_SEED, "train": len(train.labels), "heldout_seed": HELDOUT_SEED,
                       "heldout_shift": HELDOUT_SHIFT, "heldout": len(ds.labels)}  # fmt: skip
    metrics["seconds"] = {"train": round(trained - started, 1), "total": round(time.monotonic() - started, 1)}
    return metrics


def _summary(name: str, m: dict) -> str:
    if name == "anomaly":
        return (f"anomaly: AUROC={m['auroc']} (without DISCOLOR {m['auroc_without_discolor']}) "
                f"pass_band={m['pass_band']:.5g} reject_band={m['reject_band']:.5g} "
                f"good FPR at pass={m['good_fpr_at_pass']}")  # fmt: skip
    return (f"classifier: accuracy={m['accuracy']} macro_f1={m['macro_f1']} escape={m['escape_rate']} "
            f"fpr={m['false_positive_rate']} masked={m['accuracy_masked']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("anomaly", "classifier", "all"), default="all")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    parser.add_argument("--quick", action="store_true", help="small data and few epochs (tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    budget = QUICK if args.quick else FULL
    held = HeldOut(budget)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runners = {"anomaly": run_anomaly, "classifier": run_classifier}
    for name in runners if args.model == "all" else (args.model,):
        metrics = runners[name](budget, held, args.out)
        metrics["budget"] = {"name": "quick" if args.quick else "full", **asdict(budget)}
        (args.out / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _log(_summary(name, metrics))
    _log(f"done in {time.monotonic() - started:.1f}s, outputs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

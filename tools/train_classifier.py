"""The defect classifier: train the multimodal model and the vision-only CNN baseline, measure both, export.

Loss (the multimodal case study): focal loss (gamma 2, inverse-frequency class weights) + ``ALIGN_WEIGHT`` x a
contrastive (InfoNCE) alignment of each die's image embedding with its own process log's embedding against the
other logs in the batch + ``ENTROPY_WEIGHT`` x the entropy of the patch attention, which pushes the attention to
concentrate on a few patches; plus ``PROBE_WEIGHT`` x a process probe (``train_classifier``). The case study's
separate alignment-only first stage is not used: at this budget it left the process gate shut. Every figure is
measured on held-out dies with the modalities present as recorded, then with the process log, the note, or both
marked missing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge.taxonomy import DEFAULT_CLASSES, GOOD
from tools.export import export_classifier
from tools.metrics import classification_report
from tools.models import ALIGN_DIM, DefectClassifier, VisionCNN, normalise_image
from tools.synth import Dataset, make_dataset
from tools.training import (
    HELDOUT_SEED,
    HELDOUT_SHIFT,
    THREADS,
    Budget,
    HeldOut,
    Run,
    batches,
    class_weights,
    log,
)

FOCAL_GAMMA = 2.0
ALIGN_WEIGHT = 0.1
ALIGN_TEMPERATURE = 0.1
ENTROPY_WEIGHT = 0.01
MODALITY_DROPOUT = 0.2
PROBE_WEIGHT = 0.3
LR = 2e-3
GATE_LR_SCALE = 10.0
DISCOLOR = DEFAULT_CLASSES.index("DISCOLOR")
MASKS = {"all": (False, False), "no_process": (True, False), "no_notes": (False, True), "image_only": (True, True)}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, gamma: float = FOCAL_GAMMA):
    """Mean of alpha[y] (1 - p_y)^gamma (-log p_y): easy, confidently right dies contribute little."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    return (alpha[target] * (1.0 - log_p.exp()) ** gamma * -log_p).mean()


def alignment_loss(image: torch.Tensor, process: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """InfoNCE over the dies whose process log is present: each image embedding should be most similar to the
    embedding of its own wafer's log among the batch's logs (cosine similarity / temperature)."""
    keep = present[:, 0] > 0
    if int(keep.sum()) < 2:
        return image.sum() * 0.0
    v, p = F.normalize(image[keep], dim=1), F.normalize(process[keep], dim=1)
    return F.cross_entropy(v @ p.T / ALIGN_TEMPERATURE, torch.arange(len(v)))


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the patch attention distributions."""
    return -(attention * attention.clamp_min(1e-9).log()).sum(1).mean()


def inverse_frequency(labels: np.ndarray) -> torch.Tensor:
    """Focal-loss alpha: class weights proportional to 1 / frequency, averaging 1 over the classes seen."""
    counts = np.bincount(labels, minlength=len(DEFAULT_CLASSES)).astype(float)
    alpha = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(alpha / alpha[counts > 0].mean(), dtype=torch.float32)


def robust_scale(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column: the median and 1.4826 x the median absolute deviation (the standard deviation, for a normal
    sample). A fifth or more of the training logs carry an excursion of 4-6 sigma on a few thermal parameters; the
    mean and standard deviation would stretch with them and shrink every excursion's z-score, these do not."""
    center = values.median(0).values
    return center, 1.4826 * (values - center).abs().median(0).values


def _inputs(ds: Dataset, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    image = torch.from_numpy(ds.images[idx]).permute(0, 3, 1, 2)
    return image, torch.from_numpy(ds.process[idx]), torch.from_numpy(ds.present[idx]), torch.from_numpy(ds.notes[idx])


def _hide(process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor, keep: torch.Tensor):
    """Mark modalities missing where ``keep`` is 0, zeroing their inputs as the daemon does."""
    present = present * keep
    return process * present[:, :1], present, notes * present[:, 1:].long()


def _augment(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips (a die has no preferred orientation for these defects)."""
    flips = torch.rand(2, len(image), 1, 1, 1, generator=gen) < 0.5
    image = torch.where(flips[0], image.flip(3), image)
    return torch.where(flips[1], image.flip(2), image)


Step = Callable[[tuple[torch.Tensor, ...], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _fit(
    model: torch.nn.Module, ds: Dataset, epochs: int, step: Step, name: str, seed: int, batch: int = 32
) -> None:
    """AdamW + one-cycle learning rate over ``epochs``; ``step(inputs, labels)`` returns (loss, logits).

    The cross-attention gates (scalars that start at zero) learn ``GATE_LR_SCALE`` times faster and without weight
    decay: at the common rate a gate could open by at most a few tenths in a short CPU training run.
    """
    gates = [p for n, p in model.named_parameters() if n.endswith(".gate")]
    rest = [p for n, p in model.named_parameters() if not n.endswith(".gate")]
    groups = [{"params": rest, "lr": LR, "weight_decay": 1e-4}]
    if gates:
        groups.append({"params": gates, "lr": LR * GATE_LR_SCALE, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    steps = epochs * (len(ds.labels) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.15
    )
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(ds.labels)
    for epoch in range(epochs):
        model.train()
        total, correct, seen = 0.0, 0, 0
        for idx in batches(len(labels), batch, rng):
            image, process, present, notes = _inputs(ds, idx)
            keep = (torch.rand(present.shape, generator=gen) >= MODALITY_DROPOUT).float()
            inputs = (_augment(image, gen), *_hide(process, present, notes, keep))
            loss, logits = step(inputs, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
            seen += len(idx)
        log(f"{name} epoch {epoch + 1}/{epochs} loss={total / seen:.3f} train_acc={correct / seen:.3f}")
    model.eval()


def train_classifier(ds: Dataset, epochs: int, seed: int = 0) -> DefectClassifier:
    """The multimodal model: focal + alignment + attention-entropy loss, a process probe, modality dropout.

    The probe is a linear head on the process embedding, trained with cross-entropy on the dies whose log is
    present and dropped after training. It gives the process encoder a learning signal of its own: under focal loss
    alone the zero-initialised process gate stayed shut at this training budget (the model leant on the notes and
    passed half the real DISCOLOR dies with the log present; see the issue notes for the runs).
    """
    model = DefectClassifier()
    model.process.set_normalisation(*robust_scale(torch.from_numpy(ds.process[ds.present[:, 0] > 0])))
    alpha = inverse_frequency(ds.labels)
    probe = torch.nn.Linear(ALIGN_DIM, len(DEFAULT_CLASSES))

    def step(inputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, process, present, notes = inputs
        logits, attention, v, p = model.features(normalise_image(image), process, present, notes)
        logged = present[:, 0] > 0
        loss = focal_loss(logits, y, alpha) + ALIGN_WEIGHT * alignment_loss(v, p, present)
        loss = loss + ENTROPY_WEIGHT * attention_entropy(attention)
        return loss + PROBE_WEIGHT * F.cross_entropy(probe(p[logged]), y[logged]), logits

    _fit(torch.nn.ModuleDict({"model": model, "probe": probe}), ds, epochs, step, "classifier", seed)
    return model


def train_baseline(ds: Dataset, epochs: int, seed: int = 0) -> VisionCNN:
    """The vision-only CNN baseline: images only, plain cross-entropy, same data, augmentation and schedule."""
    model = VisionCNN()

    def step(inputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(normalise_image(inputs[0]))
        return F.cross_entropy(logits, y), logits

    _fit(model, ds, epochs, step, "cnn baseline", seed)
    return model


@torch.no_grad()
def predict(model: torch.nn.Module, ds: Dataset, mask: tuple[bool, bool] = (False, False), batch: int = 64):
    """Predicted class ids; ``mask`` = (hide process, hide note) marks those modalities missing."""
    keep = torch.tensor([float(not mask[0]), float(not mask[1])])
    preds = []
    for idx in batches(len(ds.labels), batch):
        image, process, present, notes = _inputs(ds, idx)
        if isinstance(model, VisionCNN):
            logits = model(normalise_image(image))
        else:
            logits, _ = model(normalise_image(image), *_hide(process, present, notes, keep))
        preds.append(logits.argmax(1).numpy())
    return np.concatenate(preds)


def discolour_report(pred: np.ndarray, ds: Dataset) -> dict:
    """The multimodal question: real DISCOLOR (excursion) found, and cosmetic discolouration (normal log) passed."""
    good = DEFAULT_CLASSES.index(GOOD)
    real = ds.labels == DISCOLOR
    cosmetic = (ds.looks == DISCOLOR) & (ds.labels == good)
    return {
        "real_recall": round(float((pred[real] == DISCOLOR).mean()), 4),
        "cosmetic_passed": round(float((pred[cosmetic] == good).mean()), 4),
        "n_real": int(real.sum()),
        "n_cosmetic": int(cosmetic.sum()),
    }


HEADLINE = ("accuracy", "macro_f1", "escape_rate", "false_positive_rate")


def evaluate_classifier(model: DefectClassifier, baseline: VisionCNN | None, held: HeldOut) -> dict:
    ds = held.mixed
    report, modalities = {}, {}
    for name, mask in MASKS.items():
        pred = predict(model, ds, mask)
        full = classification_report(pred, ds.labels, DEFAULT_CLASSES)
        modalities[name] = {**{k: full[k] for k in HEADLINE}, "discolour": discolour_report(pred, ds)}
        if name == "all":
            report = full
    report["modalities"] = modalities
    if baseline is not None:
        pred = predict(baseline, ds)
        cnn = classification_report(pred, ds.labels, DEFAULT_CLASSES)
        report["baseline_cnn"] = {**{k: cnn[k] for k in HEADLINE}, "discolour": discolour_report(pred, ds),
                                  "per_class_recall": cnn["per_class_recall"]}  # fmt: skip
    report["modality_share"] = {"process": round(float(ds.present[:, 0].mean()), 3),
                                "notes": round(float(ds.present[:, 1].mean()), 3)}  # fmt: skip
    return report


def run(budget: Budget, held: HeldOut, out: Path, spec: Run) -> dict:
    started = time.monotonic()
    train = make_dataset(spec.seed, budget.cls_train, class_weights=class_weights(training=True), workers=THREADS)
    log(f"classifier: {len(train.labels)} training dies in {time.monotonic() - started:.1f}s")
    torch.manual_seed(spec.seed)
    model = train_classifier(train, budget.cls_epochs, spec.seed)
    trained = time.monotonic()
    baseline = None
    if spec.baselines:
        torch.manual_seed(spec.seed)
        baseline = train_baseline(train, budget.cls_epochs, spec.seed)
    baseline_trained = time.monotonic()
    metrics = evaluate_classifier(model, baseline, held)
    metrics["parameters"] = {"classifier": sum(p.numel() for p in model.parameters())}
    if baseline is not None:
        metrics["parameters"]["baseline_cnn"] = sum(p.numel() for p in baseline.parameters())
    metrics["gates"] = {name: round(math.tanh(gate.gate.item()), 4)
                        for name, gate in (("process", model.fuse_process), ("notes", model.fuse_notes))}  # fmt: skip
    ds, sample = held.mixed, np.arange(4)
    metrics["onnx"] = export_classifier(
        model, ds.images[sample].transpose(0, 3, 1, 2).copy(), ds.process[sample], ds.present[sample],
        ds.notes[sample], out / "classifier.onnx",
    )  # fmt: skip
    metrics["data"] = {"train_seed": spec.seed, "train": len(train.labels), "heldout_seed": HELDOUT_SEED,
                       "heldout_shift": HELDOUT_SHIFT, "heldout": len(ds.labels)}  # fmt: skip
    metrics["seconds"] = {"train": round(trained - started, 1), "baseline": round(baseline_trained - trained, 1),
                          "total": round(time.monotonic() - started, 1)}  # fmt: skip
    return metrics


def summary(m: dict) -> str:
    masked = {k: v["macro_f1"] for k, v in m["modalities"].items()}
    line = (f"classifier: accuracy={m['accuracy']} macro_f1={m['macro_f1']} escape={m['escape_rate']} "
            f"fpr={m['false_positive_rate']} macro_f1 by modalities={masked} "
            f"discolour={m['modalities']['all']['discolour']}")  # fmt: skip
    cnn = m.get("baseline_cnn")
    if cnn:
        line += (f" | cnn baseline: macro_f1={cnn['macro_f1']} escape={cnn['escape_rate']} "
                 f"fpr={cnn['false_positive_rate']} discolour={cnn['discolour']}")  # fmt: skip
    return line

"""The classifier on a fab's dies: the multimodal model of ``tools.models`` sized to the data (its classes, its
process parameters), trained on ``train`` with class-balanced sampling and AOI augmentations, stopped early on the
class-balanced likelihood of ``val`` (``balanced_nll``).

It reads the die with two more channels beside RGB, computed inside the served graph from the same image by the
anomaly model (``tools.fab.anomaly.residual_channel``): where the die departs from the fab's GOOD dies (the
standardised HEATMAP stretched over the die) and how (the die minus its reconstruction, signed, shown only there).
A fab's layout is the same on every die of a recipe; a particle, a bridge or an open is a small departure from it,
which an image-only network must learn to find among the layout's own edges from a few dozen examples, and whose
kind (metal where a gap was, a gap where metal was) the signed map shows alone. The served classifier thus also
runs the VAE; the anomaly model's graph is frozen while it trains.

The losses are those of the reference training (``tools.train_classifier``): focal loss, the image-process
alignment, an attention-entropy term and a probe on the process embedding that gives the process encoder a signal
of its own, with modality dropout so a missing log or note is a normal input, and noise on the logged values
(``PROCESS_JITTER``) so a rare class is not learnt as the exact logs of its few wafers. The process normalisation
(median and 1.4826 x MAD per parameter, over the training wafers that have a log) is stored in the graph.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from tools.dataset.arrays import Arrays
from tools.export import _export
from tools.fab.anomaly import StandardisedAnomaly, residual_channel, residuals
from tools.fab.augment import CLASSIFIER, augment, epoch_indices, sample_weights
from tools.fab.loop import Schedule, fit
from tools.metrics import classification_report
from tools.models import ALIGN_DIM, DefectClassifier, ProcessEncoder, normalise_image
from tools.train_classifier import (
    ALIGN_WEIGHT,
    ENTROPY_WEIGHT,
    GATE_LR_SCALE,
    MODALITY_DROPOUT,
    PROBE_WEIGHT,
    alignment_loss,
    attention_entropy,
    focal_loss,
    robust_scale,
)
from tools.training import batches

BATCH = 32
DIM = 128  # DefectClassifier's default width
# Training noise on each logged process value, in robust deviations of that parameter: a rare class seen on a
# handful of wafers must not be learnt as those wafers' exact logs (a test wafer's log is always new), while an
# excursion of several deviations stays plain.
PROCESS_JITTER = 0.7


CHANNELS = 5  # R, G, B and the two residual maps (``tools.fab.anomaly.residual_channel``)


def build(n_classes: int, n_params: int) -> DefectClassifier:
    """A classifier for ``n_classes`` classes, a process vector of ``n_params`` values and ``CHANNELS`` image
    channels."""
    model = DefectClassifier(n_classes=n_classes, dim=DIM)
    model.process = ProcessEncoder(DIM, n_params=n_params)
    first = model.image.embed[0][0]
    model.image.embed[0][0] = nn.Conv2d(CHANNELS, first.out_channels, 3, first.stride, 1, bias=False)
    return model


def with_residual(data: Arrays, graph: StandardisedAnomaly) -> Arrays:
    """``data`` with the two residual maps after its RGB channels (the classifier's training input)."""
    return replace(data, images=np.concatenate([data.images, residuals(graph, data.grey)], axis=1))


class ResidualClassifierExport(nn.Module):
    """IMAGE uint8 [B,3,256,256], PROCESS [B,P], PRESENT [B,2], NOTES int64 [B,32] -> PROBS [B,C], ATTENTION [B,64].
    Grey is taken from RGB with the ITU-R BT.601 weights OpenCV uses, rounded to grey levels as the serving rule's
    grey tensor is."""

    def __init__(self, anomaly: StandardisedAnomaly, model: DefectClassifier) -> None:
        super().__init__()
        self.anomaly = anomaly
        self.model = model

    def forward(
        self, image: torch.Tensor, process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = image.float()
        grey = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]).round()
        dies = torch.cat([rgb, residual_channel(self.anomaly, grey)], dim=1)
        logits, attention = self.model(normalise_image(dies), process, present, notes)
        return torch.softmax(logits, dim=1), attention


def _inputs(data: Arrays, idx: npt.NDArray[np.int64]) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(data.images[idx]), torch.from_numpy(data.process[idx]),
            torch.from_numpy(data.present[idx]), torch.from_numpy(data.notes[idx]))  # fmt: skip


def hide(
    process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mark modalities missing where ``keep`` is 0, zeroing their inputs as the daemon does."""
    present = present * keep
    return process * present[:, :1], present, notes * present[:, 1:].long()


@torch.no_grad()
def predict(
    model: DefectClassifier, data: Arrays, mask_process: bool = False, batch: int = 64
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """PROBS (N, classes) and ATTENTION (N, 64) of the served graph; ``mask_process``: the log marked missing."""
    keep = torch.tensor([0.0 if mask_process else 1.0, 1.0])
    probs, attention = [], []
    for idx in batches(len(data), batch):
        image, process, present, notes = _inputs(data, idx)
        logits, att = model(normalise_image(image), *hide(process, present, notes, keep))
        probs.append(torch.softmax(logits, 1).numpy())
        attention.append(att.numpy())
    return np.concatenate(probs), np.concatenate(attention)


def balanced_nll(probs: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
    """The negative log-likelihood of the true class, averaged within each class, then over the classes present:
    what early stopping watches. Macro-F1 on a validation split where a rare class has a handful of dies jumps by
    tenths when one die flips; this moves smoothly, and GOOD's many dies do not outweigh a rare class."""
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0))
    return float(np.mean([nll[labels == k].mean() for k in np.unique(labels)]))


def train(  # ``train`` and ``val`` with the residual maps (``with_residual``)
    train: Arrays, val: Arrays, classes: tuple[str, ...], schedule: Schedule, checkpoint: Path, seed: int,
    resume: bool = False,
) -> tuple[DefectClassifier, dict[str, float]]:  # fmt: skip
    torch.manual_seed(seed)
    model = build(len(classes), train.process.shape[1])
    logged = train.present[:, 0] > 0
    if logged.any():
        model.process.set_normalisation(*robust_scale(torch.from_numpy(train.process[logged])))
    probe = torch.nn.Linear(ALIGN_DIM, len(classes))
    both = torch.nn.ModuleDict({"model": model, "probe": probe})
    weights = sample_weights(train.labels, len(classes))
    labels = torch.from_numpy(train.labels)
    alpha = torch.ones(len(classes))

    def batches(rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
        return epoch_indices(weights, BATCH, rng, schedule.epoch_dies)

    def step(idx: npt.NDArray[np.int64], gen: torch.Generator, number: int) -> torch.Tensor:
        image, process, present, notes = _inputs(train, idx)
        keep = (torch.rand(present.shape, generator=gen) >= MODALITY_DROPOUT).float()
        process, present, notes = hide(process, present, notes, keep)
        noise = torch.randn(process.shape, generator=gen) * model.process.scale * PROCESS_JITTER
        process = process + noise * present[:, :1]
        y = labels[idx]
        varied = normalise_image(augment(image, gen, CLASSIFIER, photometric=3))
        logits, attention, v, p = model.features(varied, process, present, notes)
        loss = focal_loss(logits, y, alpha) + ALIGN_WEIGHT * alignment_loss(v, p, present)
        loss = loss + ENTROPY_WEIGHT * attention_entropy(attention)
        with_log = present[:, 0] > 0
        if with_log.any():
            loss = loss + PROBE_WEIGHT * F.cross_entropy(probe(p[with_log]), y[with_log])
        return loss

    def validate() -> float:
        probs = predict(model, val)[0]
        seen["macro_f1"] = float(classification_report(probs.argmax(1), val.labels, classes)["macro_f1"])
        return -balanced_nll(probs, val.labels)

    gates = [p for n, p in both.named_parameters() if n.endswith(".gate")]
    rest = [p for n, p in both.named_parameters() if not n.endswith(".gate")]
    groups = [{"params": rest, "lr": schedule.lr, "weight_decay": 1e-4},
              {"params": gates, "lr": schedule.lr * GATE_LR_SCALE, "weight_decay": 0.0}]  # fmt: skip
    seen: dict[str, float] = {}
    best, epoch = fit("classifier", both, groups, batches, step, validate, schedule, checkpoint, seed, resume)
    validate()  # the best epoch's figures
    return model, {"best_epoch": epoch, "val_balanced_nll": -best, "val_macro_f1": seen["macro_f1"],
                   "train_dies": len(train)}  # fmt: skip


def export(graph: StandardisedAnomaly, model: DefectClassifier, inputs: dict[str, npt.NDArray], path: Path) -> None:
    """The served classifier (``ResidualClassifierExport``) as ONNX, checked against PyTorch in ONNX Runtime on
    ``inputs`` (a few dies' serving inputs)."""
    _export(ResidualClassifierExport(graph, model), inputs, ["PROBS", "ATTENTION"], path, atol=1e-3)

"""The anomaly model on a fab's dies: the VAE of ``tools.models`` fitted on the GOOD dies of ``train``, stopped
early on the reconstruction error of the GOOD dies of ``val``.

A fab's die has a fixed layout, and a VAE reconstructs some places of it (line edges, pads, the padded border) less
well than others on every die, GOOD or not; a small bridge or open then scores no higher than an ordinary edge. So
the served HEATMAP is standardised per cell: a cell's reconstruction error in standard deviations above the mean of
GOOD dies at that cell (the deviation floored at the median cell's, so a cell that barely varies on GOOD dies does
not blow up; negative values, a cell better reconstructed than usual, are 0). SCORE is
``tools.models.multiscale_score`` over that HEATMAP.

The ``val`` GOOD dies are used in two halves: the first sets the per-cell mean and deviation, the second SCORE's
window weights and the decision bands (on dies the standardisation has not seen, so the bands are not too tight).
``test`` is never used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from tools.export import _export
from tools.fab.augment import VAE, augment, epoch_indices
from tools.fab.loop import Schedule, fit
from tools.metrics import decision_bands
from tools.models import ConvVAE, cell_errors, multiscale_score, vae_loss
from tools.train_anomaly import heatmaps as reference_heatmaps
from tools.train_anomaly import score_weights, scores, vae_error_map
from tools.training import batches

BATCH = 32
RESIDUAL_CEILING = 8.0  # standard deviations over GOOD that the first residual map shows at full scale
GATE = 3.0  # standard deviations over GOOD from which the signed difference is shown in full
DIFFERENCE_GAIN = 2.0  # the signed difference at full scale: half the grey range
BETA_MAX = 0.5  # KL weight after the warm-up (``tools.train_anomaly.train_vae``)
WARMUP = 0.4  # share of the steps over which beta rises from 0


def heatmaps(vae: ConvVAE, grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """HEATMAP (N, 32, 32) of grey dies (N, 1, 256, 256) as the reference graph computes it (not standardised)."""
    cells: npt.NDArray[np.float32] = reference_heatmaps(vae_error_map(vae), grey)[0]
    return cells


def train(
    train_good: npt.NDArray[np.uint8], val_good: npt.NDArray[np.uint8], schedule: Schedule, checkpoint: Path,
    seed: int, resume: bool = False,
) -> tuple[ConvVAE, dict[str, float]]:  # fmt: skip
    """The fitted VAE and its training facts; ``train_good`` and ``val_good``: grey GOOD dies (N, 1, 256, 256)."""
    torch.manual_seed(seed)
    vae = ConvVAE()
    data = torch.from_numpy(train_good)
    steps = schedule.max_epochs * (len(data) // BATCH)

    def batches(rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
        return epoch_indices(np.full(len(data), 1.0 / len(data)), BATCH, rng, schedule.epoch_dies)

    def step(idx: npt.NDArray[np.int64], gen: torch.Generator, number: int) -> torch.Tensor:
        beta = BETA_MAX * min(1.0, number / max(WARMUP * steps, 1.0))
        x = augment(data[idx], gen, VAE) / 255.0
        logits, mu, logvar = vae(x)
        return vae_loss(logits, x, mu, logvar, beta)[0]

    def validate() -> float:  # the mean squared reconstruction error of val GOOD dies, negated (higher is better)
        return -float(heatmaps(vae, val_good).mean())

    groups = [{"params": list(vae.parameters()), "lr": schedule.lr, "weight_decay": 1e-5}]
    best, epoch = fit("anomaly", vae, groups, batches, step, validate, schedule, checkpoint, seed, resume)
    return vae, {"best_epoch": epoch, "val_mean_squared_error": -best, "train_good": len(data)}


class StandardisedAnomaly(nn.Module):
    """UINT8 IMAGE [B, 1, 256, 256] -> SCORE [B, 1], HEATMAP [B, 32, 32] (standardised per cell, see above)."""

    def __init__(self, vae: ConvVAE, center: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        self.vae = vae
        self.register_buffer("center", center.to(torch.float32))
        self.register_buffer("scale", scale.to(torch.float32))
        self.register_buffer("weights", weights.to(torch.float32).reshape(-1))

    def reconstruct(self, dies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grey dies in 0..1 (B, 1, H, W) -> their posterior-mean reconstruction and the standardised HEATMAP."""
        mu, _ = self.vae.encode(dies)
        recon = torch.sigmoid(self.vae.decode(mu))
        cells = cell_errors((dies - recon) ** 2)
        return recon, ((cells - self.center) / self.scale).clamp_min(0.0)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, heatmap = self.reconstruct(image.float() / 255.0)
        return multiscale_score(heatmap, self.weights), heatmap


def standardisation(heat: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per cell, the mean of GOOD dies' HEATMAPs and their standard deviation floored at the median cell's."""
    sd = heat.std(0)
    return heat.mean(0).astype(np.float32), np.maximum(sd, max(float(np.median(sd)), 1e-12)).astype(np.float32)


def calibrate(vae: ConvVAE, val_good: npt.NDArray[np.uint8]) -> tuple[StandardisedAnomaly, dict[str, float]]:
    """The served graph (the standardisation and SCORE's window weights) and the PASS / REJECT bands, from the two
    halves of the ``val`` GOOD dies."""
    heat = heatmaps(vae, val_good)
    first, second = heat[0::2], heat[1::2]
    center, scale = standardisation(first)
    standardised = np.maximum((second - center) / scale, 0.0).astype(np.float32)
    weights = score_weights(standardised)
    graph = StandardisedAnomaly(vae, torch.from_numpy(center), torch.from_numpy(scale), torch.from_numpy(weights))
    return graph.eval(), decision_bands(scores(standardised, weights))


def export(graph: StandardisedAnomaly, grey: npt.NDArray[np.uint8], path: Path) -> dict[str, object]:
    """``graph`` as ONNX with the serving interface, checked against PyTorch in ONNX Runtime."""
    return _export(graph, {"IMAGE": grey}, ["SCORE", "HEATMAP"], path, atol=1e-3)


def residual_channel(graph: StandardisedAnomaly, grey: torch.Tensor) -> torch.Tensor:
    """Grey dies (B, 1, H, W) as grey levels -> two maps (B, 2, H, W) as grey levels, what the classifier reads
    beside the image:
    - where the die departs from GOOD dies: the standardised HEATMAP stretched over the die (bilinear), 0 to
      ``RESIDUAL_CEILING`` deviations as 0..255;
    - how: the die minus its reconstruction, signed (128 is none; brighter than expected above, darker below), shown
      only where that HEATMAP is ``GATE`` deviations or more (a layout edge is reconstructed a little off on every
      die). A bridge is metal where a gap was expected, an open a gap where metal was; the image shows both among
      the layout's own edges, this map shows the defect's shape and polarity alone."""
    dies = grey / 255.0
    recon, heat = graph.reconstruct(dies)
    up = F.interpolate(heat[:, None], size=tuple(grey.shape[-2:]), mode="bilinear", align_corners=False)
    where = up.clamp(0.0, RESIDUAL_CEILING) * (255.0 / RESIDUAL_CEILING)
    how = 127.5 + 127.5 * ((dies - recon) * DIFFERENCE_GAIN).clamp(-1.0, 1.0) * (up / GATE).clamp(0.0, 1.0)
    return torch.cat([where, how], dim=1).round()


@torch.no_grad()
def residuals(graph: StandardisedAnomaly, grey: npt.NDArray[np.uint8], batch: int = 64) -> npt.NDArray[np.uint8]:
    """``residual_channel`` of grey uint8 dies (N, 1, H, W), as uint8 (N, 2, H, W)."""
    parts = [residual_channel(graph, torch.from_numpy(grey[idx]).float()).to(torch.uint8).numpy()
             for idx in batches(len(grey), batch)]  # fmt: skip
    return np.concatenate(parts) if parts else np.zeros((0, 2, *grey.shape[2:]), np.uint8)

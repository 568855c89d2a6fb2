"""The anomaly model: train the VAE on GOOD dies, measure it on held-out dies against a PCA baseline, export it.

Evaluation follows the VAE case study (AUROC, AUPRC, FNR at FPR 5%, pixel AUROC) on what the model can see: a
die showing a defect is a positive, a clean GOOD die (borderline bumps inside the tolerance included) a negative.
Dies with the discolouration look are left out of those figures and reported apart: in grey the tint is faint,
and whether it is a defect at all depends on the process log, which is the classifier's job (DESIGN 3.4).

SCORE weighs its window sizes (``tools.models.multiscale_score``) by how high GOOD dies reach at each, measured on
validation dies of the run's own seed (``tools.training.validation_seed``), never on the held-out split. The
negatives' high tail is GOOD dies with one bump undersized inside the tolerance: a ring of error as strong as a
mildly deformed bump's. Broad faint defects (residue, CMP dishing) that scored under that tail at 8x8 cells clear
it at 32 or 64 pixels, where a ring is averaged away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edge.taxonomy import DEFAULT_CLASSES, GOOD
from tools.export import export_anomaly
from tools.metrics import auprc, auroc, decision_bands, detection_report, fnr_at_fpr
from tools.models import (
    HEATMAP_CELL,
    SCORE_WINDOWS,
    ConvVAE,
    cell_errors,
    multiscale_score,
    squared_error,
    vae_loss,
    window_peaks,
)
from tools.synth import grey, make_dataset
from tools.training import (
    BANDS_SEED,
    HELDOUT_SEED,
    HELDOUT_SHIFT,
    THREADS,
    Budget,
    HeldOut,
    Run,
    batches,
    log,
    validation_seed,
)

DISCOLOR = DEFAULT_CLASSES.index("DISCOLOR")
PCA_COMPONENTS = (10, 50, 100)
PRODUCTION_PREVALENCE = 0.05  # defective share of dies for the AUPRC quoted at production prevalence
PIXEL_STRIDE = 4  # pixel AUROC samples every 4th pixel in each direction


def train_vae(
    grey_images: np.ndarray, epochs: int, seed: int = 0, beta_max: float = 0.5, batch: int = 32
) -> ConvVAE:
    """Fit the VAE on grey GOOD dies (N, 1, 256, 256) uint8.

    AdamW with a cosine learning rate; beta rises linearly from 0 to ``beta_max`` over the first 40% of the steps
    (KL annealing), so the decoder learns to reconstruct before the latent space is pulled to the prior. A beta
    under 1 keeps reconstructions sharp, which is what makes small defects stand out in the score.
    """
    vae = ConvVAE().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=1e-5)
    steps = epochs * (len(grey_images) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-5)
    rng, step = np.random.default_rng(seed), 0
    data = torch.from_numpy(grey_images)
    for epoch in range(epochs):
        vae.train()
        totals = np.zeros(3)
        for idx in batches(len(data), batch, rng):
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
        log(f"vae epoch {epoch + 1}/{epochs} loss={loss:.1f} recon={recon:.1f} kl={kl:.1f} beta={beta:.2f}")
    return vae.eval().to(memory_format=torch.contiguous_format)


ErrorMap = Callable[[torch.Tensor], torch.Tensor]  # dies in 0..1 (B, 1, 256, 256) -> squared error, same shape


@torch.no_grad()
def heatmaps(error_map: ErrorMap, grey_images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """HEATMAP (N, 32, 32) and the case study's image-wide mean squared error (N,) for grey uint8 dies."""
    cells, means = [], []
    for idx in batches(len(grey_images), batch):
        err = error_map(torch.from_numpy(grey_images[idx]).float() / 255.0)
        cells.append(cell_errors(err))
        means.append(err.mean(dim=(1, 2, 3)))
    return torch.cat(cells).numpy(), torch.cat(means).numpy()


def vae_error_map(vae: ConvVAE) -> ErrorMap:
    return lambda x: squared_error(vae, x)


def pca_error_map(train_grey: np.ndarray, components: int) -> ErrorMap:
    """The case study's baseline: a linear autoencoder (PCA with ``components`` on the VAE's training dies)."""
    x = torch.from_numpy(train_grey).float().flatten(1) / 255.0
    mean = x.mean(0)
    _, _, v = torch.pca_lowrank(x - mean, q=components, center=False, niter=3)

    def error(batch: torch.Tensor) -> torch.Tensor:
        flat = batch.flatten(1) - mean
        return ((flat - (flat @ v) @ v.T) ** 2).view_as(batch)

    return error


def score_weights(good_heatmap: np.ndarray, quantile: float = 0.99) -> np.ndarray:
    """SCORE's window weights (``tools.models.multiscale_score``) from the HEATMAPs of good validation dies: the
    ``quantile`` of the one-cell peaks over that of each window size's peaks."""
    reach = np.quantile(window_peaks(torch.from_numpy(good_heatmap)).numpy(), quantile, axis=0)
    return (reach[0] / np.maximum(reach, 1e-12)).astype(np.float32)


def scores(heatmap: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """SCORE as the served graph computes it (``tools.models.multiscale_score``)."""
    return multiscale_score(torch.from_numpy(heatmap), torch.from_numpy(weights)).numpy()[:, 0]


def pixel_auroc(heatmap: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of heatmap cells (each pixel takes its cell's value) against the defect masks, every 4th pixel."""
    pixels = np.repeat(np.repeat(heatmap, HEATMAP_CELL, axis=1), HEATMAP_CELL, axis=2)
    sl = (slice(None), slice(None, None, PIXEL_STRIDE), slice(None, None, PIXEL_STRIDE))
    return auroc(pixels[sl].ravel(), masks[sl].ravel())


def detection(score: np.ndarray, positive: np.ndarray) -> dict:
    """The case study's image-level figures for one score."""
    fnr, threshold = fnr_at_fpr(score, positive, 0.05)
    neg_weight = positive.sum() / (~positive).sum() * (1 - PRODUCTION_PREVALENCE) / PRODUCTION_PREVALENCE
    return {
        "auroc": round(auroc(score, positive), 4),
        "auprc": round(auprc(score, positive), 4),
        "auprc_at_production_prevalence": round(auprc(score, positive, negative_weight=neg_weight), 4),
        "fnr_at_fpr_5pct": round(fnr, 4),
        "threshold_at_fpr_5pct": float(f"{threshold:.6g}"),
    }


def evaluate_anomaly(
    vae: ConvVAE, held: HeldOut, weights: np.ndarray, val_grey: np.ndarray, train_grey: np.ndarray | None
) -> dict:
    """Case-study figures on the held-out split for the VAE and the PCA baseline, and the PASS/REJECT bands.

    Positives are the mixed set's dies with a visible defect look; negatives its clean GOOD dies and the clean dies
    of the GOOD-only set (which also sets the bands), so that FNR at FPR 5% rests on a few hundred negatives. SCORE
    weighs its window sizes by ``weights``; the PCA baseline, fitted on ``train_grey`` (None: left out), gets its own
    weights from the same good validation dies ``val_grey``.
    """
    good_heatmap, good_mean = heatmaps(vae_error_map(vae), grey(held.good.images))
    bands = decision_bands(scores(good_heatmap, weights))
    mixed = held.mixed
    mixed_grey = grey(mixed.images)
    heatmap, image_mean = heatmaps(vae_error_map(vae), mixed_grey)
    score = scores(heatmap, weights)
    extra = held.good.looks == DEFAULT_CLASSES.index(GOOD)
    visible = mixed.looks != DISCOLOR
    positive = np.r_[mixed.looks[visible] != DEFAULT_CLASSES.index(GOOD), np.zeros(int(extra.sum()), bool)]
    defect = visible & (mixed.looks != DEFAULT_CLASSES.index(GOOD))
    good_scores = score[mixed.labels == DEFAULT_CLASSES.index(GOOD)]
    eval_grey = np.concatenate([mixed_grey[visible], grey(held.good.images[extra])])
    baseline = {}
    for k in PCA_COMPONENTS if train_grey is not None else ():
        pca = pca_error_map(train_grey, k)
        pca_heatmap, pca_mean = heatmaps(pca, eval_grey)
        pca_weights = score_weights(heatmaps(pca, val_grey)[0])
        baseline[str(k)] = {**detection(scores(pca_heatmap, pca_weights), positive),
                            "auroc_image_mean": round(auroc(pca_mean, positive), 4)}  # fmt: skip
    return {
        **detection(np.r_[score[visible], scores(good_heatmap, weights)[extra]], positive),
        "pixel_auroc": round(pixel_auroc(heatmap[defect], mixed.masks[defect]), 4),
        "auroc_image_mean": round(auroc(np.r_[image_mean[visible], good_mean[extra]], positive), 4),
        "score": "largest mean of the squared reconstruction error over an 8, 32 or 64 pixel window, each window size "
                 "weighted to the 8x8 cells' scale by the 99th percentiles of good validation dies",
        "score_windows_px": [w * HEATMAP_CELL for w in SCORE_WINDOWS],
        "score_weights": [round(float(w), 5) for w in weights],
        "evaluated": {
            "positives": int(positive.sum()),
            "negatives": int((~positive).sum()),
            "left_out_discolour_look": int((~visible).sum()),
        },
        "discolour_look_at_or_above_pass": round(float((score[~visible] >= bands["pass_band"]).mean()), 4),
        "pca_baseline": baseline,
        **{k: float(f"{v:.6g}") for k, v in bands.items()},
        "bands_rule": "pass: 99th percentile of held-out GOOD scores; reject: 1.25 x the largest of them",
        "good_fpr_at_pass": round(float((good_scores >= bands["pass_band"]).mean()), 4),
        "good_fpr_at_reject": round(float((good_scores >= bands["reject_band"]).mean()), 4),
        "per_class": detection_report(score, mixed.labels, DEFAULT_CLASSES, bands),
    }


def run(budget: Budget, held: HeldOut, out: Path, spec: Run) -> dict:
    started = time.monotonic()
    train = make_dataset(spec.seed, budget.vae_train, classes=(GOOD,), with_process=False, workers=THREADS)
    train_grey = grey(train.images)
    del train
    val = make_dataset(validation_seed(spec.seed), budget.heldout_good, classes=(GOOD,), with_process=False,
                       workers=THREADS)  # fmt: skip
    val_grey = grey(val.images)
    log(f"anomaly: {len(train_grey)} GOOD training and {len(val_grey)} validation dies in "
        f"{time.monotonic() - started:.1f}s")  # fmt: skip
    torch.manual_seed(spec.seed)
    vae = train_vae(train_grey, budget.vae_epochs, seed=spec.seed)
    trained = time.monotonic()
    weights = score_weights(heatmaps(vae_error_map(vae), val_grey)[0])
    metrics = evaluate_anomaly(vae, held, weights, val_grey, train_grey if spec.baselines else None)
    metrics["parameters"] = sum(p.numel() for p in vae.parameters())
    metrics["onnx"] = export_anomaly(vae, grey(held.mixed.images[:4]), out / "anomaly.onnx", weights)
    metrics["data"] = {"train_seed": spec.seed, "train_good": len(train_grey),
                       "validation_seed": validation_seed(spec.seed), "validation_good": len(val_grey),
                       "heldout_seed": HELDOUT_SEED,
                       "bands_seed": BANDS_SEED, "heldout_shift": HELDOUT_SHIFT, "heldout": len(held.mixed.labels),
                       "heldout_good": len(held.good.labels)}  # fmt: skip
    metrics["seconds"] = {"train": round(trained - started, 1), "total": round(time.monotonic() - started, 1)}
    return metrics


def summary(m: dict) -> str:
    pca = max((b["auroc"] for b in m["pca_baseline"].values()), default=None)
    return (f"anomaly: AUROC={m['auroc']} AUPRC={m['auprc']} FNR@FPR5%={m['fnr_at_fpr_5pct']} "
            f"pixel AUROC={m['pixel_auroc']} (image-mean AUROC {m['auroc_image_mean']}; best PCA AUROC "
            f"{pca}) pass_band={m['pass_band']:.5g} reject_band={m['reject_band']:.5g}")  # fmt: skip


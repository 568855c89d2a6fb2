"""The anomaly model: train the VAE on GOOD dies, measure it on held-out dies against a PCA baseline, export it.

Evaluation follows the VAE case study (AUROC, AUPRC, FNR at FPR 5%, pixel AUROC) on what the model can see: a
die showing a defect is a positive, a clean GOOD die (borderline bumps inside the tolerance included) a negative.
Dies with the discolouration look are left out of those figures and reported apart: in grey the tint is faint,
and whether it is a defect at all depends on the process log, which is the classifier's job (DESIGN 3.4).
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
from tools.models import HEATMAP_CELL, ConvVAE, cell_errors, peak_cell_error, squared_error, vae_loss
from tools.synth import grey, make_dataset
from tools.training import BANDS_SEED, HELDOUT_SEED, HELDOUT_SHIFT, THREADS, TRAIN_SEED, Budget, HeldOut, batches, log

DISCOLOR = DEFAULT_CLASSES.index("DISCOLOR")
PCA_COMPONENTS = (10, 50, 100)
PRODUCTION_PREVALENCE = 0.05  # defective share of dies for the AUPRC quoted at production prevalence
PIXEL_STRIDE = 4  # pixel AUROC samples every 4th pixel in each direction


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


def scores(heatmap: np.ndarray) -> np.ndarray:
    """SCORE as the served graph computes it (``tools.models.peak_cell_error``)."""
    return peak_cell_error(torch.from_numpy(heatmap)).numpy()[:, 0]


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


def evaluate_anomaly(vae: ConvVAE, held: HeldOut, train_grey: np.ndarray) -> dict:
    """Case-study figures on the held-out split for the VAE and the PCA baseline, and the PASS/REJECT bands.

    Positives are the mixed set's dies with a visible defect look; negatives its clean GOOD dies and the clean dies
    of the GOOD-only set (which also sets the bands), so that FNR at FPR 5% rests on a few hundred negatives.
    """
    good_heatmap, good_mean = heatmaps(vae_error_map(vae), grey(held.good.images))
    bands = decision_bands(scores(good_heatmap))
    mixed = held.mixed
    mixed_grey = grey(mixed.images)
    heatmap, image_mean = heatmaps(vae_error_map(vae), mixed_grey)
    score = scores(heatmap)
    extra = held.good.looks == DEFAULT_CLASSES.index(GOOD)
    visible = mixed.looks != DISCOLOR
    positive = np.r_[mixed.looks[visible] != DEFAULT_CLASSES.index(GOOD), np.zeros(int(extra.sum()), bool)]
    defect = visible & (mixed.looks != DEFAULT_CLASSES.index(GOOD))
    good_scores = score[mixed.labels == DEFAULT_CLASSES.index(GOOD)]
    eval_grey = np.concatenate([mixed_grey[visible], grey(held.good.images[extra])])
    baseline = {}
    for k in PCA_COMPONENTS:
        pca_heatmap, pca_mean = heatmaps(pca_error_map(train_grey, k), eval_grey)
        baseline[str(k)] = {**detection(scores(pca_heatmap), positive),
                            "auroc_image_mean": round(auroc(pca_mean, positive), 4)}  # fmt: skip
    return {
        **detection(np.r_[score[visible], scores(good_heatmap)[extra]], positive),
        "pixel_auroc": round(pixel_auroc(heatmap[defect], mixed.masks[defect]), 4),
        "auroc_image_mean": round(auroc(np.r_[image_mean[visible], good_mean[extra]], positive), 4),
        "score": "largest 8x8-cell mean of the squared reconstruction error (the HEATMAP's peak)",
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


def run(budget: Budget, held: HeldOut, out: Path) -> dict:
    started = time.monotonic()
    train = make_dataset(TRAIN_SEED, budget.vae_train, classes=(GOOD,), with_process=False, workers=THREADS)
    train_grey = grey(train.images)
    del train
    log(f"anomaly: {len(train_grey)} GOOD training dies in {time.monotonic() - started:.1f}s")
    torch.manual_seed(0)
    vae = train_vae(train_grey, budget.vae_epochs)
    trained = time.monotonic()
    metrics = evaluate_anomaly(vae, held, train_grey)
    metrics["parameters"] = sum(p.numel() for p in vae.parameters())
    metrics["onnx"] = export_anomaly(vae, grey(held.mixed.images[:4]), out / "anomaly.onnx")
    metrics["data"] = {"train_seed": TRAIN_SEED, "train_good": len(train_grey), "heldout_seed": HELDOUT_SEED,
                       "bands_seed": BANDS_SEED, "heldout_shift": HELDOUT_SHIFT, "heldout": len(held.mixed.labels),
                       "heldout_good": len(held.good.labels)}  # fmt: skip
    metrics["seconds"] = {"train": round(trained - started, 1), "total": round(time.monotonic() - started, 1)}
    return metrics


def summary(m: dict) -> str:
    best_pca = max(m["pca_baseline"].values(), key=lambda b: b["auroc"])
    return (f"anomaly: AUROC={m['auroc']} AUPRC={m['auprc']} FNR@FPR5%={m['fnr_at_fpr_5pct']} "
            f"pixel AUROC={m['pixel_auroc']} (image-mean AUROC {m['auroc_image_mean']}; best PCA AUROC "
            f"{best_pca['auroc']}) pass_band={m['pass_band']:.5g} reject_band={m['reject_band']:.5g}")  # fmt: skip


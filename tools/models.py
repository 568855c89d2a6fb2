"""PyTorch models behind the two Triton models, and the export wrappers that fix their tensor interface.

``anomaly``: a convolutional VAE on grey 256x256 dies (Bernoulli decoder, latent 128, full resolution in and out).
Its export scores a die by the worst window of its squared reconstruction error at three sizes (8, 32 and 64
pixels), each size weighted by how high good dies reach at it (``multiscale_score``).

``classifier``: a small hybrid ViT turns the image into an 8x8 grid of patch tokens; the process log (normalised by
constants stored in the graph) and the operator note (an embedding bag over ``edge.notes`` ids) become context
tokens that the patches read through gated cross-attention (gates start at zero); a missing modality (PRESENT flag
0) is multiplied out, so it adds exactly nothing. Attention pooling over the 64 patches gives the class logits and
the ATTENTION output. ``VisionCNN`` is the image-only baseline it is measured against.

The wrappers (``AnomalyExport``, ``ClassifierExport``) take UINT8 pixels and do every conversion inside the graph;
their inputs and outputs are those of ``model_repository/README.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.notes import VOCAB_SIZE
from edge.process_params import DEFAULT_PARAMETERS
from edge.taxonomy import DEFAULT_CLASSES

LATENT = 128
HEATMAP_CELL = 8
PATCH_GRID = 8
SCORE_WINDOWS = (1, 4, 8)  # SCORE's window sizes in HEATMAP cells: 8, 32 and 64 pixels, strided by half a window


# --- anomaly: convolutional VAE --------------------------------------------------------------------------


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class ConvVAE(nn.Module):
    """VAE for grey images in 0..1, shape (B, 1, 256, 256); the decoder returns Bernoulli logits at full size.

    Encoder: five stride-2 Conv-BN-LeakyReLU blocks (256 -> 8), then linear heads for mu and log-variance.
    Decoder: a linear expansion, four stride-2 transposed-conv blocks (8 -> 128) and a sub-pixel (PixelShuffle)
    layer to 256, so every output pixel is predicted, not interpolated. ``width`` 16 gives about 3.9M parameters.
    """

    def __init__(self, latent: int = LATENT, width: int = 16) -> None:
        super().__init__()
        chans = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.encoder = nn.Sequential(
            _down(1, chans[0]), _down(chans[0], chans[1]), _down(chans[1], chans[2]), _down(chans[2], chans[3]),
            _down(chans[3], chans[4]),
        )  # fmt: skip
        self._bottleneck = (chans[4], 8, 8)
        flat = chans[4] * 8 * 8
        self.mu = nn.Linear(flat, latent)
        self.logvar = nn.Linear(flat, latent)
        self.expand = nn.Linear(latent, flat)
        self.decoder = nn.Sequential(
            _up(chans[4], chans[3]), _up(chans[3], chans[2]), _up(chans[2], chans[1]), _up(chans[1], chans[0]),
            nn.Conv2d(chans[0], 4, 3, 1, 1), nn.PixelShuffle(2),  # 128 -> 256
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.expand(z).view(-1, *self._bottleneck))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of a reconstruction from a posterior sample (training) or the posterior mean (eval), mu, logvar."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar


def vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative ELBO per image (Bernoulli reconstruction + beta * KL to N(0, I)), and its two terms."""
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / x.shape[0]
    return recon + beta * kl, recon, kl


def squared_error(vae: ConvVAE, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error (B, 1, 256, 256) between dies in 0..1 and the posterior-mean reconstruction."""
    mu, _ = vae.encode(x)
    return (x - torch.sigmoid(vae.decode(mu))) ** 2


def cell_errors(err: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over each 8x8 cell: the HEATMAP (B, 32, 32)."""
    return F.avg_pool2d(err, HEATMAP_CELL).squeeze(1)


def window_peaks(heatmap: torch.Tensor) -> torch.Tensor:
    """(B, len(SCORE_WINDOWS)): per window size, the largest mean of the HEATMAP over a window of that many cells
    (stride half a window); the first, one cell, is the HEATMAP's largest cell."""
    cells = heatmap.unsqueeze(1)
    return torch.stack([F.avg_pool2d(cells, w, max(w // 2, 1)).flatten(1).amax(dim=1) for w in SCORE_WINDOWS], dim=1)


def multiscale_score(heatmap: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SCORE (B, 1): the largest of ``window_peaks`` times ``weights``, in the units of the HEATMAP's cells.

    One 8x8 cell keeps a 30-pixel particle's weight against shot noise (the image-wide mean of the case study dilutes
    it 2000-fold); a broad, faint anomaly (residue, CMP dishing) spreads its error over many cells and stands out at
    32 or 64 pixels instead, where normal dies reach less high. ``weights`` (the first 1.0) bring each window size to
    the cell scale by the ratio of the 99th percentiles of good validation dies (``tools.train_anomaly``), so no size
    dominates on good dies, and the score is at least the largest cell.
    """
    return (window_peaks(heatmap) * weights).amax(dim=1, keepdim=True)


class AnomalyExport(nn.Module):
    """UINT8 IMAGE [B, 1, 256, 256] -> SCORE [B, 1] (``multiscale_score``), HEATMAP [B, 32, 32] (``cell_errors``)."""

    def __init__(self, vae: ConvVAE, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vae = vae
        default = torch.ones(len(SCORE_WINDOWS))
        self.register_buffer("weights", default if weights is None else weights.to(torch.float32).reshape(-1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmap = cell_errors(squared_error(self.vae, image.float() / 255.0))
        return multiscale_score(heatmap, self.weights), heatmap


# --- classifier: multimodal with gated cross-attention ----------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def conv_stem(dim: int) -> nn.Sequential:
    """Normalised RGB (B, 3, 256, 256) -> feature map (B, dim, 8, 8): one cell per 32x32 patch."""
    return nn.Sequential(
        _conv_bn(3, 16, 2), _conv_bn(16, 32, 2), _conv_bn(32, 32, 1),  # 64x64
        _conv_bn(32, 64, 2), _conv_bn(64, 64, 1),  # 32x32
        _conv_bn(64, 96, 2), _conv_bn(96, dim, 2),  # 8x8
    )  # fmt: skip


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention: q (B, N, D), k and v (B, M, D) -> (B, N, D)."""
    b, n, d = q.shape
    q, k, v = (t.reshape(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return (att @ v).transpose(1, 2).reshape(b, n, d)


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: multi-head self-attention, then a GELU MLP, both residual."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.proj(attend(q, k, v, self.heads))
        return x + self.mlp(self.norm2(x))


class PatchViT(nn.Module):
    """Small hybrid ViT: a convolutional patch embedding of the 8x8 grid of 32x32 patches (early convolutions
    make a ViT trainable from a few thousand images), learned positions and ``depth`` transformer blocks.
    Normalised RGB (B, 3, 256, 256) -> patch tokens (B, 64, dim)."""

    def __init__(self, dim: int, depth: int = 2) -> None:
        super().__init__()
        self.embed = conv_stem(dim)
        self.position = nn.Parameter(torch.zeros(1, PATCH_GRID * PATCH_GRID, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(x).flatten(2).transpose(1, 2) + self.position)


class ProcessEncoder(nn.Module):
    """Raw process vector -> ``tokens`` context tokens; z-scoring with training constants (a robust centre and
    scale per parameter) is part of the graph.

    The MLP sees each z-score and its magnitude: an excursion is a large deviation in either direction.
    """

    def __init__(self, dim: int, tokens: int = 4, n_params: int = len(DEFAULT_PARAMETERS)) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(n_params))
        self.register_buffer("scale", torch.ones(n_params))
        self.tokens = tokens
        self.mlp = nn.Sequential(nn.Linear(2 * n_params, dim), nn.GELU(), nn.Linear(dim, tokens * dim))

    def set_normalisation(self, center: torch.Tensor, scale: torch.Tensor) -> None:
        self.center.copy_(center)
        self.scale.copy_(scale.clamp_min(1e-6))

    def forward(self, process: torch.Tensor) -> torch.Tensor:
        z = ((process - self.center) / self.scale).clamp(-10.0, 10.0)
        return self.mlp(torch.cat([z, z.abs()], dim=1)).view(process.shape[0], self.tokens, -1)


class NoteEncoder(nn.Module):
    """Note token ids (0 = padding) -> mean embedding (an embedding bag) -> ``tokens`` context tokens."""

    def __init__(self, dim: int, tokens: int = 2, vocab: int = VOCAB_SIZE) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.tokens = tokens
        self.proj = nn.Sequential(nn.GELU(), nn.Linear(dim, tokens * dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = (ids > 0).unsqueeze(-1).float()
        bag = (self.embed(ids) * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        return self.proj(bag).view(ids.shape[0], self.tokens, -1)


class GatedCrossAttention(nn.Module):
    """Patches read a modality's context tokens; the update is scaled by tanh(gate) (zero at init) and PRESENT."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, patches: torch.Tensor, context: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(self.norm_kv(context)).chunk(2, dim=-1)
        update = self.out(attend(self.q(self.norm_q(patches)), k, v, self.heads))
        return patches + (torch.tanh(self.gate) * present.view(-1, 1, 1)) * update


ALIGN_DIM = 64


class DefectClassifier(nn.Module):
    """Image + process + note -> class logits (B, classes) and patch attention (B, 64).

    ``forward`` is what is served; ``features`` adds the image and process embeddings that the contrastive
    alignment loss pulls together in training.
    """

    def __init__(self, n_classes: int = len(DEFAULT_CLASSES), dim: int = 128, depth: int = 2) -> None:
        super().__init__()
        self.image = PatchViT(dim, depth)
        self.process = ProcessEncoder(dim)
        self.notes = NoteEncoder(dim)
        self.fuse_process = GatedCrossAttention(dim)
        self.fuse_notes = GatedCrossAttention(dim)
        self.mix = TransformerBlock(dim)
        self.pool_score = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, 1))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))
        self.align_image = nn.Linear(dim, ALIGN_DIM)
        self.align_process = nn.Linear(dim, ALIGN_DIM)

    def features(
        self, image: torch.Tensor, process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, attention, image embedding and process embedding (the last two for the alignment loss)."""
        visual = self.image(image)
        context = self.process(process)
        h = self.fuse_process(visual, context, present[:, 0])
        h = self.fuse_notes(h, self.notes(notes), present[:, 1])
        h = self.mix(h)
        attention = torch.softmax(self.pool_score(h).squeeze(-1), dim=1)
        pooled = (attention.unsqueeze(-1) * h).sum(1)
        return self.head(pooled), attention, self.align_image(visual.mean(1)), self.align_process(context.mean(1))

    def forward(
        self, image: torch.Tensor, process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, attention, _, _ = self.features(image, process, present, notes)
        return logits, attention


class VisionCNN(nn.Module):
    """The vision-only baseline: the same convolutional stem, global average pooling and a linear head."""

    def __init__(self, n_classes: int = len(DEFAULT_CLASSES), dim: int = 128) -> None:
        super().__init__()
        self.stem = conv_stem(dim)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(dim, n_classes))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stem(image)))


IMAGE_MEAN = 0.45
IMAGE_STD = 0.25


def normalise_image(image_uint8: torch.Tensor) -> torch.Tensor:
    """UINT8 RGB (B, 3, H, W) -> the classifier's float input; the same op runs in training and in the graph."""
    return (image_uint8.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD


class ClassifierExport(nn.Module):
    """IMAGE uint8 [B,3,256,256], PROCESS [B,48], PRESENT [B,2], NOTES int64 [B,32] -> PROBS [B,16], ATTENTION [B,64]"""

    def __init__(self, model: DefectClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, image: torch.Tensor, process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, attention = self.model(normalise_image(image), process, present, notes)
        return torch.softmax(logits, dim=1), attention

"""PyTorch models behind the two Triton models, and the export wrappers that fix their tensor interface.

``anomaly``: a convolutional VAE on grey 256x256 dies (Bernoulli decoder, latent 128). It works at 128x128
internally: the input is mean-pooled 2x and the decoder's logits are upsampled 2x.

``classifier``: a CNN stem gives an 8x8 grid of patch tokens; the process log (normalised by constants stored in
the graph) and the operator note (an embedding bag over ``edge.notes`` ids) become context tokens that the patches
read through gated cross-attention; a missing modality (PRESENT flag 0) is multiplied out, so it adds exactly
nothing. Attention pooling over the 64 patches gives the class logits and the ATTENTION output.

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


# --- anomaly: convolutional VAE --------------------------------------------------------------------------


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class ConvVAE(nn.Module):
    """VAE for grey images in 0..1, shape (B, 1, 256, 256); the decoder returns Bernoulli logits."""

    def __init__(self, latent: int = LATENT, width: int = 16) -> None:
        super().__init__()
        chans = [width, 2 * width, 4 * width, 8 * width]
        self.encoder = nn.Sequential(
            nn.AvgPool2d(2),  # 256 -> 128
            _down(1, chans[0]), _down(chans[0], chans[1]), _down(chans[1], chans[2]), _down(chans[2], chans[3]),
        )  # fmt: skip
        self._bottleneck = (chans[3], 8, 8)
        flat = chans[3] * 8 * 8
        self.mu = nn.Linear(flat, latent)
        self.logvar = nn.Linear(flat, latent)
        self.expand = nn.Linear(latent, flat)
        self.decoder = nn.Sequential(
            _up(chans[3], chans[2]), _up(chans[2], chans[1]), _up(chans[1], chans[0]), _up(chans[0], chans[0]),
            nn.Conv2d(chans[0], 1, 3, 1, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),  # 128 -> 256
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


class AnomalyExport(nn.Module):
    """UINT8 IMAGE [B, 1, 256, 256] -> SCORE [B, 1], HEATMAP [B, 32, 32] (squared error of the mean reconstruction)."""

    def __init__(self, vae: ConvVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.float() / 255.0
        mu, _ = self.vae.encode(x)
        err = (x - torch.sigmoid(self.vae.decode(mu))) ** 2
        return err.mean(dim=(1, 2, 3)).unsqueeze(1), F.avg_pool2d(err, HEATMAP_CELL).squeeze(1)


# --- classifier: multimodal with gated cross-attention ----------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ImageEncoder(nn.Module):
    """CNN stem: normalised RGB (B, 3, 256, 256) -> patch tokens (B, 64, dim) with learned positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn(3, 16, 2), _conv_bn(16, 32, 2), _conv_bn(32, 32, 1),  # 64x64
            _conv_bn(32, 64, 2), _conv_bn(64, 64, 1),  # 32x32
            _conv_bn(64, 96, 2), _conv_bn(96, dim, 2),  # 8x8
        )  # fmt: skip
        self.position = nn.Parameter(torch.zeros(1, PATCH_GRID * PATCH_GRID, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2) + self.position


class ProcessEncoder(nn.Module):
    """Raw process vector -> ``tokens`` context tokens; z-scoring with training constants is part of the graph.

    The MLP sees each z-score and its magnitude: an excursion is a large deviation in either direction.
    """

    def __init__(self, dim: int, tokens: int = 4, n_params: int = len(DEFAULT_PARAMETERS)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_params))
        self.register_buffer("std", torch.ones(n_params))
        self.tokens = tokens
        self.mlp = nn.Sequential(nn.Linear(2 * n_params, dim), nn.GELU(), nn.Linear(dim, tokens * dim))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, process: torch.Tensor) -> torch.Tensor:
        z = ((process - self.mean) / self.std).clamp(-10.0, 10.0)
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
        b, n, d = patches.shape
        q = self.q(self.norm_q(patches)).view(b, n, self.heads, -1).transpose(1, 2)
        kv = self.kv(self.norm_kv(context)).view(b, -1, 2, self.heads, d // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        update = self.out((att @ v).transpose(1, 2).reshape(b, n, d))
        return patches + (torch.tanh(self.gate) * present.view(b, 1, 1)) * update


class DefectClassifier(nn.Module):
    """Image + process + note -> class logits (B, classes) and patch attention (B, 64)."""

    def __init__(self, n_classes: int = len(DEFAULT_CLASSES), dim: int = 128) -> None:
        super().__init__()
        self.image = ImageEncoder(dim)
        self.process = ProcessEncoder(dim)
        self.notes = NoteEncoder(dim)
        self.fuse_process = GatedCrossAttention(dim)
        self.fuse_notes = GatedCrossAttention(dim)
        self.mix = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.pool_score = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2), nn.Tanh(), nn.Linear(dim // 2, 1))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))

    def forward(
        self, image: torch.Tensor, process: torch.Tensor, present: torch.Tensor, notes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.image(image)
        h = self.fuse_process(h, self.process(process), present[:, 0])
        h = self.fuse_notes(h, self.notes(notes), present[:, 1])
        h = h + self.mix(h)
        attention = torch.softmax(self.pool_score(h).squeeze(-1), dim=1)
        pooled = (attention.unsqueeze(-1) * h).sum(1)
        return self.head(pooled), attention


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

"""The two model architectures, their losses, and the ONNX export's parity with PyTorch."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tools.export import export_anomaly, export_classifier
from tools.models import (
    AnomalyExport,
    ConvVAE,
    DefectClassifier,
    VisionCNN,
    cell_errors,
    multiscale_score,
    normalise_image,
    window_peaks,
)
from tools.train_anomaly import pca_error_map, pixel_auroc
from tools.train_classifier import alignment_loss, attention_entropy, focal_loss, inverse_frequency

torch.manual_seed(0)


def _classifier_inputs(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (b, 3, 256, 256), generator=g, dtype=torch.uint8)
    process = torch.randn(b, 48, generator=g)
    present = torch.ones(b, 2)
    notes = torch.randint(1, 4096, (b, 32), generator=g)
    return image, process, present, notes


def test_vae_matches_the_case_study_shape_and_size() -> None:
    vae = ConvVAE().eval()
    logits, mu, logvar = vae(torch.rand(2, 1, 256, 256))
    assert logits.shape == (2, 1, 256, 256) and mu.shape == logvar.shape == (2, 128)
    assert sum(p.numel() for p in vae.parameters()) < 15_000_000


def test_anomaly_score_is_at_least_the_heatmap_peak() -> None:
    wrapper = AnomalyExport(ConvVAE().eval()).eval()
    with torch.no_grad():
        score, heatmap = wrapper(torch.randint(0, 256, (2, 1, 256, 256), dtype=torch.uint8))
    assert heatmap.shape == (2, 32, 32) and score.shape == (2, 1)
    assert torch.all(score[:, 0] >= heatmap.flatten(1).amax(1))


def test_a_broad_faint_anomaly_scores_through_the_large_windows() -> None:
    """Small and hot: the one-cell window decides. Broad and faint: a 64-pixel window, weighted up, decides."""
    weights = torch.tensor([1.0, 2.0, 3.0])
    small, broad = torch.zeros(1, 32, 32), torch.full((1, 32, 32), 0.01)
    small[0, 5, 5] = 1.0
    broad[0, 8:16, 8:16] = 0.1
    assert window_peaks(small)[0].tolist() == pytest.approx([1.0, 1 / 16, 1 / 64])
    assert multiscale_score(small, weights).item() == pytest.approx(1.0)
    assert multiscale_score(broad, weights).item() == pytest.approx(0.3)  # 3 x the 8x8-cell window's mean 0.1


def test_cell_errors_localise_a_defect() -> None:
    err = torch.zeros(1, 1, 256, 256)
    err[0, 0, 40:48, 80:88] = 1.0
    cells = cell_errors(err)[0]
    assert cells[5, 10] == 1.0 and cells.sum() == 1.0
    mask = np.zeros((1, 256, 256), bool)
    mask[0, 40:48, 80:88] = True
    assert pixel_auroc(cells[None].numpy(), mask) == 1.0


def test_missing_modality_adds_exactly_nothing() -> None:
    model = DefectClassifier().eval()
    with torch.no_grad():
        model.fuse_process.gate.fill_(0.7)
        model.fuse_notes.gate.fill_(-0.4)
        image, process, present, notes = _classifier_inputs()
        absent = torch.zeros_like(present)
        a, _ = model(normalise_image(image), process, absent, notes)
        b, _ = model(normalise_image(image), process * 5.0 + 3.0, absent, torch.zeros_like(notes))
        c, _ = model(normalise_image(image), process, present, notes)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_gates_start_closed() -> None:
    model = DefectClassifier().eval()
    assert model.fuse_process.gate.item() == 0.0 and model.fuse_notes.gate.item() == 0.0
    image, process, present, notes = _classifier_inputs()
    with torch.no_grad():
        with_context, _ = model(normalise_image(image), process, present, notes)
        without, _ = model(normalise_image(image), process, torch.zeros_like(present), notes)
    assert torch.equal(with_context, without)


def test_focal_loss_down_weights_easy_examples() -> None:
    target = torch.tensor([0, 1])
    alpha = torch.ones(16)
    logits = torch.zeros(2, 16)
    assert math.isclose(focal_loss(logits, target, alpha, gamma=0.0).item(),
                        torch.nn.functional.cross_entropy(logits, target).item(), rel_tol=1e-6)  # fmt: skip
    easy = torch.zeros(2, 16)
    easy[0, 0] = easy[1, 1] = 6.0
    ce = torch.nn.functional.cross_entropy(easy, target).item()
    assert focal_loss(easy, target, alpha).item() < 0.01 * ce
    assert focal_loss(logits, target, alpha * 2).item() == pytest.approx(2 * focal_loss(logits, target, alpha).item())


def test_inverse_frequency_weights_rare_classes_up() -> None:
    alpha = inverse_frequency(np.array([0, 0, 0, 0, 1, 2]))
    assert alpha[1] == alpha[2] == 4 * alpha[0] and alpha[3:].sum() == 0
    assert alpha[:3].mean().item() == pytest.approx(1.0)


def test_alignment_prefers_matched_pairs_and_skips_missing_logs() -> None:
    v = torch.eye(4, 8)
    present = torch.ones(4, 2)
    matched = alignment_loss(v, v.clone(), present).item()
    shuffled = alignment_loss(v, v[[1, 2, 3, 0]], present).item()
    assert matched < 0.01 < shuffled
    assert alignment_loss(v, v, torch.zeros(4, 2)).item() == 0.0


def test_attention_entropy_bounds() -> None:
    uniform = torch.full((2, 64), 1 / 64)
    peaked = torch.zeros(2, 64)
    peaked[:, 3] = 1.0
    assert attention_entropy(uniform).item() == pytest.approx(math.log(64), rel=1e-5)
    assert attention_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_pca_baseline_reconstructs_its_own_subspace() -> None:
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((3, 256 * 256))
    train = np.clip(128 + (rng.standard_normal((40, 3)) @ basis).reshape(40, 1, 256, 256) * 10, 0, 255)
    error = pca_error_map(train.astype(np.uint8), components=3)
    seen = torch.from_numpy(train[:2]).float() / 255.0
    noise = torch.from_numpy(rng.uniform(0, 1, (2, 1, 256, 256)).astype(np.float32))
    assert error(seen).mean() < 0.1 * error(noise).mean()


def test_vision_baseline_is_image_only() -> None:
    logits = VisionCNN().eval()(normalise_image(_classifier_inputs()[0]))
    assert logits.shape == (3, 16)


@pytest.mark.parametrize("name", ["anomaly", "classifier"])
def test_onnx_export_matches_pytorch(tmp_path, name: str) -> None:
    """The export itself raises on disagreement; here ORT is run again on a batch size it was not exported with."""
    if name == "anomaly":
        vae = ConvVAE().eval()
        sample = np.random.default_rng(1).integers(0, 256, (2, 1, 256, 256), dtype=np.uint8)
        report = export_anomaly(vae, sample, tmp_path / "a.onnx")
        feed = {"IMAGE": np.random.default_rng(2).integers(0, 256, (5, 1, 256, 256), dtype=np.uint8)}
        with torch.no_grad():
            want = AnomalyExport(vae)(torch.from_numpy(feed["IMAGE"]))[0].numpy()
    else:
        model = DefectClassifier().eval()
        with torch.no_grad():
            model.fuse_process.gate.fill_(0.5)
        image, process, present, notes = _classifier_inputs(2)
        report = export_classifier(model, image.numpy(), process.numpy(), present.numpy(), notes.numpy(),
                                   tmp_path / "a.onnx")  # fmt: skip
        image, process, present, notes = _classifier_inputs(5, seed=3)
        present[1] = 0.0
        feed = {"IMAGE": image.numpy(), "PROCESS": process.numpy(), "PRESENT": present.numpy(), "NOTES": notes.numpy()}
        with torch.no_grad():
            want = torch.softmax(model(normalise_image(image), process, present, notes)[0], 1).numpy()
    assert max(report["max_abs_diff"].values()) < 1e-4
    got = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=1e-4)

"""Training on a fab's own folder, its parts: sampling and augmentation, the loop's early stopping and resume, the
figures on test, the station config fragment, and the numbered repository version with the contract in its
config. (Training end to end, served through Triton: tests/e2e/test_own_data.py.)"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.config import Config
from edge.inference.model_facts import bands_from, contract_from
from edge.models.pbtxt import facts_for, own_config
from edge.models.repository import digest
from tests.unit.test_dataset import make_folder
from tools.build_repository import SOURCE, config_parameters
from tools.dataset.arrays import Arrays
from tools.dataset.digest import data_digest
from tools.dataset.folder import load
from tools.fab import anomaly, classifier
from tools.fab import train as fab_train
from tools.fab.augment import VAE, Variation, augment, epoch_indices, sample_weights
from tools.fab.evaluate import anomaly_figures, classifier_figures
from tools.fab.loop import Schedule, fit
from tools.fab.version import GPU_SOURCE, next_version, shaped, write_version
from tools.models import ConvVAE
from tools.precision_gate import REPORT, onnx_path, sha256

CLASSES = ("GOOD", "HAZE", "SCRATCH")


# --- sampling and augmentation ---------------------------------------------------------------------------------


def test_balanced_sampling_gives_each_class_a_share_by_the_square_root_of_its_count():
    labels = np.array([0] * 900 + [1] * 100 + [2] * 9)
    weights = sample_weights(labels, 3)
    share = [weights[labels == k].sum() for k in range(3)]
    assert share == pytest.approx(np.sqrt([900, 100, 9]) / np.sqrt([900, 100, 9]).sum())
    rng = np.random.default_rng(0)
    batches = epoch_indices(weights, 32, rng)
    assert len(batches) == len(labels) // 32 and all(len(b) == 32 for b in batches)
    drawn = np.bincount(labels[np.concatenate(batches)], minlength=3) / (32 * len(batches))
    assert drawn[2] > 0.04  # the 9-die class: ~6% of the draws instead of 0.9%
    assert len(epoch_indices(weights, 32, rng, most=100)) == 3


def test_augmentation_keeps_range_and_shape_and_does_nothing_when_switched_off():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    out = augment(images, gen)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255 and torch.equal(out, out.round())
    assert not torch.equal(out, images.float())
    off = Variation(gain=0.0, offset=0.0, blur=0.0, noise=0.0, shift=0)
    assert torch.equal(augment(images, gen, off), images.float())


def test_a_shift_moves_the_die_and_repeats_its_border():
    gen = torch.Generator().manual_seed(3)
    image = torch.zeros((1, 1, 32, 32), dtype=torch.uint8)
    image[0, 0, 16, 16] = 200
    moved = augment(image, gen, Variation(gain=0.0, offset=0.0, blur=0.0, noise=0.0, shift=VAE.shift))
    ys, xs = torch.nonzero(moved[0, 0] == 200, as_tuple=True)
    assert len(ys) == 1 and max(abs(int(ys[0]) - 16), abs(int(xs[0]) - 16)) <= VAE.shift


# --- the loop ------------------------------------------------------------------------------------------------


def _tiny_fit(tmp_path: Path, scores: list[float], max_epochs: int, resume: bool = False, key: str = "k"):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x, y = torch.randn(64, 2), torch.randn(64, 1)
    seen = iter(scores)
    calls = []

    def step(idx, gen, number):
        calls.append(number)
        return ((model(x[idx]) - y[idx]) ** 2).mean()

    groups = [{"params": list(model.parameters()), "lr": 0.01}]
    batches = lambda rng: [rng.permutation(64)[:32], rng.permutation(64)[:32]]  # noqa: E731
    result = fit("tiny", model, groups, batches, step, lambda: next(seen), Schedule(max_epochs, 2, 0.01, key),
                 tmp_path / "tiny.ckpt", seed=1, resume=resume)  # fmt: skip
    return model, result, calls


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(tmp_path):
    model, (best, epoch), calls = _tiny_fit(tmp_path, [0.5, 0.9, 0.7, 0.6, 0.95, 0.99], max_epochs=6)
    assert (best, epoch) == (0.9, 2) and len(calls) == 2 * 4  # epochs 3 and 4 did not beat epoch 2: stopped
    saved = torch.load(tmp_path / "tiny.ckpt", weights_only=False)
    assert saved["epoch"] == 4 and saved["best_epoch"] == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved["best_state"].values()))


def test_resume_continues_after_the_last_epoch_and_ignores_another_datas_checkpoint(tmp_path):
    _tiny_fit(tmp_path, [0.1, 0.2], max_epochs=2)  # a run of 2 epochs of a 4-epoch schedule, "interrupted"
    saved = torch.load(tmp_path / "tiny.ckpt", weights_only=False)
    saved["scheduler"]["total_steps"] = 8  # as if the schedule had been for 4 epochs
    torch.save(saved, tmp_path / "tiny.ckpt")
    _, (best, epoch), calls = _tiny_fit(tmp_path, [0.3, 0.25], max_epochs=4, resume=True)
    assert calls == [4, 5, 6, 7] and (best, epoch) == (0.3, 3)  # epochs 3 and 4 only, step numbers continued
    _, _, calls = _tiny_fit(tmp_path, [0.1, 0.2, 0.3, 0.4], max_epochs=4, resume=True, key="other data")
    assert calls[0] == 0 and len(calls) == 8  # another key: trained from the start


# --- figures on test -----------------------------------------------------------------------------------------


def test_figures_find_the_class_told_apart_only_with_the_log_and_report_per_tool():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 5)
    eye = np.eye(3, dtype=np.float32)
    probs = eye[labels]
    no_log = eye[np.where(labels == 1, 0, labels)]  # without the log, HAZE is called GOOD
    tool = np.array([0, 1] * 10)
    figs = classifier_figures(probs, no_log, labels, CLASSES, {"tool": (("T1", "T2"), tool)})
    assert figs["macro_f1"] == 1.0 and figs["log_dependent_classes"] == ["HAZE"]
    assert figs["without_process_log"]["escape_rate"] == 0.5 and figs["recall_drop_without_log"]["HAZE"] == 1.0
    assert set(figs["per"]["tool"]) == {"T1", "T2"} and figs["per"]["tool"]["T1"]["n"] == 10
    twins = eye[labels]  # HAZE found either way, but without the log 4 GOOD dies (its cosmetic twins) are called it
    twins_no_log = twins.copy()
    twins_no_log[:4] = eye[1]
    figs = classifier_figures(twins, twins_no_log, labels, CLASSES, {})
    assert figs["recall_drop_without_log"]["HAZE"] == 0.0 and figs["log_dependent_classes"] == ["HAZE"]
    assert figs["good_called_with_and_without_log"] == {"HAZE": (0, 4), "SCRATCH": (0, 0)}
    assert figs["per_class_precision"]["GOOD"] == 1.0 and figs["support"] == {"GOOD": 10, "HAZE": 5, "SCRATCH": 5}
    scores = np.where(labels == 2, 5.0, np.where(labels == 1, 0.5, 1.0)).astype(np.float32)
    scores[:10] = np.linspace(0.0, 1.0, 10)
    anomaly = anomaly_figures(scores, labels, CLASSES, {"pass_band": 1.5, "reject_band": 3.0}, ["HAZE"])
    assert anomaly["auroc"] == 1.0 and anomaly["auroc_all_defects"] < 1.0 and anomaly["auroc_leaves_out"] == ["HAZE"]
    assert anomaly["per_class_at_or_above_pass"] == {"GOOD": 0.0, "HAZE": 0.0, "SCRATCH": 1.0}


# --- data digest, station fragment -----------------------------------------------------------------------------


def test_the_data_digest_follows_content_not_place(tmp_path):
    a, _ = load(make_folder(tmp_path / "a"))
    b, _ = load(make_folder(tmp_path / "b"))
    assert data_digest(a) == data_digest(b)
    first = a.dies[0].path
    first.write_bytes(first.read_bytes() + b"\0")  # one byte more in one image
    assert data_digest(a) != data_digest(b)


def test_the_station_fragment_is_config_the_daemon_accepts(tmp_path):
    data, _ = load(make_folder(tmp_path))
    text = fab_train.station_fragment(data, 7)
    assert "resize = true" in text and "16x16" in text  # the folder's dies are 16x16, not the models' 256x256
    fragment = tomllib.loads(text)
    assert fragment["decision"]["classes"] == ["GOOD", "PARTICLE", "SCRATCH"]
    assert fragment["recipes"] == {"R1": {"parameters": ["dose", "temp"]}}
    cfg = Config.model_validate({**fragment, "tools": [{"id": "AOI-1"}]})
    assert cfg.recipes["R1"].parameters == ("dose", "temp") and cfg.decision.classes[1:] == ("PARTICLE", "SCRATCH")


def test_training_refuses_a_broken_folder_before_anything_runs(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    (root / "images" / "train" / "GOOD" / "w0-GOOD-0.png").unlink()
    out = tmp_path / "repository"
    assert fab_train.main(["--data", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "refuse this data set" in err and "w0-GOOD-0.png" in err
    assert not out.exists() and not (tmp_path / "repository-training").exists()


def test_a_spread_of_no_seed_is_refused_as_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        fab_train.main(["--data", str(tmp_path), "--out", str(tmp_path / "repository"), "--spread", "0"])
    assert exit_.value.code == 2 and "--spread: at least 1 seed" in capsys.readouterr().err


# --- the repository version ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [SOURCE, GPU_SOURCE], ids=["cpu", "gpu"])
def test_configs_take_the_models_own_dims_in_every_place_they_appear(source):
    text = shaped((source / "classifier" / "config.pbtxt").read_text(), {"PROCESS": (12,), "PROBS": (6,)})
    assert "dims: [ 48 ]" not in text and "dims: [ 16 ]" not in text
    assert '{ name: "PROCESS", data_type: TYPE_FP32, dims: [ 12 ] }' in text
    assert '{ name: "PROBS", data_type: TYPE_FP32, dims: [ 6 ] }' in text
    with pytest.raises(Exception, match="no tensor SCORES"):
        shaped(text, {"SCORES": (1,)})


def stand_in_forms(models: Path) -> None:
    """Stand-in ONNX files (the writer copies bytes; serving them is the e2e test's) with a gate report."""
    models.mkdir()
    report: dict = {"models": {}}
    for name in ("anomaly", "classifier"):
        for form in ("fp32", "fp16", "int8"):
            path = onnx_path(models, name, form)
            path.write_bytes(f"{name} {form}".encode())
            gate = {"passed": form != "int8", "failures": [] if form != "int8" else ["accuracy 0.9 -> 0.8"]}
            report["models"].setdefault(name, {})[form] = {"sha256": sha256(path), "gate": gate}
    (models / REPORT).write_text(json.dumps(report))


def test_a_version_is_written_beside_the_old_ones_with_its_contract(tmp_path):
    repo, models, report = tmp_path / "repo", tmp_path / "models", tmp_path / "report"
    (repo / "anomaly" / "1").mkdir(parents=True)
    (repo / "classifier" / "3").mkdir(parents=True)
    (repo / "classifier" / "3" / "model.onnx").write_bytes(b"old")
    stand_in_forms(models)
    report.mkdir()
    (report / "card.md").write_text("# card\n")
    version = next_version(repo)
    assert version == 4
    contract = {"data_digest": "abc", "version": "4"}
    parameters = {
        "anomaly": {"pass_band": "0.1", "reject_band": "0.2", **contract},
        "classifier": {"classes": '["GOOD","HAZE"]', "process_parameters": '["bake_temp_c"]', **contract},
    }
    dims = {"anomaly": {}, "classifier": {"PROCESS": (1,), "PROBS": (2,)}}
    served = write_version(repo, models, version, parameters, dims, report, {"classifier": "int8"})
    assert "falling back to fp16" in served["classifier"]  # the INT8 form missed its gate on the fab's dies
    assert (repo / "classifier" / "3" / "model.onnx").read_bytes() == b"old"
    assert (repo / "classifier" / "4" / "model.onnx").read_bytes() == b"classifier fp16"
    assert (repo / "anomaly" / "4" / "model.onnx").read_bytes() == b"anomaly fp32"
    for name in ("anomaly", "classifier"):
        top = (repo / name / "config.pbtxt").read_text()
        own = (repo / name / "4" / "config.pbtxt").read_text()
        assert own_config(top) == own  # the model-level config is version 4's, with its facts by version beside
        declared = facts_for(config_parameters(top), "4")
        assert declared == config_parameters(own) and declared["digest"] == digest(repo / name / "4")
        version_dir = repo / name / "4"
        assert (version_dir / "report" / "card.md").is_file() and (version_dir / "gpu" / "config.pbtxt").is_file()
        forms = sorted(p.name for p in (version_dir / "forms").iterdir())
        assert forms == sorted([f"{name}.onnx", f"{name}.fp16.onnx", f"{name}.int8.onnx", REPORT])
    params = config_parameters((repo / "classifier" / "config.pbtxt").read_text())
    assert contract_from(params).classes == ("GOOD", "HAZE") and params["data_digest"] == "abc"
    assert params["precision"] == "fp16" and "accuracy" in params["precision_fallback"]
    assert bands_from(config_parameters((repo / "anomaly" / "config.pbtxt").read_text())) is not None
    assert "dims: [ 2 ]" in (repo / "classifier" / "4" / "gpu" / "config.pbtxt").read_text()
    with pytest.raises(Exception, match="never overwritten"):
        write_version(repo, models, version, parameters, dims, report, {})
    assert next_version(repo) == 5 and not list(repo.glob("*/*.partial"))


# --- the served graphs ---------------------------------------------------------------------------------------


def test_the_served_classifier_reads_the_same_residual_it_was_trained_with():
    """Training stacks a precomputed residual channel; the served graph computes it from the image itself. On grey
    dies (R = G = B) both give the same input, so the same probabilities."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 1, 256, 256), dtype=np.uint8)
    graph, bands = anomaly.calibrate(ConvVAE().eval(), rng.integers(0, 256, (8, 1, 256, 256), dtype=np.uint8))
    assert bands["pass_band"] < bands["reject_band"] and graph.scale.min() > 0
    n = len(grey)
    data = Arrays(ids=("a", "b", "c"), images=np.repeat(grey, 3, axis=1), grey=grey, labels=np.zeros(n, np.int64),
                  process=rng.normal(size=(n, 5)).astype(np.float32), present=np.ones((n, 2), np.float32),
                  notes=np.zeros((n, 32), np.int64), tool=np.zeros(n, np.int64), recipe=np.zeros(n, np.int64),
                  tools=("T",), recipes=("R",))  # fmt: skip
    four = classifier.with_residual(data, graph)
    assert four.images.shape == (n, classifier.CHANNELS, 256, 256) and four.images[:, 3].any()
    model = classifier.build(3, 5).eval()
    trained_view, _ = classifier.predict(model, four)
    served = classifier.ResidualClassifierExport(graph, model)
    with torch.no_grad():
        probs, attention = served(*(torch.from_numpy(a) for a in (data.images, data.process, data.present, data.notes)))
    assert probs.shape == (n, 3) and attention.shape == (n, 64)
    assert np.allclose(probs.numpy(), trained_view, atol=1e-5)
    blind = replace(four, images=four.images.copy())
    blind.images[:, 3:] = 0  # without the residual maps the classifier sees something else
    assert not np.allclose(classifier.predict(model, blind)[0], trained_view, atol=1e-5)


def test_the_signed_difference_shows_polarity_only_where_the_die_departs_from_good():
    """The second residual map is 128 (no difference; 127 by rounding at most) wherever the first is 0, and
    elsewhere on the side of 128 that the die is of its reconstruction: brighter above, darker below."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    graph, _ = anomaly.calibrate(ConvVAE().eval(), rng.integers(0, 256, (8, 1, 256, 256), dtype=np.uint8))
    grey = torch.from_numpy(rng.integers(0, 256, (4, 1, 256, 256), dtype=np.uint8)).float()
    with torch.no_grad():
        where, how = anomaly.residual_channel(graph, grey).unbind(1)
        recon, _ = graph.reconstruct(grey / 255.0)
    assert where.min() >= 0 and where.max() <= 255 and how.min() >= 0 and how.max() <= 255
    quiet = where == 0
    assert quiet.any() and (~quiet).any() and (how[quiet] - 128).abs().max() <= 1
    difference = (grey / 255.0 - recon)[:, 0]
    shown = ((how - 128).abs() > 1) & (difference.abs() > 0.01)
    assert shown.any() and torch.all((how[shown] > 128) == (difference[shown] > 0))


def test_early_stopping_weighs_every_class_alike():
    labels = np.array([0] * 98 + [1] * 2)
    sure = np.tile([[0.99, 0.01]], (100, 1)).astype(np.float32)  # every die called GOOD, confidently
    nll = classifier.balanced_nll(sure, labels)
    assert nll == pytest.approx((-np.log(0.99) - np.log(0.01)) / 2)  # the 2 missed dies weigh half, not 2%
    hedged = sure.copy()
    hedged[98:] = [0.4, 0.6]
    assert classifier.balanced_nll(hedged, labels) < nll

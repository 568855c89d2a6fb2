"""The seed spread: current seed folders are reused rather than retrained, and every figure is summarised per form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import provenance
from tools.precision_gate import REPORT
from tools.reports import seed_spread


def _measured(folder: Path, seed: int, escape: float, int8_passed: bool = True, digest: str | None = None) -> None:
    """A folder as ``tools.train`` + ``tools.quantize`` leave it, with made-up figures."""
    folder.mkdir(parents=True)
    record = {"code_digest": digest or provenance.code_digest(), "budget": "full", "seed": seed}
    (folder / provenance.RECORD).write_text(json.dumps(record))
    anomaly = {"auroc": 0.999, "fnr_at_fpr_5pct": 0.002, "good_at_or_above_pass_band": 0.01, "band_changes": 0.0}
    classifier = {"accuracy": 0.98, "macro_f1": 0.98, "escape_rate": escape, "false_positive_rate": 0.03,
                  "top1_changes": 0.0}  # fmt: skip
    gate = {p: {"passed": int8_passed or p != "int8"} for p in ("fp32", "fp16", "int8")}
    forms = {
        name: {p: {"metrics": figures, "gate": gate[p]} for p in gate}
        for name, figures in (("anomaly", anomaly), ("classifier", classifier))
    }
    (folder / REPORT).write_text(json.dumps({"data": {"heldout": 960}, "models": forms}))


def test_current_folders_are_summarised_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _measured(tmp_path / "reference", 1, 0.004)
    _measured(tmp_path / "seeds" / "seed-2", 2, 0.006, int8_passed=False)
    _measured(tmp_path / "seeds" / "seed-3", 3, 0.008)
    monkeypatch.setattr(seed_spread, "train_seed", lambda *a: pytest.fail(f"retrained {a}"))
    argv = ["--seeds", "1", "2", "3", "--out", str(tmp_path / "seeds"), "--reference", str(tmp_path / "reference")]
    assert seed_spread.main(argv) == 0
    result = json.loads((tmp_path / "seeds" / seed_spread.SPREAD).read_text())
    assert result["seeds"] == [1, 2, 3] and result["code_digest"] == provenance.code_digest()
    escape = result["models"]["classifier"]["int8"]["figures"]["escape_rate"]
    assert escape["values"] == [0.004, 0.006, 0.008] and escape["mean"] == pytest.approx(0.006)
    assert escape["sd"] == pytest.approx(0.002) and (escape["min"], escape["max"]) == (0.004, 0.008)
    assert result["models"]["classifier"]["int8"]["gate_passed"] == "2/3"
    assert result["models"]["anomaly"]["fp32"]["gate_passed"] == "3/3"


def test_a_folder_from_other_code_or_another_seed_is_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _measured(tmp_path / "seeds" / "seed-4", 4, 0.004, digest="0" * 64)
    _measured(tmp_path / "seeds" / "seed-5", 4, 0.004)  # a copy of seed 4's folder under seed 5's name
    trained = []

    def fake_train(folder: Path, seed: int, quick: bool) -> None:
        trained.append(seed)
        (folder / provenance.RECORD).write_text(
            json.dumps(
                {
                    **json.loads((folder / provenance.RECORD).read_text()),
                    "code_digest": provenance.code_digest(),
                    "seed": seed,
                }
            )
        )

    monkeypatch.setattr(seed_spread, "train_seed", fake_train)
    assert seed_spread.main(["--seeds", "4", "5", "--out", str(tmp_path / "seeds"), "--reference", str(tmp_path)]) == 0
    assert trained == [4, 5]

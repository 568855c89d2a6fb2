"""Assemble the served CPU model repository from `model_repository/cpu/` and the trained ONNX files.

    python -m tools.build_repository --models build/models --out build/model_repository

For each model: `<out>/<name>/config.pbtxt` (the anomaly config gets `pass_band` / `reject_band` from
`<models>/anomaly_metrics.json`) and `<out>/<name>/1/{model.py, ort_model.py, model.onnx}`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.errors import ModelRepositoryError

MODELS = ("anomaly", "classifier")
SOURCE = Path(__file__).resolve().parents[1] / "model_repository" / "cpu"
SHARED_MODULE = "ort_model.py"
VERSION = "1"


def band_parameters(metrics: Mapping[str, Any]) -> dict[str, float]:
    """`pass_band` and `reject_band` from the anomaly metrics; finite floats with pass < reject."""
    try:
        bands = {key: float(metrics[key]) for key in ("pass_band", "reject_band")}
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelRepositoryError(f"anomaly metrics need float pass_band and reject_band: {exc!r}") from exc
    if not all(math.isfinite(v) for v in bands.values()) or not bands["pass_band"] < bands["reject_band"]:
        raise ModelRepositoryError(f"anomaly bands must be finite with pass_band < reject_band: {bands}")
    return bands


def config_text(base: str, parameters: Mapping[str, float]) -> str:
    """`base` config.pbtxt text with one `parameters` entry appended per item (Triton wants string values)."""
    lines = [base.rstrip("\n")]
    for key, value in parameters.items():
        lines.append(f'parameters {{ key: "{key}", value: {{ string_value: "{value!r}" }} }}')
    return "\n".join(lines) + "\n"


def model_parameters(name: str, models: Path) -> dict[str, float]:
    """Config parameters a model carries: the anomaly bands from `<models>/anomaly_metrics.json`."""
    if name != "anomaly":
        return {}
    metrics = models / "anomaly_metrics.json"
    if not metrics.is_file():
        raise ModelRepositoryError(f"{metrics} is missing: it holds the anomaly decision bands")
    return band_parameters(json.loads(metrics.read_text()))


def build_model(name: str, source: Path, models: Path, out: Path) -> Path:
    """Write `<out>/<name>` afresh from `<source>/<name>` and `<models>/<name>.onnx`."""
    onnx = models / f"{name}.onnx"
    if not onnx.is_file():
        raise ModelRepositoryError(f"{onnx} is missing: train and export the models first")
    parameters = model_parameters(name, models)
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    (target / VERSION).mkdir(parents=True)
    (target / "config.pbtxt").write_text(config_text((source / name / "config.pbtxt").read_text(), parameters))
    shutil.copyfile(source / name / "model.py", target / VERSION / "model.py")
    shutil.copyfile(source / SHARED_MODULE, target / VERSION / SHARED_MODULE)
    shutil.copyfile(onnx, target / VERSION / "model.onnx")
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI: build every model of `MODELS`; exit code 1 with a message when an input is missing or bad."""
    parser = argparse.ArgumentParser(description="Assemble the served CPU model repository.")
    parser.add_argument("--models", type=Path, default=Path("build/models"), help="trained ONNX files and metrics")
    parser.add_argument("--out", type=Path, default=Path("build/model_repository"), help="repository to write")
    parser.add_argument("--source", type=Path, default=SOURCE, help="config.pbtxt and model.py per model")
    args = parser.parse_args(argv)
    try:
        for name in MODELS:
            print(f"built {build_model(name, args.source, args.models, args.out)}")
    except (ModelRepositoryError, OSError, json.JSONDecodeError) as exc:
        print(f"build_repository: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

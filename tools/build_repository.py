"""Assemble the served CPU model repository from `model_repository/cpu/` and the trained ONNX files.

    python -m tools.build_repository --models build/models --out build/model_repository \
        [--precision anomaly=fp32 classifier=fp32]

For each model: `<out>/<name>/config.pbtxt` and `<out>/<name>/1/{model.py, ort_model.py, model.onnx}`, where
`model.onnx` is the precision form asked for if it passed the precision gate (`tools.precision_gate`, on the
verdicts `tools.quantize` recorded), else the form it falls back to. The config carries the model's facts as
parameters: the anomaly bands (`pass_band` / `reject_band` from `<models>/anomaly_metrics.json`) and the precision
served, asked for and why they differ (`precision`, `precision_requested`, `precision_fallback`); and the
classifier's contract, its classes (output order) and process parameters (input order) as JSON lists (`classes`,
`process_parameters`), which the daemon checks its configuration against. The reference models are trained on the
synthetic fab's taxonomy and process log (`edge.taxonomy`, `edge.process_params`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.errors import ModelRepositoryError
from edge.process_params import DEFAULT_PARAMETERS
from edge.taxonomy import DEFAULT_CLASSES
from tools.precision_gate import Choice, choose_precision, load_report, onnx_path, parse_precisions

MODELS = ("anomaly", "classifier")
SOURCE = Path(__file__).resolve().parents[1] / "model_repository" / "cpu"
SHARED_MODULE = "ort_model.py"
VERSION = "1"
DEFAULT_PRECISION = {"anomaly": "fp32", "classifier": "fp32"}  # ONNX Runtime on the CPU: FP32 is its fast path


def band_parameters(metrics: Mapping[str, Any]) -> dict[str, float]:
    """`pass_band` and `reject_band` from the anomaly metrics; finite floats with pass < reject."""
    try:
        bands = {key: float(metrics[key]) for key in ("pass_band", "reject_band")}
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelRepositoryError(f"anomaly metrics need float pass_band and reject_band: {exc!r}") from exc
    if not all(math.isfinite(v) for v in bands.values()) or not bands["pass_band"] < bands["reject_band"]:
        raise ModelRepositoryError(f"anomaly bands must be finite with pass_band < reject_band: {bands}")
    return bands


def _string(value: float | str) -> str:
    """A parameter value as a protobuf text string literal: floats by repr, text with quotes and backslashes escaped."""
    text = repr(value) if isinstance(value, float) else " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace('"', '\\"')


def config_text(base: str, parameters: Mapping[str, float | str]) -> str:
    """`base` config.pbtxt text with one `parameters` entry appended per item (Triton wants string values)."""
    lines = [base.rstrip("\n")]
    for key, value in parameters.items():
        lines.append(f'parameters {{ key: "{key}", value: {{ string_value: "{_string(value)}" }} }}')
    return "\n".join(lines) + "\n"


def config_parameters(text: str) -> dict[str, str]:
    """The string parameters of config.pbtxt text, unescaped (as Triton hands them to the daemon): `config_text`'s
    inverse."""
    found = re.findall(r'parameters \{ key: "([^"]+)", value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}', text)
    return {key: re.sub(r"\\(.)", r"\1", value) for key, value in found}


def model_parameters(name: str, models: Path, choice: Choice | None = None) -> dict[str, float | str]:
    """Config parameters a model carries: the anomaly bands from `<models>/anomaly_metrics.json`, the classifier's
    contract and, given the precision ``choice``, the precision served (with what was asked and why they differ)."""
    parameters: dict[str, float | str] = {}
    if name == "anomaly":
        metrics = models / "anomaly_metrics.json"
        if not metrics.is_file():
            raise ModelRepositoryError(f"{metrics} is missing: it holds the anomaly decision bands")
        parameters.update(band_parameters(json.loads(metrics.read_text())))
    if name == "classifier":
        parameters.update(contract_parameters(DEFAULT_CLASSES, DEFAULT_PARAMETERS))
    if choice is not None:
        parameters.update(choice.parameters())
    return parameters


def contract_parameters(classes: Sequence[str], process_parameters: Sequence[str]) -> dict[str, str]:
    """The classifier's contract as config parameters: JSON lists of names, in the model's output / input order."""
    return {"classes": json.dumps(list(classes), separators=(",", ":")),
            "process_parameters": json.dumps(list(process_parameters), separators=(",", ":"))}  # fmt: skip


def served_precision(name: str, models: Path, requested: str) -> Choice:
    """The precision form of ``name`` to serve: ``requested`` if it passed the gate, else its fallback."""
    if not onnx_path(models, name, "fp32").is_file():
        raise ModelRepositoryError(f"{onnx_path(models, name, 'fp32')} is missing: train and export the models first")
    try:
        report = load_report(models)
    except (OSError, ValueError) as exc:
        raise ModelRepositoryError(f"cannot read the precision report in {models}: {exc}") from exc
    return choose_precision(name, requested, report, lambda precision: onnx_path(models, name, precision))


def build_model(name: str, source: Path, models: Path, out: Path, precision: str = "fp32") -> tuple[Path, Choice]:
    """Write `<out>/<name>` afresh from `<source>/<name>` and the served precision form of `<models>/<name>`."""
    choice = served_precision(name, models, precision)
    parameters = model_parameters(name, models, choice)
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    (target / VERSION).mkdir(parents=True)
    (target / "config.pbtxt").write_text(config_text((source / name / "config.pbtxt").read_text(), parameters))
    shutil.copyfile(source / name / "model.py", target / VERSION / "model.py")
    shutil.copyfile(source / SHARED_MODULE, target / VERSION / SHARED_MODULE)
    shutil.copyfile(onnx_path(models, name, choice.served), target / VERSION / "model.onnx")
    return target, choice


def main(argv: list[str] | None = None) -> int:
    """CLI: build every model of `MODELS`; exit code 1 with a message when an input is missing or bad."""
    parser = argparse.ArgumentParser(description="Assemble the served CPU model repository.")
    parser.add_argument("--models", type=Path, default=Path("build/models"), help="trained ONNX files and metrics")
    parser.add_argument("--out", type=Path, default=Path("build/model_repository"), help="repository to write")
    parser.add_argument("--source", type=Path, default=SOURCE, help="config.pbtxt and model.py per model")
    parser.add_argument("--precision", nargs="*", default=[], metavar="MODEL=PRECISION", help="fp32, fp16 or int8")
    args = parser.parse_args(argv)
    try:
        precisions = parse_precisions(args.precision, DEFAULT_PRECISION)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        for name in MODELS:
            target, choice = build_model(name, args.source, args.models, args.out, precisions[name])
            print(f"built {target} ({choice.log_line(name)})", file=sys.stderr if choice.fallback else sys.stdout)
    except (ModelRepositoryError, OSError, json.JSONDecodeError) as exc:
        print(f"build_repository: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Assemble the served CPU model repository from `model_repository/cpu/` and the trained ONNX files, as a new
numbered version beside the ones already there (never overwriting one).

    python -m tools.build_repository --models build/models --out build/model_repository \
        [--precision anomaly=fp32 classifier=fp32]

For each model: `<out>/<name>/<N>/{config.pbtxt, model.py, ort_model.py, model.onnx}` and the model-level
`<out>/<name>/config.pbtxt` (`edge.models.repository`), N one more than the highest version of either model. When
both models come out byte for byte as the newest version already there, nothing is written. `model.onnx` is the
precision form asked for if it passed the precision gate (`tools.precision_gate`, on the verdicts `tools.quantize`
recorded), else the form it falls back to. The version's config carries its facts as parameters: its number and
digest (`version`, `digest`: sha256 of the files Triton loads), the training data's digest (`data_digest`, from the
provenance `tools.train` records), the anomaly bands (`pass_band` / `reject_band` from
`<models>/anomaly_metrics.json`), the precision served, asked for and why they differ (`precision`,
`precision_requested`, `precision_fallback`); and the classifier's contract, its classes (output order) and process
parameters (input order) as JSON lists (`classes`, `process_parameters`), which the daemon checks its configuration
against. The reference models are trained on the synthetic fab's taxonomy and process log (`edge.taxonomy`,
`edge.process_params`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.errors import ModelRepositoryError
from edge.models.pbtxt import config_parameters, config_text
from edge.models.repository import CONFIG, DIGEST, VERSION, digest, next_version, pairs, publish, seal
from edge.process_params import DEFAULT_PARAMETERS
from edge.taxonomy import DEFAULT_CLASSES
from tools.embedding_output import declared, write_with_embedding
from tools.precision_gate import Choice, choose_precision, load_report, onnx_path, parse_precisions
from tools.provenance import read as read_provenance

MODELS = ("anomaly", "classifier")
SOURCE = Path(__file__).resolve().parents[1] / "model_repository" / "cpu"
SHARED_MODULE = "ort_model.py"
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


def data_parameters(models: Path) -> dict[str, str]:
    """What the reference models were trained on: the digest of the synthetic data recipe `tools.train` recorded."""
    provenance = read_provenance(models)
    if provenance is None or "data_recipe_digest" not in provenance:
        return {}
    return {"data_digest": str(provenance["data_recipe_digest"]),
            "trained_on": f"synthetic reference data, seed {provenance.get('seed', '?')}"}  # fmt: skip


def build_model(
    name: str, source: Path, models: Path, out: Path, version: int, precision: str = "fp32"
) -> tuple[Path, Choice]:
    """Stage version ``version`` of `<out>/<name>` as `<out>/<name>/<version>.partial` from `<source>/<name>` and the
    served precision form of `<models>/<name>`; its own config carries the model's facts."""
    choice = served_precision(name, models, precision)
    parameters = {**model_parameters(name, models, choice), **data_parameters(models)}
    partial = out / name / f"{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    embedding = served_onnx(name, onnx_path(models, name, choice.served), partial / "model.onnx")
    config = declared(config_text((source / name / "config.pbtxt").read_text(), parameters), embedding)
    (partial / "config.pbtxt").write_text(config)
    shutil.copyfile(source / name / "model.py", partial / "model.py")
    shutil.copyfile(source / SHARED_MODULE, partial / SHARED_MODULE)
    return partial, choice


def served_onnx(name: str, source: Path, target: Path) -> bool:
    """Copy the ONNX form Triton serves; the classifier's gains its ``EMBEDDING`` output (``tools.embedding_output``)
    where its graph allows. Whether the served form has it (its config declares it only then: ``declared``)."""
    if name == "classifier":
        return write_with_embedding(source, target)
    shutil.copyfile(source, target)
    return False


def same_build(built: Path, staged: Path) -> bool:
    """Whether a staged version is the one already built: the same files and the same facts."""
    if not (built / CONFIG).is_file() or digest(built) != digest(staged):
        return False
    ignored = (VERSION, DIGEST)
    facts = [{k: v for k, v in config_parameters((d / CONFIG).read_text()).items() if k not in ignored}
             for d in (built, staged)]  # fmt: skip
    return facts[0] == facts[1]


def build(source: Path, models: Path, out: Path, precisions: Mapping[str, str]) -> tuple[int, bool, dict[str, Choice]]:
    """Build every model of `MODELS` as one new version of `out`: (its number, whether it is new, the precision
    choices). A build identical to the newest version already there leaves the repository as it was."""
    existing = pairs(out, MODELS)
    version = next_version(out, MODELS)
    staged = {name: build_model(name, source, models, out, version, precisions[name]) for name in MODELS}
    if existing and all(same_build(out / name / str(existing[-1]), partial) for name, (partial, _) in staged.items()):
        for partial, _ in staged.values():
            shutil.rmtree(partial)
        return existing[-1], False, {name: choice for name, (_, choice) in staged.items()}
    for partial, _ in staged.values():
        seal(partial, version)
    publish(out, MODELS)
    return version, True, {name: choice for name, (_, choice) in staged.items()}


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
        version, new, choices = build(args.source, args.models, args.out, precisions)
    except (ModelRepositoryError, OSError, json.JSONDecodeError) as exc:
        print(f"build_repository: {exc}", file=sys.stderr)
        return 1
    for name, choice in choices.items():
        print(f"{name} {choice.log_line(name)}", file=sys.stderr if choice.fallback else sys.stdout)
    state = "built as a new version" if new else "unchanged: the newest version is the same build"
    print(f"{args.out}: version {version} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

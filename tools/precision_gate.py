"""Which precision form of a model may be served: every form is judged on its measured change against FP32 on the
same held-out dies, under the tolerances stated here and nowhere else, and a form that misses falls back.

    python -m tools.precision_gate --models build/models    # print each form's verdict and what would be served

``tools.quantize`` measures the forms and records each verdict in ``precision_metrics.json`` together with the
SHA-256 of the file it measured; the CPU repository (``tools.build_repository``) and a GPU station's engine build
(``tools.build_engines``) call :func:`choose_precision` on that report, so a form is installed only when the very
file being installed passed. A miss falls back along ``FALLBACK`` (INT8 to FP16 to FP32, the reference, which
always passes) and the reason travels with the served model (config parameters ``precision``,
``precision_requested``, ``precision_fallback``), so the build log, the model card and the daemon's ``/readyz`` say
the same thing. Pure functions over the report's dicts, apart from ``main``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PRECISIONS = ("fp32", "fp16", "int8")
FALLBACK = {"int8": "fp16", "fp16": "fp32"}  # what a form that misses the gate falls back to
REPORT = "precision_metrics.json"


@dataclass(frozen=True)
class Limit:
    """How far one held-out figure of a form may move from FP32 in the direction that is worse."""

    metric: str
    worse: Literal["rise", "drop"]
    tolerance: float
    why: str

    def excess(self, fp32: float, form: float) -> float:
        """How far past the tolerance ``form`` is (positive: the form misses)."""
        change = form - fp32 if self.worse == "rise" else fp32 - form
        return change - self.tolerance


# The tolerances, per model, against FP32 on the held-out dies (tools.quantize measures on the full held-out split:
# ~800 defect dies and ~160 GOOD dies in the mixed set, 480 more GOOD dies for the anomaly negatives). Each
# tolerance spans a few dies at those sizes, so one near-tie flipping does not fail a form, while a collapsed form
# (tens of points) fails by an order of magnitude. The label-free paired figures (top-class and band changes) catch
# a broken form even where the labelled figures happen to stay put.
TOLERANCES: dict[str, tuple[Limit, ...]] = {
    "classifier": (
        Limit("accuracy", "drop", 0.01, "1 point: about 10 of 960 held-out dies"),
        Limit("escape_rate", "rise", 0.005, "0.5 point: 4 of ~800 defect dies; the case-study target is < 1%"),
        Limit("false_positive_rate", "rise", 0.02, "2 points: 3 of ~160 GOOD dies"),
        Limit("top1_changes", "rise", 0.02, "top class differs from FP32's on at most 2% of dies"),
    ),
    "anomaly": (
        Limit("fnr_at_fpr_5pct", "rise", 0.004, "0.4 point: 3 of ~750 defect dies; the target is < 0.5%"),
        Limit("auroc", "drop", 0.005, "0.005 of AUROC"),
        Limit("band_changes", "rise", 0.01, "PASS / between / REJECT (FP32 bands) differs from FP32 on <= 1%"),
    ),
}


@dataclass(frozen=True)
class Choice:
    """The form served for one model: what was asked, what is served, and why they differ (None when they don't)."""

    requested: str
    served: str
    fallback: str | None

    def parameters(self) -> dict[str, str]:
        """Config parameters the served model carries (the daemon reports them in /readyz)."""
        params = {"precision": self.served, "precision_requested": self.requested}
        if self.fallback:
            params["precision_fallback"] = self.fallback
        return params

    def log_line(self, name: str) -> str:
        if self.fallback is None:
            return f"{name}: serving {self.served}"
        return f"{name}: {self.requested} not served, falling back to {self.served}: {self.fallback}"


def judge(name: str, fp32: Mapping[str, Any], form: Mapping[str, Any]) -> list[str]:
    """Every tolerance of ``name`` that ``form``'s metrics miss against ``fp32``'s, as readable lines."""
    failures = []
    for limit in TOLERANCES[name]:
        ref, got = fp32.get(limit.metric), form.get(limit.metric)
        if ref is None or got is None:
            failures.append(f"{limit.metric} not measured")
            continue
        if limit.excess(float(ref), float(got)) > 1e-9:
            sign = "+" if limit.worse == "rise" else "-"
            failures.append(f"{limit.metric} {float(ref):.4g} -> {float(got):.4g} (allowed {sign}{limit.tolerance:g})")
    return failures


def verdict(name: str, precision: str, fp32: Mapping[str, Any], form: Mapping[str, Any]) -> dict[str, Any]:
    """The ``gate`` entry ``tools.quantize`` records for one form: passed and the tolerances it missed."""
    failures = [] if precision == "fp32" else judge(name, fp32, form)
    return {"passed": not failures, "failures": failures}


def sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _missing(report: Mapping[str, Any] | None, name: str, precision: str, onnx: Path) -> str | None:
    """Why ``onnx`` has no passing verdict in ``report`` (None: it has one)."""
    if report is None:
        return f"no {REPORT}: the form was never measured (run tools.quantize)"
    entry = report.get("models", {}).get(name, {}).get(precision)
    if entry is None:
        return f"{REPORT} has no {precision} entry for {name}"
    if not onnx.is_file():
        return f"{onnx.name} is missing"
    if entry.get("sha256") != sha256(onnx):
        return f"{onnx.name} changed since it was measured (SHA-256 differs from {REPORT})"
    gate = entry.get("gate", {})
    if not gate.get("passed", False):
        return "; ".join(gate.get("failures", [])) or "the gate did not pass it"
    return None


def choose_precision(
    name: str, requested: str, report: Mapping[str, Any] | None, onnx_of: Callable[[str], Path]
) -> Choice:
    """The form to serve for ``name``: ``requested`` if the file ``onnx_of(precision)`` passed the gate, else the
    first form along ``FALLBACK`` that did. FP32 is the reference and is always served as asked."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}: one of {PRECISIONS}")
    precision, reasons = requested, []
    while precision != "fp32":
        why = _missing(report, name, precision, onnx_of(precision))
        if why is None:
            break
        reasons.append(f"{precision}: {why}")
        precision = FALLBACK[precision]
    return Choice(requested, precision, "; ".join(reasons) or None)


def parse_precisions(items: Sequence[str], defaults: Mapping[str, str]) -> dict[str, str]:
    """``defaults`` (model -> precision) overridden by ``MODEL=PRECISION`` items; ValueError naming a bad item."""
    precisions = dict(defaults)
    for item in items:
        name, sep, precision = item.partition("=")
        if not sep or name not in defaults or precision not in PRECISIONS:
            raise ValueError(
                f"--precision takes MODEL=PRECISION, MODEL in {tuple(defaults)}, PRECISION in {PRECISIONS}: {item}"
            )
        precisions[name] = precision
    return precisions


def load_report(models: Path) -> dict[str, Any] | None:
    path = models / REPORT
    return json.loads(path.read_text()) if path.is_file() else None


def onnx_path(models: Path, name: str, precision: str) -> Path:
    """The ONNX form of ``name`` in ``precision`` (tools.export writes FP32, tools.quantize the others)."""
    return models / (f"{name}.onnx" if precision == "fp32" else f"{name}.{precision}.onnx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.precision_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"))
    args = parser.parse_args(argv)
    report = load_report(args.models)
    if report is None:
        print(f"precision_gate: {args.models / REPORT} is missing: run tools.quantize first", file=sys.stderr)
        return 1
    for name, forms in report["models"].items():
        for precision, entry in forms.items():
            gate = entry.get("gate", {})
            state = "pass" if gate.get("passed") else "FAIL " + "; ".join(gate.get("failures", []))
            print(f"{name} {precision}: {state}")
        for precision in ("int8", "fp16"):
            print(choose_precision(name, precision, report, lambda p, n=name: onnx_path(args.models, n, p))
                  .log_line(f"{name} asked {precision}"))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

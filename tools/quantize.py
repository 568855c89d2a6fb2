"""INT8 (QDQ) and FP16 forms of the two ONNX models, measured against FP32 on held-out dies and gated.

    python -m tools.quantize --models build/models [--budget full|quick] [--heldout N] [--calibration-size N]
                             [--calibration-method M]

Reads ``<name>.onnx`` for ``anomaly`` and ``classifier`` and writes, next to them:

- ``<name>.int8.onnx``: ONNX Runtime static quantisation in QDQ format (explicit QuantizeLinear/DequantizeLinear
  pairs, the form TensorRT builds INT8 engines from): symmetric INT8 activations and per-channel symmetric INT8
  weights on the weight-bearing ops (``QUANT_OPS``), calibrated on the CPU (min/max) on synthetic dies from
  ``CALIBRATION_SEED`` with the training class mix. Everything else (normalisation, the anomaly score's squared
  error, softmaxes, layer norms, the activation-by-activation MatMuls of attention) stays in FP32.
- ``<name>.fp16.onnx``: FP16 weights and compute, with ``FP16_BLOCK`` ops (numerically sensitive: raw-unit
  arithmetic, the squared error and its mean, softmax, layer norm) kept in FP32; an op ONNX Runtime cannot load in
  FP16 is added to that list rather than dropping the form.

Both keep the serving interface exactly (UINT8/INT64 inputs, FP32 inputs and outputs, same names and shapes), pass
``onnx.checker``, and must load in ONNX Runtime on the CPU. ``precision_metrics.json`` records, per model and
precision: the file's SHA-256 and size, the held-out headline metrics (the split ``tools.train`` reports on) and
their change against FP32, the paired changes (top class, anomaly band), the largest output difference, the
verdict of ``tools.precision_gate`` and CPU latency at batch 1 and 8.

INT8 runs in ONNX Runtime with ``session.x64quantprecision`` on (``session``): without it, an x86 CPU with AVX2 or
AVX-512 but no VNNI multiplies INT8 through VPMADDUBSW, whose 16-bit pair sums saturate, and the same INT8 file
loses FP32's top class on about a fifth of the dies there while it keeps it on a CPU with VNNI
(``python -m tools.kernel_check``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from edge.taxonomy import DEFAULT_CLASSES, GOOD
from tools.metrics import auroc, classification_report, decision_bands, fnr_at_fpr
from tools.precision_gate import PRECISIONS, TOLERANCES, onnx_path, sha256, verdict
from tools.synth import Dataset, grey, make_dataset
from tools.training import (
    BANDS_SEED,
    FULL,
    HELDOUT_SEED,
    HELDOUT_SHIFT,
    QUICK,
    THREADS,
    Budget,
    HeldOut,
    class_weights,
)

CALIBRATION_SEED = 3001  # neither TRAIN_SEED (1) nor the held-out seeds (1001, 2001)
MODELS = ("anomaly", "classifier")
QUANT_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]
FP16_BLOCK = ["Sub", "Div", "Abs", "Clip", "Pow", "Sigmoid", "ReduceMean", "ReduceSum", "Softmax", "LayerNormalization"]
OUTPUTS = {"anomaly": ["SCORE", "HEATMAP"], "classifier": ["PROBS", "ATTENTION"]}


def _log(msg: str) -> None:
    print(f"[quantize {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def feeds(name: str, ds: Dataset, idx: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
    """The serving inputs of ``name`` for the dies ``idx`` of ``ds`` (model_repository/README.md)."""
    if name == "anomaly":
        return {"IMAGE": grey(ds.images[idx])}
    return {
        "IMAGE": np.ascontiguousarray(ds.images[idx].transpose(0, 3, 1, 2)),
        "PROCESS": ds.process[idx],
        "PRESENT": ds.present[idx],
        "NOTES": ds.notes[idx],
    }


def input_batches(inputs: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in inputs.items()}


class _Reader(CalibrationDataReader):
    """Hands ORT's calibrator the calibration inputs a batch at a time."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = 16) -> None:
        self._batches = list(input_batches(inputs, batch))
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def session(path: Path, threads: int = THREADS) -> ort.InferenceSession:
    """An ONNX Runtime CPU session as the CPU repository serves it (``model_repository/cpu/ort_model.py``): INT8
    through the non-saturating kernels, so the figures do not depend on whether this CPU has VNNI."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _interface(model: onnx.ModelProto) -> dict[str, list]:
    def sig(values) -> list:
        return [(v.name, v.type.tensor_type.elem_type) for v in values]

    return {"inputs": sig(model.graph.input), "outputs": sig(model.graph.output)}


def _check(path: Path, reference: onnx.ModelProto) -> None:
    """onnx.checker, the serving interface unchanged, and the file loads in ONNX Runtime on the CPU.

    Shape inference in the converters pins some symbolic output dims (HEATMAP, ATTENTION); the reference's
    input/output declarations are put back so the files declare exactly the FP32 model's interface.
    """
    model = onnx.load(str(path))
    if _interface(model) == _interface(reference):
        for mine, theirs in zip(
            [*model.graph.input, *model.graph.output], [*reference.graph.input, *reference.graph.output]
        ):
            mine.type.CopyFrom(theirs.type)
        onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    if _interface(model) != _interface(reference):
        raise RuntimeError(f"{path.name} changed the serving interface: {_interface(model)}")
    session(path, threads=1)


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with no weight operand (attention scores and their mix): INT8 with one scale per tensor would
    flatten the attention probabilities, so they stay in float; the weight-bearing projections are quantised."""
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not weights & set(n.input)]


def quantize_int8(
    src: Path, dst: Path, calibration: dict[str, np.ndarray], method: CalibrationMethod = CalibrationMethod.MinMax
) -> None:
    """Static QDQ quantisation (symmetric INT8, per-channel weights) calibrated on ``calibration``."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # ONNX shapes + BN folding first
        quantize_static(
            str(pre), str(dst), _Reader(calibration), nodes_to_exclude=activation_matmuls(onnx.load(str(pre))),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANT_OPS, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )  # fmt: skip
    _check(dst, onnx.load(str(src)))


def convert_fp16(src: Path, dst: Path, block: list[str] = FP16_BLOCK, tries: int = 8) -> list[str]:
    """Mixed FP16 with FP32 I/O; returns the op types kept in FP32 (grown by any op ORT's CPU cannot run in FP16)."""
    block = list(block)
    reference = onnx.load(str(src))
    for _ in range(tries):
        model = OnnxModel(
            convert_float_to_float16(
                onnx.load(str(src)), keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + block
            )
        )
        model.topological_sort()  # the converter appends its Cast nodes at the end of the graph
        onnx.save(model.model, str(dst))
        try:
            _check(dst, reference)
            return block
        except Exception as exc:  # ORT: "Could not find an implementation for Op(version) node ..."
            missing = re.search(r"implementation for (\w+)\(", str(exc))
            if not missing or missing.group(1) in block:
                raise
            _log(f"{dst.name}: ORT CPU has no FP16 {missing.group(1)}; keeping it in FP32")
            block.append(missing.group(1))
    raise RuntimeError(f"{dst.name}: FP16 conversion still fails with block list {block}")


def run_all(
    path: Path, inputs: dict[str, np.ndarray], batch: int = 16, threads: int = THREADS
) -> dict[str, np.ndarray]:
    sess = session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    parts = [sess.run(names, b) for b in input_batches(inputs, batch)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}


def latency_ms(path: Path, inputs: dict[str, np.ndarray], batch: int, runs: int = 5, threads: int = THREADS) -> float:
    """Median wall time of ``runs`` calls at ``batch`` after one warm-up."""
    sess = session(path, threads)
    feed = {k: v[:batch] for k, v in inputs.items()}
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return round(1e3 * statistics.median(times), 2)


def heldout_inputs(name: str, held: HeldOut) -> dict[str, np.ndarray]:
    """The held-out dies ``name`` is judged on, as in ``tools.train``: the mixed set (every class) and, for the
    anomaly model's negatives, the GOOD-only set after it."""
    if name == "classifier":
        return feeds(name, held.mixed)
    return {"IMAGE": np.concatenate([grey(held.mixed.images), grey(held.good.images)])}


def bands_index(scores: np.ndarray, bands: dict) -> np.ndarray:
    """0 under the PASS band, 1 between the bands, 2 at or over the REJECT band."""
    return (scores >= bands["pass_band"]).astype(np.int8) + (scores >= bands["reject_band"])


def anomaly_headline(scores: np.ndarray, held: HeldOut, bands: dict, reference: np.ndarray) -> dict:
    """AUROC and FNR at FPR 5% on ``tools.train_anomaly``'s population (defect looks against clean dies of both
    sets, the discolouration look left out), the rates at the FP32 ``bands``, and the share of dies whose band
    differs from the one of the FP32 ``reference`` scores."""
    good, discolour = DEFAULT_CLASSES.index(GOOD), DEFAULT_CLASSES.index("DISCOLOR")
    looks = np.concatenate([held.mixed.looks, held.good.looks])
    from_good_set = np.arange(len(looks)) >= len(held.mixed.looks)
    judged = (looks != discolour) & (~from_good_set | (looks == good))
    s, defect = scores[judged], looks[judged] != good
    metrics = {"auroc": round(auroc(s, defect), 4), "fnr_at_fpr_5pct": round(fnr_at_fpr(s, defect)[0], 4)}
    for band in ("pass_band", "reject_band"):
        above = s >= bands[band]
        metrics[f"good_at_or_above_{band}"] = round(float(above[~defect].mean()), 4)
        metrics[f"defect_at_or_above_{band}"] = round(float(above[defect].mean()), 4)
    changed = bands_index(scores, bands) != bands_index(reference, bands)
    metrics["band_changes"] = round(float(changed.mean()), 4)
    return metrics


def classifier_headline(probs: np.ndarray, held: HeldOut, reference: np.ndarray) -> dict:
    """Accuracy, macro-F1, escape rate and FPR on the mixed set, and the share of dies whose top class differs from
    that of the FP32 ``reference`` PROBS."""
    report = classification_report(probs.argmax(1), held.mixed.labels, DEFAULT_CLASSES, DEFAULT_CLASSES.index(GOOD))
    metrics = {k: report[k] for k in ("accuracy", "macro_f1", "escape_rate", "false_positive_rate")}
    metrics["top1_changes"] = round(float((probs.argmax(1) != reference.argmax(1)).mean()), 4)
    return metrics


def fp32_bands(models: Path, good_scores: np.ndarray) -> dict:
    """The anomaly bands ``tools.train`` derived from the FP32 model (they travel to Triton with every form), or,
    without its metrics, the same rule applied to the FP32 scores of the held-out GOOD set."""
    path = models / "anomaly_metrics.json"
    if path.exists():
        metrics = json.loads(path.read_text())
        return {k: metrics[k] for k in ("pass_band", "reject_band")}
    return decision_bands(good_scores)


def evaluate(name: str, paths: dict[str, Path], held: HeldOut, models: Path, threads: int) -> dict:
    """Every form of ``name`` on the held-out dies: metrics, change against FP32, the gate's verdict."""
    inputs = heldout_inputs(name, held)
    results: dict[str, dict] = {}
    reference: dict[str, np.ndarray] = {}
    bands: dict = {}
    for precision, path in paths.items():
        outputs = run_all(path, inputs, threads=threads)
        if precision == "fp32":
            reference = outputs
        if name == "anomaly":
            scores = outputs["SCORE"][:, 0]
            bands = bands or fp32_bands(models, scores[len(held.mixed.labels) :])
            metrics = anomaly_headline(scores, held, bands, reference["SCORE"][:, 0])
        else:
            metrics = classifier_headline(outputs["PROBS"], held, reference["PROBS"])
        entry: dict = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size, "metrics": metrics}
        if precision != "fp32":
            ref_metrics = results["fp32"]["metrics"]
            entry["change_vs_fp32"] = {
                k: None if v is None or ref_metrics.get(k) is None else round(v - ref_metrics[k], 4)
                for k, v in metrics.items()
            }
            entry["max_abs_diff_vs_fp32"] = {
                k: float(f"{np.max(np.abs(outputs[k] - reference[k])):.4g}") for k in OUTPUTS[name]
            }
        entry["gate"] = verdict(name, precision, results["fp32"]["metrics"] if "fp32" in results else metrics, metrics)
        entry["latency_ms"] = {f"batch{b}": latency_ms(path, inputs, b, threads=threads) for b in (1, 8)}
        results[precision] = entry
    if name == "anomaly":
        results["fp32"]["bands"] = bands
    return results


def quantize_models(
    models: Path, calibration_size: int = 160, budget: Budget = FULL, threads: int = THREADS,
    names: tuple[str, ...] = MODELS, method: str = "MinMax", log: Callable[[str], None] = _log,
) -> dict:  # fmt: skip
    started = time.monotonic()
    mix = class_weights(training=True)
    calib = make_dataset(CALIBRATION_SEED, calibration_size, class_weights=mix, workers=threads)
    held = HeldOut(budget)
    log(f"{calibration_size} calibration and {len(held.mixed.labels)} + {len(held.good.labels)} held-out dies "
        f"in {time.monotonic() - started:.1f}s")  # fmt: skip
    report: dict = {
        "data": {
            "calibration_seed": CALIBRATION_SEED, "calibration": calibration_size, "calibration_shift": 0.0,
            "heldout_seed": HELDOUT_SEED, "heldout_shift": HELDOUT_SHIFT, "heldout": len(held.mixed.labels),
            "bands_seed": BANDS_SEED, "heldout_good": len(held.good.labels),
            "note": "the held-out split of tools.train: the same dies as <model>_metrics.json, run in ONNX Runtime",
        },
        "int8": {"format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric per-channel",
                 "op_types": QUANT_OPS, "calibration": f"{method} (ONNX Runtime, CPU)",
                 "runtime": "ONNX Runtime with session.x64quantprecision=1 (no 16-bit saturation without VNNI)"},
        "fp16": {"io": "unchanged (fp32/uint8/int64)"},
        "gate": {name: [asdict(limit) for limit in TOLERANCES[name]] for name in names},
        "latency": {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider", "intra_op_threads": threads,
                    "stat": "median of 5 runs after 1 warm-up"},
        "models": {},
    }  # fmt: skip
    for name in names:
        t0 = time.monotonic()
        src = models / f"{name}.onnx"
        paths = {p: onnx_path(models, name, p) for p in PRECISIONS}
        report["fp16"].setdefault("fp32_op_types", {})[name] = convert_fp16(src, paths["fp16"])
        quantize_int8(src, paths["int8"], feeds(name, calib), CalibrationMethod[method])
        log(f"{name}: fp16 and int8 written in {time.monotonic() - t0:.1f}s")
        report["models"][name] = evaluate(name, paths, held, models, threads)
        for p, r in report["models"][name].items():
            gate = "pass" if r["gate"]["passed"] else "FAIL " + "; ".join(r["gate"]["failures"])
            log(f"{name} {p}: {r['metrics']} {r['bytes'] / 1e6:.1f}MB b1={r['latency_ms']['batch1']}ms gate {gate}")
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"))
    parser.add_argument("--calibration-size", type=int, default=160)
    parser.add_argument("--budget", choices=("full", "quick"), default="full",
                        help="judge on this training budget's held-out split (the one its metrics report)")
    parser.add_argument("--heldout", type=int, help="mixed held-out dies instead of the budget's (GOOD-only: half)")
    parser.add_argument("--threads", type=int, default=THREADS, help="ONNX Runtime intra-op threads")
    parser.add_argument("--calibration-method", choices=[m.name for m in CalibrationMethod], default="MinMax")
    args = parser.parse_args(argv)
    budget = FULL if args.budget == "full" else QUICK
    if args.heldout:
        budget = dataclasses.replace(budget, heldout=args.heldout, heldout_good=max(args.heldout // 2, 1))
    report = quantize_models(args.models, args.calibration_size, budget, args.threads, method=args.calibration_method)
    (args.models / "precision_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    _log(f"done in {report['seconds']}s, {args.models / 'precision_metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

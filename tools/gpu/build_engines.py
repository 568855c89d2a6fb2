"""TensorRT engines for the GPU model repository, built on this station's GPU and checked against ONNX Runtime.

    python -m tools.gpu.build_engines --models build/models --out build/model_repository_gpu \
        [--precision anomaly=fp16 classifier=int8] [--max-batch 32] [--force] [--check] [--device 0]
    python -m tools.gpu.build_engines --repository REPO --version N --data DIR --out GPU_REPO [same options]

The second form builds the engines of version N that ``edge-inspect train`` wrote into REPO from a fab's folder: its
forms and precision report from ``REPO/<name>/N/forms/``, its GPU config (tensors and contract) from
``REPO/<name>/N/gpu/config.pbtxt``, and the plans checked on the first dies of DIR's ``test`` split (the folder it
was trained on: its classes and process parameters must be the version's) instead of the synthetic dies; plans go to
``GPU_REPO/<name>/N/`` and that version's config becomes ``GPU_REPO/<name>/config.pbtxt``.

Per model: the ONNX form of the chosen precision (``<name>.onnx``, ``<name>.fp16.onnx`` or the Q/DQ
``<name>.int8.onnx``), if it passed the precision gate on held-out dies (``tools.precision_gate``; else the form it
falls back to, said in the log and in the config's ``precision_fallback`` parameter), is parsed into a strongly
typed network (no FP16/INT8 builder flags: the types in the file
decide), with one optimisation profile (batch 1 / 16 / max) for every input. Before a plan is installed it runs on
deterministic synthetic dies at the profile's batch sizes and every output is compared with ONNX Runtime on the FP32
ONNX under the precision's tolerance. Then ``<out>/<name>/1/model.plan``, its fingerprint ``model.plan.json``
(``tools.gpu.engine_fingerprint``) and ``<out>/<name>/config.pbtxt`` from ``model_repository/gpu/`` (anomaly:
``pass_band``/``reject_band`` from ``<models>/anomaly_metrics.json``; ``backend`` "tensorrt") are written.

A model whose plan cannot be built, or does not match ONNX Runtime, is not left unserved: the very ONNX form the plan
would have been built from (with every output the config declares) is installed as ``<out>/<name>/1/model.onnx``, the
plan and its fingerprint are taken away, and the config becomes the GPU config for Triton's ONNX Runtime backend
(``platform: "onnxruntime_onnx"``: the same tensors, ``KIND_GPU`` instances, batching and warm-up) with ``backend``
"onnxruntime" and ``backend_fallback`` saying why (``engine_build_failed: ...`` or ``parity_failed: ...``). A model on
that fallback has no plan, so it is stale: the next run tries the engine again and a plan that passes replaces the
fallback.

A plan whose fingerprint matches this GPU, TensorRT and ONNX file is left alone (``--force`` rebuilds it);
``--check`` only prints why plans are stale (a fallback among them) and exits 1 if any is. Exit codes: 0 every model
serves a verified plan; 3 every model is served, at least one on its ONNX Runtime fallback (the station can start:
``systemd/edge-engines.service`` counts 3 as success); 1 a model cannot be served (an input missing or unreadable, a
fallback that could not be written), a forced rebuild failed (the current plan stays), or ``--check`` found a stale
plan; 2 TensorRT, pycuda or a CUDA GPU is missing (``tools.gpu.station_repository``, which stations run instead of
this command, serves the CPU variant where no GPU is usable). TensorRT and pycuda are
used only through ``tools.gpu.tensorrt_engine`` (imported there, lazily): this module holds the command line, the
configs, the parity rule and the order of the steps, and runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edge.errors import ModelRepositoryError
from edge.inference.model_facts import (
    ENGINE_BUILD_FAILED,
    ONNXRUNTIME_GPU,
    PARITY_FAILED,
    TENSORRT,
    contract_from,
    fallback_reason,
)
from edge.models.repository import stamped
from tools.build_repository import (
    MODELS,
    config_parameters,
    config_text,
    model_parameters,
    served_precision,
)
from tools.embedding_output import EMBEDDING, with_embedding
from tools.gpu.engine_fingerprint import (
    Fingerprint,
    fingerprint_path,
    onnx_sha256,
    recorded_state,
    stale_reasons,
    write_fingerprint,
)
from tools.gpu.tensorrt_engine import (
    EngineBuildError,
    EngineEnvironmentError,
    Gpu,
    TensorSpec,
    build_plan,
    cuda_context,
    probe_gpu,
    run_plan,
)
from tools.precision_gate import Choice, onnx_path
from tools.precision_gate import parse_precisions as _parse_precisions
from tools.synth import grey, make_dataset

SOURCE = Path(__file__).resolve().parents[2] / "model_repository" / "gpu"
PLAN = "model.plan"
VERSION = "1"  # the version folder a repository built from --models serves (a --version build: that version's)
FALLBACK_MODEL = "model.onnx"  # what Triton's ONNX Runtime backend loads from a version folder
EXIT_FALLBACK = 3  # every model served, at least one on ONNX Runtime instead of its plan
# The anomaly score is compared with absolute bands, and its INT8 form moves scores by amounts comparable to the bands
# (precision_metrics.json), FP16 by orders of magnitude less. The INT8 classifier keeps FP32's top-1 class on ~99%.
DEFAULT_PRECISION = {"anomaly": "fp16", "classifier": "int8"}
MAX_BATCH = 32  # the configs' max_batch_size
OPT_BATCH = 16  # the profile's opt batch: the daemon's usual batch under load
VERIFY_SEED = 4001  # synthetic dies used nowhere else (training 1, held-out 1001/2001, calibration 3001)
VERIFY_DIES = 64  # four dies of every class of the taxonomy
TOP1_OUTPUT = {"classifier": "PROBS"}
TENSOR = re.compile(r'\{\s*name:\s*"(\w+)",\s*data_type:\s*(\w+),\s*dims:\s*\[([\d,\s]+)\]\s*\}')
SECTION = re.compile(r"^(input|output)\s*\[(.*?)^\]", re.S | re.M)


@dataclass(frozen=True)
class Tolerance:
    """How far an engine may be from ONNX Runtime on the FP32 ONNX, per output over all verification rows."""

    relative_error: float  # largest ||engine - reference|| / ||reference||
    top1_agreement: float  # smallest share of rows with the same arg-max class (classifier PROBS)


# The FP16 and INT8 ONNX forms in ONNX Runtime, against FP32 on these dies (12 seeds): relative error up to ~0.004
# (FP16) and ~0.045 (INT8), top-1 agreement at least ~0.98 (near-ties flip). A broken engine (wrong normalisation or
# layout) is off by ~1. FP32 engines may use TF32 (~1e-3).
TOLERANCES = {
    "fp32": Tolerance(relative_error=0.01, top1_agreement=0.95),
    "fp16": Tolerance(relative_error=0.02, top1_agreement=0.90),
    "int8": Tolerance(relative_error=0.15, top1_agreement=0.85),
}


@dataclass(frozen=True)
class Parity:
    """An engine's outputs against the reference: relative error per output, top-1 agreement, what is out of bounds."""

    relative_error: dict[str, float]
    top1_agreement: float | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        parts = [f"{name} {error:.2g}" for name, error in self.relative_error.items()]
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {self.top1_agreement:.3f}")
        return "relative error " + ", ".join(parts)


# --- pure parts: arguments, paths, configs, comparison ---------------------------------------------------------------


def parse_precisions(items: Sequence[str]) -> dict[str, str]:
    """``DEFAULT_PRECISION`` overridden by ``MODEL=PRECISION`` items; ValueError naming a bad item."""
    return _parse_precisions(items, DEFAULT_PRECISION)


def profile_for(max_batch: int) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimisation profile for engines serving up to ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {max_batch}")
    return 1, min(OPT_BATCH, max_batch), max_batch


def plan_path(out: Path, name: str, version: str = VERSION) -> Path:
    return out / name / version / PLAN


def declared_tensors(config: str) -> dict[str, list[TensorSpec]]:
    """The ``input`` and ``output`` tensors of config.pbtxt text, in order (``{ name, data_type, dims }`` entries)."""
    declared: dict[str, list[TensorSpec]] = {"input": [], "output": []}
    for section, body in SECTION.findall(config):
        for name, data_type, dims in TENSOR.findall(body):
            declared[section].append(TensorSpec(name, data_type, tuple(int(d) for d in dims.split(","))))
    return declared


def with_max_batch(config: str, max_batch: int) -> str:
    """``config`` serving at most ``max_batch``: max_batch_size set, preferred and warm-up batch sizes capped."""

    def preferred(match: re.Match[str]) -> str:
        sizes = [size for size in (int(s) for s in match.group(1).split(",")) if size <= max_batch] or [max_batch]
        return f"preferred_batch_size: [ {', '.join(map(str, sizes))} ]"

    text = re.sub(r"\bmax_batch_size:\s*\d+", f"max_batch_size: {max_batch}", config)
    text = re.sub(r"\bpreferred_batch_size:\s*\[([\d,\s]+)\]", preferred, text)
    return re.sub(r"\bbatch_size:\s*(\d+)", lambda m: f"batch_size: {min(int(m.group(1)), max_batch)}", text)


def gpu_config(name: str, source: Path, models: Path, max_batch: int = MAX_BATCH, choice: Choice | None = None) -> str:
    """The served config.pbtxt of ``name``: ``<source>/<name>/config.pbtxt`` for ``max_batch``, anomaly bands and
    the precision ``choice`` added as parameters."""
    text = with_max_batch((source / name / "config.pbtxt").read_text(), max_batch)
    return config_text(text, model_parameters(name, models, choice))


def onnxruntime_config(config: str, reason: str) -> str:
    """A served GPU config (``gpu_config``, ``version_config``) for Triton's ONNX Runtime backend on the GPU instead of
    the TensorRT plan: the same tensors, instances, batching and warm-up, ``backend`` "onnxruntime" and ``reason`` as
    ``backend_fallback``."""
    text, count = re.subn(r'^platform:\s*"tensorrt_plan"', 'platform: "onnxruntime_onnx"', config, count=1, flags=re.M)
    if count != 1:
        raise ModelRepositoryError('the GPU config declares no platform: "tensorrt_plan" to replace')
    header = (
        f"# Fallback: Triton's ONNX Runtime backend serves the version folder's {FALLBACK_MODEL} on the GPU: the\n"
        "# TensorRT engine was not installed (backend_fallback says why). The next engine build tries the plan again.\n"
    )
    return header + stamped(text, {"backend": ONNXRUNTIME_GPU, "backend_fallback": reason})


def write_config(out: Path, name: str, config: str) -> Path:
    """Write ``config`` (see ``gpu_config`` and ``version_config``) as ``<out>/<name>/config.pbtxt``, atomically."""
    target = out / name / "config.pbtxt"
    target.parent.mkdir(parents=True, exist_ok=True)
    _replace(target, config.encode())
    return target


def compare_outputs(
    engine: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], tolerance: Tolerance, top1: str | None = None
) -> Parity:
    """Each reference output against the engine's: shape, finite values, relative L2 error; top-1 class of ``top1``."""
    errors: dict[str, float] = {}
    problems: list[str] = []
    for name, expected in reference.items():
        actual = np.asarray(engine[name], np.float64)
        if actual.shape != expected.shape or not np.isfinite(actual).all():
            problems.append(f"{name}: shape {actual.shape} (expected {expected.shape}) or non-finite values")
            continue
        expected = np.asarray(expected, np.float64)
        errors[name] = float(np.linalg.norm(actual - expected) / max(float(np.linalg.norm(expected)), 1e-12))
        if errors[name] > tolerance.relative_error:
            problems.append(f"{name}: relative error {errors[name]:.3g} > {tolerance.relative_error}")
    agreement = None
    if top1 is not None and top1 in errors:
        agreement = float(np.mean(np.argmax(engine[top1], -1) == np.argmax(reference[top1], -1)))
        if agreement < tolerance.top1_agreement:
            problems.append(f"{top1}: top-1 agreement {agreement:.3f} < {tolerance.top1_agreement}")
    return Parity(errors, agreement, tuple(problems))


def sample_inputs(name: str, n: int = VERIFY_DIES, seed: int = VERIFY_SEED) -> dict[str, np.ndarray]:
    """Serving inputs of ``name`` (model_repository/README.md) for ``n`` synthetic dies, a pure function of ``seed``."""
    dies = make_dataset(seed=seed, n=n)
    if name == "anomaly":
        return {"IMAGE": grey(dies.images)}
    image = np.ascontiguousarray(dies.images.transpose(0, 3, 1, 2))
    return {"IMAGE": image, "PROCESS": dies.process, "PRESENT": dies.present, "NOTES": dies.notes}


def _batch_rows(n: int, profile: Sequence[int]) -> list[np.ndarray]:
    """Row indices of the verification batches over ``n`` samples: one batch at each profile size, then batches of
    the max size until every sample has run; consecutive rows, wrapping around."""
    sizes = sorted(set(profile))
    while sum(sizes) < n:
        sizes.append(max(profile))
    starts = np.cumsum([0, *sizes[:-1]])
    return [(start + np.arange(size)) % n for start, size in zip(starts, sizes)]


def _stacked(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def _replace(target: Path, data: bytes) -> None:
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)


# --- plans: verified against ONNX Runtime (run through tools.gpu.tensorrt_engine), then installed ---------------


def reference_outputs(onnx: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs of ``onnx`` on the CPU."""
    import onnxruntime as ort

    model = onnx_model(onnx, with_outputs=outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(outputs, session.run(list(outputs), dict(inputs))))


def onnx_model(path: Path, with_outputs: Sequence[str]) -> onnx.ModelProto:
    """The ONNX graph at ``path``, with the classifier's ``EMBEDDING`` output added when ``with_outputs`` names it
    (the exported forms lack it; ``tools.embedding_output``)."""
    model = onnx.load(str(path))
    return with_embedding(model) if EMBEDDING in with_outputs else model


def served_form(state: ModelState, folder: Path) -> Path:
    """The ONNX form to build ``state``'s engine from, with every output its config declares, written in ``folder``."""
    outputs = [t.name for t in declared_tensors(state.config)["output"]]
    if EMBEDDING not in outputs:
        return state.onnx
    path = folder / f"{state.name}.served.onnx"
    onnx.save(onnx_model(state.onnx, outputs), str(path))
    return path


def verify_plan(
    name: str, plan: bytes, models: Path, precision: str, tensors: Mapping[str, list[TensorSpec]], profile: Sequence,
    inputs: Mapping[str, np.ndarray] | None = None,
) -> Parity:  # fmt: skip
    """The plan at every profile batch size against ONNX Runtime on the FP32 ONNX, on the same dies: ``inputs``, by
    default the synthetic ones (``sample_inputs``)."""
    inputs = sample_inputs(name) if inputs is None else inputs
    reference = reference_outputs(onnx_path(models, name, "fp32"), inputs, [t.name for t in tensors["output"]])
    rows = _batch_rows(len(next(iter(inputs.values()))), profile)
    engine = run_plan(plan, [{k: v[index] for k, v in inputs.items()} for index in rows], tensors)
    expected = [{k: v[index] for k, v in reference.items()} for index in rows]
    return compare_outputs(_stacked(engine), _stacked(expected), TOLERANCES[precision], TOP1_OUTPUT.get(name))


def install_plan(plan: Path, data: bytes, fingerprint: Fingerprint) -> None:
    """Put ``data`` at ``plan`` and its fingerprint beside it; a crash midway leaves no fingerprint (so: rebuilt)."""
    plan.parent.mkdir(parents=True, exist_ok=True)
    fingerprint_path(plan).unlink(missing_ok=True)
    _replace(plan, data)
    write_fingerprint(plan, fingerprint)


# --- a version written by edge-inspect train ------------------------------------------------------------------------


def version_folder(repository: Path, name: str, version: str) -> Path:
    folder = repository / name / version
    if not (folder / "gpu" / "config.pbtxt").is_file() or not (folder / "forms").is_dir():
        raise ModelRepositoryError(
            f"{folder} is not a version written by edge-inspect train (it needs forms/ and gpu/config.pbtxt)"
        )
    return folder


def version_config(repository: Path, name: str, version: str, max_batch: int, choice: Choice) -> str:
    """The served GPU config of version ``version`` of ``name``: its own (tensors, contract, bands) for ``max_batch``,
    with the precision ``choice``."""
    text = (version_folder(repository, name, version) / "gpu" / "config.pbtxt").read_text()
    return config_text(with_max_batch(text, max_batch), choice.parameters())


def version_dies(repository: Path, version: str, data: Path, n: int = VERIFY_DIES) -> dict[str, dict[str, np.ndarray]]:
    """Per model, the serving inputs of the first ``n`` ``test`` dies of the folder ``data``, made by the rules training
    applied; ModelRepositoryError when the folder is refused or its classes or parameters are not the version's."""
    from tools.dataset.arrays import arrays  # the data tools (OpenCV, the folder check) only when a version is built
    from tools.dataset.folder import DataSetRefused, load
    from tools.fab.forms import feeds

    try:
        dataset, _ = load(data)
    except DataSetRefused as exc:
        raise ModelRepositoryError(str(exc)) from exc
    params = config_parameters((version_folder(repository, "classifier", version) / "gpu" / "config.pbtxt").read_text())
    contract = contract_from(params)
    trained = (contract.classes, contract.process_parameters)
    if trained != (dataset.classes, dataset.parameters):
        raise ModelRepositoryError(
            f"{data} is not the data version {version} was trained on: the version has classes {trained[0]} and "
            f"process parameters {trained[1]}, the folder {dataset.classes} and {dataset.parameters}"
        )
    test = arrays(dataset, "test")
    return {name: feeds(name, test, slice(0, n)) for name in MODELS}


# --- command line ----------------------------------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build, verify and install TensorRT engines on this GPU.")
    parser.add_argument("--models", type=Path, default=Path("build/models"), help="ONNX forms and anomaly metrics")
    parser.add_argument("--out", type=Path, default=Path("build/model_repository_gpu"), help="GPU repository")
    parser.add_argument("--source", type=Path, default=SOURCE, help="config.pbtxt per model (GPU variant)")
    parser.add_argument("--precision", nargs="*", default=[], metavar="MODEL=PRECISION", help="fp32, fp16 or int8")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help="largest batch the engines serve")
    parser.add_argument("--device", type=int, default=0, help="CUDA device to build on")
    parser.add_argument("--force", action="store_true", help="rebuild even when the fingerprints match")
    parser.add_argument("--check", action="store_true", help="only report stale engines (exit 1 if any)")
    parser.add_argument("--repository", type=Path, help="a repository edge-inspect train wrote versions into")
    parser.add_argument("--version", help="the version of --repository to build (instead of --models)")
    parser.add_argument("--data", type=Path, help="with --version: the folder it was trained on (its test dies check)")
    args = parser.parse_args(argv)
    if (args.repository is None) != (args.version is None) or (args.version is None) != (args.data is None):
        parser.error("--repository, --version and --data go together")
    if args.version is not None and not args.version.isdigit():
        parser.error(f"--version: a version number, got {args.version!r}")
    try:
        args.precisions, args.profile = parse_precisions(args.precision), profile_for(args.max_batch)
    except ValueError as exc:
        parser.error(str(exc))
    return args


@dataclass(frozen=True)
class ModelState:
    """One model's engine as this run sees it: its precision, input, plan, served config and why the plan is stale."""

    name: str
    choice: Choice
    forms: Path
    onnx: Path
    plan: Path
    config: str
    current: Fingerprint
    reasons: list[str]

    @property
    def precision(self) -> str:
        return self.choice.served


def model_state(name: str, args: argparse.Namespace, gpu: Gpu) -> ModelState:
    """Where ``name`` stands: the ONNX form to build from (the precision asked for, or its fallback when that form
    did not pass the precision gate), the fingerprint it would get, the stale reasons."""
    version = args.version
    forms = args.models if version is None else version_folder(args.repository, name, version) / "forms"
    choice = served_precision(name, forms, args.precisions[name])
    if choice.fallback:
        print(f"{choice.log_line(name)}", file=sys.stderr, flush=True)
    onnx = onnx_path(forms, name, choice.served)
    plan = plan_path(args.out, name, version or VERSION)
    current = Fingerprint(
        gpu.tensorrt_version, gpu.name, gpu.compute_capability, onnx_sha256(onnx), choice.served, args.profile
    )
    if version is None:
        config = gpu_config(name, args.source, args.models, args.max_batch, choice)
    else:
        config = version_config(args.repository, name, version, args.max_batch, choice)
    config = stamped(config, {"backend": TENSORRT})
    return ModelState(name, choice, forms, onnx, plan, config, current, stale_reasons(recorded_state(plan), current))


def check_model(state: ModelState, out: Path) -> list[str]:
    """Print and return why ``state``'s plan or served config is out of date (``--check``); a model served by its
    ONNX Runtime fallback is, with the fallback's reason."""
    written = out / state.name / "config.pbtxt"
    text = written.read_text() if written.is_file() else None
    served = config_parameters(text) if text is not None else {}
    if served.get("backend") == ONNXRUNTIME_GPU:
        config_reasons = [f"served by ONNX Runtime, not a plan ({served.get('backend_fallback') or 'no reason given'})"]
    else:
        config_reasons = ["config.pbtxt missing or out of date"] if text != state.config else []
    reasons = [*state.reasons, *config_reasons]
    print(f"{state.name}: {'stale: ' + '; '.join(reasons) if reasons else 'up to date'}")
    return reasons


@dataclass(frozen=True)
class Outcome:
    """What one model serves after ``update_model``: its plan (both None), its ONNX Runtime fallback (``fallback``, the
    reason), or the plan it had because a forced rebuild failed (``failed``, why)."""

    fallback: str | None = None
    failed: str | None = None


def update_model(
    state: ModelState, args: argparse.Namespace, inputs: Mapping[str, np.ndarray] | None = None
) -> Outcome:
    """Build, verify (on ``inputs``, by default the synthetic dies) and install the plan when stale (or ``--force``),
    then write the served config. A plan that cannot be built or does not match ONNX Runtime is not installed: the
    model is served by ONNX Runtime instead (``install_fallback``), unless a current plan is there (a forced
    rebuild), which stays."""
    if not (state.reasons or args.force):
        print(f"{state.name}: {state.plan} up to date")
        return _serve_plan(state, args.out)
    why = "; ".join(state.reasons) or "forced"
    print(f"{state.name}: building the {state.precision} engine ({why})", flush=True)
    with tempfile.TemporaryDirectory(prefix="engine-") as folder:
        form = served_form(state, Path(folder))
        try:
            data = build_plan(form, args.profile)
        except EngineBuildError as exc:
            return _not_built(state, args.out, form, ENGINE_BUILD_FAILED, str(exc))
        try:
            parity = verify_plan(state.name, data, state.forms, state.precision, declared_tensors(state.config),
                                 args.profile, inputs)  # fmt: skip
            problems = "; ".join(parity.problems)
        except EngineBuildError as exc:  # the engine does not run on the verification dies
            problems = str(exc)
        if problems:
            detail = f"the {state.precision} engine does not match ONNX Runtime on {state.name}.onnx: {problems}"
            return _not_built(state, args.out, form, PARITY_FAILED, detail)
    install_plan(state.plan, data, state.current)
    print(f"{state.name}: installed {state.plan} ({parity.summary()})", flush=True)
    return _serve_plan(state, args.out)


def _serve_plan(state: ModelState, out: Path) -> Outcome:
    """The plan's config written; an ONNX Runtime fallback that served before it taken away."""
    write_config(out, state.name, state.config)
    state.plan.with_name(FALLBACK_MODEL).unlink(missing_ok=True)
    return Outcome()


def _not_built(state: ModelState, out: Path, form: Path, cause: str, detail: str) -> Outcome:
    reason = fallback_reason(cause, detail)  # one line, cut short for the config: the log keeps the whole detail
    if not reason.endswith(" ".join(detail.split())):
        print(f"{state.name}: {cause}: {detail}", file=sys.stderr)
    if not state.reasons:  # forced: the plan there still matches this GPU, TensorRT and ONNX file, and was verified
        print(f"{state.name}: the forced rebuild was not installed ({reason}); the current plan stays",
              file=sys.stderr, flush=True)  # fmt: skip
        _serve_plan(state, out)
        return Outcome(failed=reason)
    install_fallback(state, out, form, reason)
    return Outcome(fallback=reason)


def install_fallback(state: ModelState, out: Path, form: Path, reason: str) -> Path:
    """Serve ``state``'s model with Triton's ONNX Runtime backend on the GPU: ``form`` (the ONNX file the plan was to be
    built from, every declared output included) as the version folder's ``model.onnx``, the plan and its fingerprint
    taken away (so the next run builds again), and the ONNX Runtime config with ``reason``. The file installed."""
    target = state.plan.with_name(FALLBACK_MODEL)
    target.parent.mkdir(parents=True, exist_ok=True)
    fingerprint_path(state.plan).unlink(missing_ok=True)
    state.plan.unlink(missing_ok=True)
    _replace(target, form.read_bytes())
    write_config(out, state.name, onnxruntime_config(state.config, reason))
    print(f"{state.name}: NOT served by TensorRT: {reason}", file=sys.stderr)
    print(f"{state.name}: installed {target}: Triton's ONNX Runtime backend serves the {state.precision} form on the "
          "GPU until an engine build passes (every run tries again)", file=sys.stderr, flush=True)  # fmt: skip
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI: 0 when every model serves a verified plan, 3 when every model is served but at least one by its ONNX
    Runtime fallback, 1 when a model cannot be served (or ``--check`` finds a stale plan, or a forced rebuild
    failed), 2 without TensorRT, pycuda or a GPU."""
    args = _arguments(argv)
    try:
        gpu = probe_gpu(args.device)
    except EngineEnvironmentError as exc:
        print(f"build_engines: cannot build TensorRT engines here: {exc}", file=sys.stderr)
        return 2
    print(f"build_engines: TensorRT {gpu.tensorrt_version} on {gpu.name} (compute capability {gpu.compute_capability})")
    try:
        with cuda_context(args.device):
            states = [model_state(name, args, gpu) for name in MODELS]
            if args.check:
                return 1 if [reason for state in states for reason in check_model(state, args.out)] else 0
            building = args.force or any(state.reasons for state in states)  # the folder is read only to build
            dies = version_dies(args.repository, args.version, args.data) if args.version and building else None
            outcomes = {state.name: update_model(state, args, None if dies is None else dies[state.name])
                        for state in states}  # fmt: skip
    except (EngineBuildError, ModelRepositoryError, OSError, json.JSONDecodeError) as exc:
        print(f"build_engines: {exc}", file=sys.stderr)
        return 1
    fallbacks = [name for name, outcome in outcomes.items() if outcome.fallback]
    if fallbacks:
        print(f"build_engines: served by ONNX Runtime on the GPU instead of TensorRT: {', '.join(fallbacks)} "
              f"(exit {EXIT_FALLBACK})", file=sys.stderr)  # fmt: skip
    if any(outcome.failed for outcome in outcomes.values()):
        return 1
    return EXIT_FALLBACK if fallbacks else 0


if __name__ == "__main__":
    sys.exit(main())

"""What changes when the model pipeline runs on another x86-64 CPU: this machine against an emulated one.

    python -m tools.kernel_check [--models build/models] [--cpu EPYC-Milan] [--steps 3] [--dies 96] [--pin-kernels]

Runs the same probes natively and under QEMU's user-mode emulation of ``--cpu`` (default an AMD EPYC Milan: AVX2,
no AVX-512, no VNNI; Debian's ``qemu-user``), and prints each probe's result on both:

- ``dies``: a digest of 24 synthetic dies (numpy and OpenCV, which dispatch their own SIMD kernels);
- ``train``: a few optimiser steps of the classifier (PyTorch: ATen, oneDNN and MKL pick kernels by CPU);
- ``int8``: the INT8 classifier of ``--models`` (default: tiny untrained models built here) on ``--dies`` held-out
  dies in the serving session (``tools.quantize.session``): its top-class agreement with FP32, and how far its
  PROBS on the two CPUs are apart;
- ``int8-default``: the same file in ONNX Runtime's default session, likewise.

On an AMD EPYC Genoa host (AVX-512 with VNNI) against an emulated Milan, ``dies`` are the same and ``int8`` differs by
float rounding only (about 1e-4: the FP32 parts of the graph run other SIMD widths, and a last-digit difference can
move a value across one INT8 step), while ``train`` differs in the fifth digit of the loss after three steps (then a
different trained model) and ``int8-default`` loses FP32's top class on most dies on the emulated CPU (16-bit
saturation without VNNI). That is why the model cards report figures over several training seeds instead of pinning
kernels, and why every INT8 session sets ``session.x64quantprecision``. With ``--pin-kernels`` both runs cap
PyTorch's kernels at AVX2 (``PINNED``): ``train`` comes closer, but still differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tools.tiny_models import tiny_models

ROOT = Path(__file__).resolve().parents[1]
# The environment that caps ATen's, oneDNN's and MKL's kernels at AVX2 with MKL's reproducible code path.
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def int8_probs(models: Path, inputs: dict[str, np.ndarray], threads: int = 2) -> dict[str, np.ndarray]:
    """The classifier's PROBS on ``inputs``: FP32, INT8 in the serving session (``tools.quantize.session``) and INT8
    in ONNX Runtime's default session (whose kernels saturate on a CPU without VNNI)."""
    import onnxruntime as ort

    from tools.quantize import input_batches, run_all

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    plain = ort.InferenceSession(str(models / "classifier.int8.onnx"), opts, providers=["CPUExecutionProvider"])
    return {
        "fp32": run_all(models / "classifier.onnx", inputs, threads=threads)["PROBS"],
        "int8": run_all(models / "classifier.int8.onnx", inputs, threads=threads)["PROBS"],
        "int8-default": np.concatenate([plain.run(["PROBS"], b)[0] for b in input_batches(inputs, 16)]),
    }


def probe(models: Path, steps: int, n_dies: int, save: Path) -> dict[str, str]:
    """The probes on this process's CPU (run natively, and by ``main`` under emulation); the INT8 PROBS to ``save``."""
    import torch
    import torch.nn.functional as F

    from tools.models import DefectClassifier, normalise_image
    from tools.quantize import feeds
    from tools.synth import make_dataset
    from tools.training import HELDOUT_SEED, HELDOUT_SHIFT, class_weights

    dies = make_dataset(seed=5, n=24)
    result = {"dies": _digest(dies.images, dies.process, dies.labels, dies.notes)}
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = DefectClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    image = normalise_image(torch.from_numpy(dies.images[:8]).permute(0, 3, 1, 2))
    context = [torch.from_numpy(a[:8]) for a in (dies.process, dies.present, dies.notes)]
    for _ in range(steps):
        loss = F.cross_entropy(model(image, *context)[0], torch.from_numpy(dies.labels[:8]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    result["train"] = f"loss {loss.item():.10f}, weights {_digest(weights)}"
    held = make_dataset(HELDOUT_SEED, n_dies, shift=HELDOUT_SHIFT, class_weights=class_weights())
    probs = int8_probs(models, feeds("classifier", held))
    fp32 = probs.pop("fp32").argmax(1)
    np.savez(save, **probs)
    for key, int8 in probs.items():
        result[key] = f"top class as FP32 on {np.mean(int8.argmax(1) == fp32):.1%}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kernel_check", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", default="EPYC-Milan", help="QEMU CPU model to emulate (qemu-x86_64 -cpu help)")
    parser.add_argument("--models", type=Path, help="models folder with classifier.onnx and classifier.int8.onnx")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps of the training probe")
    parser.add_argument("--dies", type=int, default=96, help="held-out dies of the INT8 probes")
    parser.add_argument("--pin-kernels", action="store_true", help="cap PyTorch's CPU kernels at AVX2 in both runs")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # the child: probe, save PROBS here, print JSON
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.models, args.steps, args.dies, args.probe)))
        return 0
    if shutil.which("qemu-x86_64") is None:
        print("kernel_check: qemu-x86_64 is missing (Debian qemu-user; `make deps` installs it)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        models = (args.models or tiny_models(Path(tmp) / "models")).resolve()
        runs, probs = {}, {}
        for label, prefix in (("native", []), (f"emulated {args.cpu}", ["qemu-x86_64", "-cpu", args.cpu])):
            save = Path(tmp) / f"{len(runs)}.npz"
            child = [sys.executable, "-m", "tools.kernel_check", "--probe", str(save), "--models", str(models),
                     "--steps", str(args.steps), "--dies", str(args.dies)]  # fmt: skip
            env = {**os.environ, **(PINNED if args.pin_kernels else {})}
            done = subprocess.run([*prefix, *child], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"kernel_check: the {label} probe failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            runs[label] = json.loads(done.stdout.strip().splitlines()[-1])
            probs[label] = dict(np.load(save))
    (native, emulated), (mine, theirs) = runs.values(), probs.values()
    print(f"{'probe':14} {'native':42} {'emulated ' + args.cpu:42} native vs emulated")
    for key in native:
        same = "same" if native[key] == emulated[key] else "differs"
        if key in mine:
            same = f"max |PROBS difference| {np.abs(mine[key] - theirs[key]).max():.2g}"
        print(f"{key:14} {native[key]:42} {emulated[key]:42} {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A trained pair of models written into a Triton model repository as a new numbered version.

    <repository>/<model>/config.pbtxt          model-level: the newest version's config, or the versions a station
                                               pinned (``edge.models.repository.publish``)
    <repository>/<model>/<N>/model.onnx        the served form (FP32 on the CPU unless a gated form is asked for)
    <repository>/<model>/<N>/model.py, ort_model.py
    <repository>/<model>/<N>/config.pbtxt      this version's config, kept so an older version can be served again
    <repository>/<model>/<N>/gpu/config.pbtxt  the GPU variant's config for the same tensors and contract (the
                                               engine's precision is added by ``tools.gpu.build_engines --version``)
    <repository>/<model>/<N>/forms/            the FP32, FP16 and INT8 ONNX forms and their precision report
    <repository>/<model>/<N>/report/           the model card, its pictures and metrics.json

N is one more than the highest version of either model already there (both models get the same N, so a version
number names a pair). Nothing already in the repository is overwritten: a version is assembled under ``N.partial``
and renamed into place, and the model-level config is replaced by an atomic rename.

Each config carries the model's contract as parameters (``edge.inference.model_facts``): the classifier's
``classes`` (output order) and ``process_parameters`` (input order), the anomaly bands, and for both the input
(``input``: channels x height x width), the training data's digest (``data_digest``), the version, its digest (sha256
of the files Triton loads) and the precision served. The tensor dims of PROCESS and PROBS are the model's own.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from edge.errors import ModelRepositoryError
from edge.models.repository import next_version as repository_next_version
from edge.models.repository import publish, seal
from tools.build_repository import MODELS, SHARED_MODULE, SOURCE, config_text, served_onnx, served_precision
from tools.embedding_output import declared
from tools.precision_gate import PRECISIONS, REPORT, onnx_path

GPU_SOURCE = SOURCE.parent / "gpu"


def next_version(repository: Path) -> int:
    return repository_next_version(repository, MODELS)


def shaped(config: str, dims: Mapping[str, tuple[int, ...]]) -> str:
    """``config`` with the dims of each named tensor (in its input/output entry and its warm-up inputs) replaced."""
    for tensor, shape in dims.items():
        pattern = re.compile(rf'("{re.escape(tensor)}"[^\n]*?dims: \[)[^\]]*(\])')
        config, count = pattern.subn(rf"\g<1> {', '.join(str(d) for d in shape)} \g<2>", config)
        if not count:
            raise ModelRepositoryError(f"the config template declares no tensor {tensor}")
    return config


def write_version(
    repository: Path, models: Path, version: int, parameters: Mapping[str, Mapping[str, str]],
    dims: Mapping[str, Mapping[str, tuple[int, ...]]], report: Path, precision: Mapping[str, str],
) -> dict[str, str]:  # fmt: skip
    """Write version ``version`` of every model from the ONNX forms in ``models``; the precision served per model.

    ``parameters``: per model, the contract parameters its configs carry; ``dims``: per model, its tensors' dims.
    """
    served: dict[str, str] = {}
    staged: list[Path] = []
    for name in MODELS:
        final = repository / name / str(version)
        if final.exists():
            raise ModelRepositoryError(f"{final} exists: a version is never overwritten")
        choice = served_precision(name, models, precision.get(name, "fp32"))
        served[name] = choice.log_line(name)
        params = {**parameters[name], **choice.parameters()}
        cpu = config_text(shaped((SOURCE / name / "config.pbtxt").read_text(), dims[name]), params)
        gpu = config_text(shaped((GPU_SOURCE / name / "config.pbtxt").read_text(), dims[name]), parameters[name])
        partial = final.with_name(f"{version}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "forms").mkdir(parents=True)
        (partial / "gpu").mkdir()
        shutil.copyfile(SOURCE / name / "model.py", partial / "model.py")
        shutil.copyfile(SOURCE / SHARED_MODULE, partial / SHARED_MODULE)
        cpu = declared(cpu, served_onnx(name, onnx_path(models, name, choice.served), partial / "model.onnx"))
        for form in PRECISIONS:
            shutil.copyfile(onnx_path(models, name, form), onnx_path(partial / "forms", name, form))
        shutil.copyfile(models / REPORT, partial / "forms" / REPORT)
        shutil.copytree(report, partial / "report")
        (partial / "config.pbtxt").write_text(cpu)
        (partial / "gpu" / "config.pbtxt").write_text(gpu)
        staged.append(partial)
    for partial in staged:
        seal(partial, version)
    publish(repository, MODELS)
    return served

"""Triton client (gRPC, asyncio): with ``edge.inference.shared_memory``, the only modules that import tritonclient.

Against a Triton on this host, the IMAGE tensors go through system shared memory (``shared_memory``) and everything
else over gRPC; a request that cannot have a region, or whose region Triton no longer knows, goes over plain gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from edge.config import Config
from edge.errors import InferenceFailed, TritonUnavailable
from edge.inference.inputs import Images
from edge.inference.shared_memory import ImagePlan, Lease, Setting, SharedImages, off_reason
from edge.ops.logs import get
from edge.ops.metrics import Metrics
from edge.ops.stage_cpu import clock

log = get("edge.inference.triton_client")
Transport = Literal["shared_memory", "grpc"]  # how a request's IMAGE tensor went


@dataclass(frozen=True, slots=True)
class AnomalyOut:
    scores: npt.NDArray[np.float32]  # (B,)
    heatmaps: npt.NDArray[np.float32]  # (B, 32, 32)


@dataclass(frozen=True, slots=True)
class ClassifierOut:
    probs: npt.NDArray[np.float32]  # (B, n_classes)
    attention: npt.NDArray[np.float32]  # (B, 64)
    embedding: npt.NDArray[np.float32] | None = None  # (B, D): the pooled representation, where the model declares it


EMBEDDING = "EMBEDDING"  # the classifier's optional output (model_repository/README.md)

# tritonclient's defaults, plus a short reconnect back-off: gRPC's own grows to two minutes, which
# would keep a restarted server idle long after it is ready again.
_KEEPALIVE = grpcclient.KeepAliveOptions()
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", _KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _input(name: str, array: npt.NDArray[Any], datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


# gRPC status codes of a Triton that cannot take the request now (down, restarting, a model unloaded or loading, its
# queue full, the deadline passed): the batch may be retried. Any other code (a bad input, a backend error) fails it.
RETRYABLE_CODES = frozenset(
    str(code)
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    )
)


def classify(err: InferenceServerException, what: str) -> TritonUnavailable | InferenceFailed:
    """The project's error for one of tritonclient's, by the gRPC status code it carries (never its wording)."""
    if err.status() in RETRYABLE_CODES:
        return TritonUnavailable(f"{what}: {err}")
    return InferenceFailed(f"{what}: {err}")


def image_plan(cfg: Config) -> ImagePlan:
    """The shared-memory regions the config's batches need: a full batch of each model's IMAGE per batch in flight."""
    b, ing, t = cfg.batching, cfg.ingest, cfg.triton
    channels = {t.anomaly_model: 1, t.classifier_model: 3}
    return ImagePlan.for_batches(b.max_batch, b.max_concurrent_batches, ing.image_height, ing.image_width, channels)


class TritonClient:
    """Both models on one Triton. ``plan``: the shared-memory regions to use for the IMAGE tensors where
    ``shared_memory`` allows and the server is on this host (None: plain gRPC only, as one-off tools want)."""

    def __init__(
        self,
        url: str,
        anomaly_model: str,
        classifier_model: str,
        timeout_s: float,
        *,
        shared_memory: Setting = "auto",
        plan: ImagePlan | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = grpcclient.InferenceServerClient(url=url, channel_args=_CHANNEL_ARGS)
        self.url = url
        self.anomaly_model = anomaly_model
        self.classifier_model = classifier_model
        self.timeout_s = timeout_s
        self._outputs: dict[str, frozenset[str]] = {}  # model -> the outputs its config declares
        self._metrics = metrics
        self.images: SharedImages | None = None
        if plan is not None:
            reason = off_reason(url, shared_memory)
            if reason is None:
                self.images = SharedImages(self._client, plan, timeout_s, self._shared_memory_state)
            else:
                log.info("triton_shared_memory_off", reason=reason, transport="grpc")

    def _shared_memory_state(self, registered: bool) -> None:
        if self._metrics is not None:
            self._metrics.triton_shared_memory.set(1 if registered else 0)

    async def close(self) -> None:
        if self.images is not None:
            await self.images.close()
        await self._client.close()

    async def ready(self) -> bool:
        """True when the server and both models answer ready; never raises."""
        try:
            return bool(
                await self._client.is_server_ready(client_timeout=self.timeout_s)
                and await self._client.is_model_ready(self.anomaly_model, client_timeout=self.timeout_s)
                and await self._client.is_model_ready(self.classifier_model, client_timeout=self.timeout_s)
            )
        except InferenceServerException:
            return False

    async def model_versions(self) -> dict[str, list[str]]:
        """The ready versions of each of our models, ascending, as Triton reports them."""
        try:
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as err:
            raise TritonUnavailable(f"cannot read the model index from {self.url}: {err}") from err
        versions: dict[str, list[str]] = {}
        for model in index.get("models", []):
            if model.get("name") in (self.anomaly_model, self.classifier_model) and model.get("state") == "READY":
                versions.setdefault(model["name"], []).append(str(model.get("version", "0")))
        return {name: sorted(found, key=int) for name, found in versions.items()}

    async def load(self, model: str, timeout_s: float) -> None:
        """(Re)load ``model`` from its config on disk (explicit model control): the versions it pins come up beside
        those already serving, which keep serving until the load is done; the versions it no longer names go."""
        try:
            await self._client.load_model(model, client_timeout=timeout_s)
        except InferenceServerException as err:
            raise classify(err, f"loading {model}") from err

    async def config_parameters(self, model: str) -> dict[str, str]:
        """The string parameters of ``model``'s config: what it says about itself (``edge.inference.model_facts``).
        Its declared outputs are noted too: the classifier's ``EMBEDDING`` is asked for only where declared."""
        try:
            cfg = await self._client.get_model_config(model, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as err:
            raise TritonUnavailable(f"cannot read the config of {model}: {err}") from err
        self._outputs[model] = frozenset(str(o.get("name")) for o in cfg.get("config", {}).get("output", []))
        params = cfg.get("config", {}).get("parameters", {})
        return {key: str(value.get("string_value", "")) for key, value in params.items() if isinstance(value, dict)}

    async def anomaly(self, grey: Images, version: str = "") -> AnomalyOut:
        result = await self._infer(self.anomaly_model, version, grey, [], ("SCORE", "HEATMAP"))
        return AnomalyOut(result[0].reshape(-1), result[1])

    async def classify(
        self,
        rgb: Images,
        process: npt.NDArray[np.float32],
        present: npt.NDArray[np.float32],
        notes: npt.NDArray[np.int64],
        version: str = "",
    ) -> ClassifierOut:
        since = clock()
        others = [
            _input("PROCESS", process, "FP32"),
            _input("PRESENT", present, "FP32"),
            _input("NOTES", notes, "INT64"),
        ]
        self._count(since)
        embedding = EMBEDDING in self._outputs.get(self.classifier_model, ())
        outputs = ("PROBS", "ATTENTION", EMBEDDING) if embedding else ("PROBS", "ATTENTION")
        result = await self._infer(self.classifier_model, version, rgb, others, outputs)
        return ClassifierOut(result[0], result[1], result[2] if embedding else None)

    async def _infer(
        self,
        model: str,
        version: str,
        image: Images,
        others: list[grpcclient.InferInput],
        outputs: tuple[str, ...],
    ) -> list[npt.NDArray[np.float32]]:
        """One request to ``version`` of ``model`` ("": the version Triton's policy makes the default), its IMAGE
        through a shared-memory slot when one is free. A region Triton does not know (it restarted, or someone
        unregistered it) costs a second try over plain gRPC, never the request."""
        what = f"{model} version {version}" if version else model
        if self.images is not None:
            await self.images.ready()  # the regions registered where they are not yet: awaits Triton, no stage's CPU
        since = clock()
        lease = None if self.images is None else self.images.take(model, image)
        if lease is not None:
            assert self.images is not None
            try:
                return await self._send(model, version, [_shared(image, lease), *others], outputs, "shared_memory",
                                        since)  # fmt: skip
            except InferenceServerException as err:
                if not self.images.lost(lease, err):
                    raise classify(err, what) from err
            finally:
                self.images.give_back(lease)
            since = clock()
        try:
            return await self._send(model, version, [_input("IMAGE", image.stacked(), "UINT8"), *others], outputs,
                                    "grpc", since)  # fmt: skip
        except InferenceServerException as err:
            raise classify(err, what) from err

    async def _send(
        self,
        model: str,
        version: str,
        inputs: list[grpcclient.InferInput],
        outputs: tuple[str, ...],
        transport: Transport,
        since: int,
    ) -> list[npt.NDArray[np.float32]]:
        """One request. The CPU from ``since`` (its inputs built: the images stacked, the other tensors serialised)
        to the call, and of reading the answer, is counted to the "infer" stage; what tritonclient and gRPC do inside
        the call (the request message, its serialising and the wait) runs across awaits, where no stage can count."""
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        if self._metrics is not None:
            self._metrics.triton_requests.labels(transport).inc()
        self._count(since)
        result = await self._client.infer(
            model, inputs, model_version=version, outputs=requested, client_timeout=self.timeout_s
        )
        since = clock()
        answer = [result.as_numpy(name) for name in outputs]
        self._count(since)
        return answer

    def _count(self, since: int) -> None:
        if self._metrics is not None:
            self._metrics.stage_cpu.add("infer", since)


def _shared(image: Images, lease: Lease) -> grpcclient.InferInput:
    """The IMAGE input whose data Triton reads from the lease's region."""
    tensor = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
    tensor.set_shared_memory(lease.region, lease.byte_size)
    return tensor

"""What Triton serves, learned from Triton: readiness, the models' versions and what each declares (digest, precision,
backend, anomaly bands, contract), kept current as Triton restarts or loads a version, routed as the model lifecycle
says (``edge.models``), and shown on ``/readyz``, ``edge_model_info`` and ``edge_model_backend_info``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

from calibration.table import Bands, BandTable
from edge.config import Config
from edge.errors import ConfigError, EdgeError, TritonUnavailable
from edge.inference.inspector import Inspector
from edge.inference.model_facts import backend_from, bands_from, contract_from, mismatches, precision_from
from edge.models.pbtxt import facts_for
from edge.models.served import Pair, Route, Serving
from edge.ops.logs import get
from edge.shared import Shared

log = get("edge.inference.model_watch")


class Served(Protocol):
    """What the model watch asks Triton (``edge.inference.triton_client.TritonClient``)."""

    anomaly_model: str
    classifier_model: str

    async def ready(self) -> bool: ...

    async def model_versions(self) -> dict[str, list[str]]: ...

    async def config_parameters(self, model: str) -> dict[str, str]: ...


class ModelWatch:
    def __init__(self, shared: Shared, triton: Served, inspector: Inspector) -> None:
        self.cfg = shared.cfg
        self.triton = triton
        self._inspector = inspector
        self._health = shared.health
        self._metrics = shared.metrics
        self.route: Route | None = None  # the lifecycle's route (``edge.models.manager``); None: the newest version
        self.pairs: dict[str, Pair] = {}  # every version of both models Triton serves now

    async def wait_ready(self, stop: asyncio.Event) -> bool:
        """False when asked to stop first; ``TritonUnavailable`` when the models are not ready in time."""
        deadline = time.monotonic() + self.cfg.triton.ready_timeout_s
        while not await self.triton.ready():
            if stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise TritonUnavailable(
                    f"Triton at {self.cfg.triton.url} not ready within {self.cfg.triton.ready_timeout_s:.0f} s"
                )
            await asyncio.sleep(0.5)
        await self.learn()
        return True

    async def check(self) -> None:
        """One round of the health loop: is Triton ready, and if it came back, what does it serve now."""
        ready = await self.triton.ready()
        if ready and not self._health.triton_ready:
            try:
                await self.learn()
                log.info("triton_recovered", models=self._health.models)
            except EdgeError as err:  # not ready until what it serves is known and fits: tried again next round
                log.error("triton_model_info_failed", error=str(err))
                ready = False
        elif not ready and self._health.triton_ready:
            log.warning("triton_not_ready", url=self.cfg.triton.url)
        self._health.triton_ready = ready
        self._metrics.triton_up.set(int(ready))

    async def learn(self) -> None:
        """Read the served versions and what each declares, then route by ``route``."""
        self.pairs = await read_pairs(self.cfg, self.triton)
        self.apply(self.route)

    def apply(self, route: Route | None) -> Route:
        """Route by ``route`` (None: the newest served version live), less the candidates Triton does not serve;
        the route in force. ``ConfigError`` when the live version's classifier does not fit the configuration."""
        wanted = route if route is not None and route.live in self.pairs else Route(max(self.pairs, key=int))
        for version in wanted.serving:
            if version not in self.pairs:
                log.warning("model_candidate_not_served", version=version, role=wanted.role(version))
                wanted = wanted.without(version)
        live = self.pairs[wanted.live]
        self._check_contract(live.facts[self.triton.classifier_model])
        self._inspector.serving = Serving(wanted, {v: self.pairs[v] for v in wanted.serving})
        self._health.triton_ready = True
        self._health.models = live.models
        self._health.serving = {
            "route": wanted.to_json(),
            "versions": {v: self.pairs[v].report() for v in wanted.serving},
        }
        self._metrics.model_info.clear()  # a version no longer served no longer shows
        for version in wanted.serving:
            for name, digest in self.pairs[version].digests.items():
                self._metrics.model_info.labels(name, version, digest[:12], wanted.role(version) or "").set(1)
        precision = {name: precision_from(facts) for name, facts in live.facts.items()}
        self._health.precision = {name: facts.report() for name, facts in precision.items() if facts}
        for name, facts in precision.items():
            if facts and facts.fallback:  # the form asked for missed the precision gate at build time
                log.warning(
                    "model_precision_fallback",
                    model=name,
                    served=facts.served,
                    requested=facts.requested,
                    reason=facts.fallback,
                )
        self._report_backends(live.facts)
        self._metrics.triton_up.set(1)
        return wanted

    def _report_backends(self, facts: Mapping[str, Mapping[str, str]]) -> None:
        """What runs each model of the live version, on ``/readyz`` and ``edge_model_backend_info``; a warning for each
        model on a fallback (its TensorRT plan was not installed, or the station has no usable GPU)."""
        backends = {name: backend_from(declared) for name, declared in facts.items()}
        self._health.backend = {name: backend.report() for name, backend in backends.items() if backend}
        self._metrics.model_backend.clear()
        for name, backend in backends.items():
            if backend is None:  # a repository that does not say (the CPU repository as `make models` builds it)
                continue
            self._metrics.model_backend.labels(name, backend.served, backend.cause).set(1)
            if backend.fallback:
                log.warning("model_backend_fallback", model=name, backend=backend.served, reason=backend.fallback)

    def _check_contract(self, classifier_params: Mapping[str, str]) -> None:
        """``ConfigError`` naming each difference when the classifier declares classes or process parameters the
        configuration does not match (a model trained on other classes or another process log)."""
        found = misfit(self.cfg, classifier_params)
        if found:
            raise ConfigError(f"the configuration does not fit the served classifier: {found}")


def misfit(cfg: Config, classifier_params: Mapping[str, str]) -> str | None:
    """How a classifier's declared contract (classes, process parameters) differs from the configuration, or None."""
    try:
        contract = contract_from(classifier_params)
    except ValueError as err:
        return f"its config: {err}"
    recipes = {rid: recipe.parameters for rid, recipe in cfg.recipes.items()}
    return "; ".join(mismatches(contract, cfg.decision.classes, recipes)) or None


async def read_pairs(cfg: Config, triton: Served) -> dict[str, Pair]:
    """Every version both models serve now, with what each declares; ``TritonUnavailable`` when there is none."""
    versions = await triton.model_versions()
    names = (triton.anomaly_model, triton.classifier_model)
    params = {name: await triton.config_parameters(name) for name in names}
    pairs = pairs_from(cfg, names, versions, params)
    if not pairs:
        raise TritonUnavailable(f"Triton serves no version of both {' and '.join(names)}: {versions}")
    return pairs


def pairs_from(
    cfg: Config, names: tuple[str, str], versions: dict[str, list[str]], params: dict[str, dict[str, str]]
) -> dict[str, Pair]:
    """The versions both models serve, each with what it declares (``params``: each model's config parameters)."""
    anomaly, classifier = names
    both = set(versions.get(anomaly, ())) & set(versions.get(classifier, ()))
    pairs = {}
    for version in both:
        facts = {name: facts_for(params[name], version) for name in names}
        pairs[version] = Pair(version, facts, band_table(cfg, facts[anomaly]))
    return pairs


def band_table(cfg: Config, anomaly_params: Mapping[str, str]) -> BandTable:
    """The anomaly bands per recipe x tool: the config's entries over the bands the served anomaly model declares;
    ``ConfigError`` when neither gives a default."""
    declared = bands_from(anomaly_params)
    entries = {(b.recipe, b.tool): Bands(b.pass_band, b.reject_band) for b in cfg.decision.bands}
    default = entries.get(("*", "*"), declared)
    if default is None:
        raise ConfigError(
            "no anomaly bands: the anomaly model declares none and decision.bands has no recipe='*', tool='*' entry"
        )
    return BandTable(default, entries)

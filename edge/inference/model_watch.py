"""What Triton serves, learned from Triton: readiness, the models' versions and build facts (precision, anomaly
bands), kept current as Triton restarts or swaps a model, and shown on ``/readyz`` and ``edge_model_info``."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from calibration.table import Bands, BandTable
from edge.config import Config
from edge.errors import ConfigError, EdgeError, TritonUnavailable
from edge.inference.inspector import Inspector
from edge.inference.model_facts import bands_from, contract_from, mismatches, precision_from
from edge.ops.logs import get
from edge.shared import Shared

log = get("edge.inference.model_watch")


class Served(Protocol):
    """What the model watch asks Triton (``edge.inference.triton_client.TritonClient``)."""

    anomaly_model: str
    classifier_model: str

    async def ready(self) -> bool: ...

    async def model_versions(self) -> dict[str, str]: ...

    async def config_parameters(self, model: str) -> dict[str, str]: ...


class ModelWatch:
    def __init__(self, shared: Shared, triton: Served, inspector: Inspector) -> None:
        self.cfg = shared.cfg
        self.triton = triton
        self._inspector = inspector
        self._health = shared.health
        self._metrics = shared.metrics

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
        """Read the models' versions and build facts; the anomaly bands go to the inspector."""
        models = await self.triton.model_versions()
        params = {
            name: await self.triton.config_parameters(name)
            for name in (self.triton.anomaly_model, self.triton.classifier_model)
        }
        self._check_contract(params[self.triton.classifier_model])
        self._health.triton_ready = True
        self._health.models = models
        self._metrics.model_info.clear()  # a model Triton swapped no longer shows its old version
        for name, version in models.items():
            self._metrics.model_info.labels(name, version).set(1)
        precision = {name: precision_from(facts) for name, facts in params.items()}
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
        self._metrics.triton_up.set(1)
        self._inspector.bands = band_table(self.cfg, params[self.triton.anomaly_model])

    def _check_contract(self, classifier_params: dict[str, str]) -> None:
        """``ConfigError`` naming each difference when the classifier declares classes or process parameters the
        configuration does not match (a model trained on other classes or another process log)."""
        try:
            contract = contract_from(classifier_params)
        except ValueError as err:
            raise ConfigError(f"the classifier's config: {err}") from None
        recipes = {rid: recipe.parameters for rid, recipe in self.cfg.recipes.items()}
        found = mismatches(contract, self.cfg.decision.classes, recipes)
        if found:
            raise ConfigError("the configuration does not fit the served classifier: " + "; ".join(found))


def band_table(cfg: Config, anomaly_params: dict[str, str]) -> BandTable:
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

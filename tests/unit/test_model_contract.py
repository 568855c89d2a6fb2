"""The classifier's contract (its classes and process parameters, declared in its Triton config) against the
daemon's configuration: written by the repository build, parsed, and a mismatch refused with each difference named,
at the start and when Triton comes back with another model."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from edge.config import parse_config
from edge.errors import ConfigError
from edge.inference.inspector import Inspector
from edge.inference.model_facts import Contract, contract_from, mismatches
from edge.inference.model_watch import ModelWatch
from edge.ops.http import Health
from edge.ops.logs import RateLimited
from edge.ops.metrics import Metrics
from edge.process_params import DEFAULT_PARAMETERS
from edge.shared import Shared
from edge.taxonomy import DEFAULT_CLASSES
from tools.build_repository import config_text, contract_parameters, model_parameters

CLASSES = ("GOOD", "PARTICLE", "SCRATCH")
PARAMETERS = ("dose", "temp")


def test_the_contract_is_read_from_json_lists_and_absent_when_not_declared():
    params = contract_parameters(CLASSES, PARAMETERS)
    assert contract_from(params) == Contract(CLASSES, PARAMETERS)
    assert contract_from({"pass_band": "0.1"}) == Contract(None, None)  # a repository built before contracts
    with pytest.raises(ValueError, match="classes is not JSON"):
        contract_from({"classes": "GOOD,PARTICLE"})
    with pytest.raises(ValueError, match="a JSON list of names"):
        contract_from({"process_parameters": '["dose", 3]'})


@pytest.mark.parametrize(("classes", "recipes", "expected"), [
    (CLASSES, {"R1": PARAMETERS}, []),
    (("GOOD", "PARTICLE"), {"R1": PARAMETERS},
     ["decision.classes lacks SCRATCH (2 names; the classifier's classes: 3)"]),
    (("GOOD", "SCRATCH", "PARTICLE"), {"R1": PARAMETERS},
     ["decision.classes has the classifier's classes in another order (position 1: SCRATCH, the model PARTICLE)"]),
    (CLASSES, {"R1": PARAMETERS, "R2": ("dose", "temp", "rf")},
     ["recipes.R2.parameters has rf, which the model does not (3 names; the classifier's process parameters: 2)"]),
])  # fmt: skip
def test_each_difference_is_named(classes, recipes, expected):
    assert mismatches(Contract(CLASSES, PARAMETERS), classes, recipes) == expected


def test_the_repository_build_declares_the_reference_classifiers_contract(tmp_path):
    params = model_parameters("classifier", tmp_path)
    assert contract_from(params) == Contract(DEFAULT_CLASSES, DEFAULT_PARAMETERS)
    text = config_text('name: "classifier"\n', params)
    [classes] = re.findall(r'key: "classes", value: \{ string_value: "(.*)" \}', text)
    assert json.loads(classes.replace('\\"', '"')) == list(DEFAULT_CLASSES)  # escaped for the protobuf text


class Served:
    """Triton as the model watch sees it: ready, serving a classifier that declares ``contract``."""

    anomaly_model, classifier_model = "anomaly", "classifier"

    def __init__(self, classes, parameters) -> None:
        self.contract = contract_parameters(classes, parameters)

    async def ready(self) -> bool:
        return True

    async def model_versions(self) -> dict[str, list[str]]:
        return {"anomaly": ["1"], "classifier": ["1"]}

    async def config_parameters(self, model: str) -> dict[str, str]:
        return {"pass_band": "0.01", "reject_band": "0.02"} if model == "anomaly" else self.contract


def watch(served: Served) -> tuple[ModelWatch, Health]:
    cfg = parse_config({"tools": [{"id": "T1"}], "recipes": {"R1": {}}})
    health, metrics = Health(broker_required=False), Metrics()
    shared = Shared(cfg, metrics, health, None, RateLimited(10.0), None, None)  # type: ignore[arg-type]
    inspector = Inspector(cfg, served, lambda *_: 0.5, metrics, RateLimited(10.0))  # type: ignore[arg-type]
    return ModelWatch(shared, served, inspector), health


def test_a_served_classifier_that_fits_the_configuration_is_ready():
    models, health = watch(Served(DEFAULT_CLASSES, DEFAULT_PARAMETERS))
    assert asyncio.run(models.wait_ready(asyncio.Event())) and health.triton_ready


def test_the_daemon_refuses_to_start_on_a_classifier_of_other_parameters():
    models, health = watch(Served(DEFAULT_CLASSES, DEFAULT_PARAMETERS[:-1]))
    with pytest.raises(ConfigError, match=r"recipes\.R1\.parameters has .* which the model does not"):
        asyncio.run(models.wait_ready(asyncio.Event()))
    assert not health.triton_ready


def test_a_classifier_swapped_for_one_of_other_classes_keeps_the_station_not_ready():
    served = Served(DEFAULT_CLASSES, DEFAULT_PARAMETERS)
    models, health = watch(served)
    asyncio.run(models.wait_ready(asyncio.Event()))
    health.triton_ready = False  # Triton restarted ...
    served.contract = contract_parameters(("GOOD", "SCRATCH"), DEFAULT_PARAMETERS)  # ... with another classifier
    asyncio.run(models.check())
    assert not health.triton_ready and not health.ready

"""Model versions on disk and in the route: the model-level config that carries each version's facts, the served
view that links the versions Triton holds, installing a version from another repository (never overwriting, never
twice), the route's choices, the guardrail rules and the agreement figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.config import GuardrailConfig
from edge.errors import ModelRepositoryError
from edge.models.agreement import rank_correlation
from edge.models.guardrails import Guardrails
from edge.models.pbtxt import (
    SERVE_ALL,
    compose,
    config_parameters,
    config_text,
    facts_for,
    own_config,
    shared_outputs,
)
from edge.models.repository import DIGEST, digest, facts, install, pairs, served, sync_view
from edge.models.served import Route
from tools.build_repository import DEFAULT_PRECISION, MODELS, SOURCE, build


def built(tmp_path: Path, name: str, contents: list[bytes]) -> Path:
    repo = tmp_path / name
    for i, content in enumerate(contents):
        models = tmp_path / f"{name}-models-{len(list(tmp_path.glob(name + '-models-*')))}"
        models.mkdir()
        for model in MODELS:
            (models / f"{model}.onnx").write_bytes(content + model.encode())
        (models / "anomaly_metrics.json").write_text(json.dumps({"pass_band": 0.01, "reject_band": 0.02 + i}))
        build(SOURCE, models, repo, DEFAULT_PRECISION)
    return repo


def test_the_model_level_config_carries_each_versions_facts() -> None:
    own = config_text('name: "anomaly"\nbackend: "python"\n', {"pass_band": 0.1, "digest": "abc"})
    level = compose(own, {2: {"pass_band": "0.1", "digest": "abc"}, 1: {"pass_band": "0.3", "digest": "def"}}, True)
    assert SERVE_ALL in level and own_config(level) == own
    params = config_parameters(level)
    assert facts_for(params, "1") == {"pass_band": "0.3", "digest": "def"}
    assert facts_for(params, "2")["digest"] == "abc"
    assert "version_policy" not in compose(own, {2: {}}, False)  # Triton's default: the newest
    assert facts_for({"pass_band": "0.5"}, "1") == {"pass_band": "0.5"}  # a repository from before version facts


def test_install_copies_a_pair_under_the_next_number_once(tmp_path: Path) -> None:
    served = built(tmp_path, "served", [b"a"])
    other = built(tmp_path, "other", [b"a", b"b"])
    assert install(other, 2, served, MODELS) == (2, True)
    assert install(other, 2, served, MODELS) == (2, False)  # the same digests: already there
    assert install(other, 1, served, MODELS) == (1, False)  # identical to served version 1
    assert install(served, 1, served, MODELS) == (1, False)  # the served repository itself
    for model in MODELS:
        assert facts(served, model, 2)[DIGEST] == digest(other / model / "2") == digest(served / model / "2")
        assert facts(served, model, 2)["version"] == "2" and "installed_from" in facts(served, model, 2)
    assert pairs(served, MODELS) == [1, 2] and not list(served.glob("*/*.partial"))


def test_install_takes_a_version_folder_or_a_folder_of_one_version_per_model(tmp_path: Path) -> None:
    served, other = built(tmp_path, "served", [b"a"]), built(tmp_path, "other", [b"b", b"c"])
    assert install(other / "anomaly" / "1", None, served, MODELS) == (2, True)  # <repository>/<model>/<N>: N
    export = tmp_path / "export"
    for model in MODELS:
        shutil.copytree(other / model / "2", export / model)  # <folder>/<model>/ with its config and files
    assert install(export, None, served, MODELS) == (3, True)
    assert facts(served, "anomaly", 3)[DIGEST] == digest(other / "anomaly" / "2")
    (export / "classifier" / "config.pbtxt").unlink()
    with pytest.raises(ModelRepositoryError, match=r"no config\.pbtxt"):
        install(export, None, tmp_path / "elsewhere", MODELS)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "absent", "not a folder"),
        (lambda root: root.mkdir() or root, "holds no version"),
        (lambda root: (root / "anomaly" / "1").mkdir(parents=True) or root, "holds no version"),
    ],
)
def test_install_refuses_a_broken_source_naming_why(tmp_path: Path, make, message: str) -> None:
    served = built(tmp_path, "served", [b"a"])
    with pytest.raises(ModelRepositoryError, match=message):
        install(make(tmp_path / "source"), None, served, MODELS)
    assert pairs(served, MODELS) == [1]


def test_install_refuses_a_version_the_source_lacks_or_that_holds_no_model_file(tmp_path: Path) -> None:
    served, other = built(tmp_path, "served", [b"a"]), built(tmp_path, "other", [b"b"])
    with pytest.raises(ModelRepositoryError, match="no version 4"):
        install(other, 4, served, MODELS)
    for model in MODELS:
        for path in (other / model / "1").iterdir():
            if path.name != "config.pbtxt":
                path.unlink()
    with pytest.raises(ModelRepositoryError, match="holds no model file"):
        install(other, 1, served, MODELS)


def test_the_view_links_exactly_the_versions_asked_for_and_keeps_its_config_between_changes(tmp_path: Path) -> None:
    repo, view = built(tmp_path, "store", [b"a", b"b", b"c"]), tmp_path / "view"
    assert sync_view(repo, view, MODELS, [1, 3])  # written the first time
    config = (view / "anomaly" / "config.pbtxt").read_text()
    params = config_parameters(config)
    assert served(view, "anomaly") == served(view, "classifier") == [1, 3]
    assert json.loads(params["version_facts"]).keys() == {"1", "2", "3"}  # every installed version's facts
    assert facts_for(params, "1")["reject_band"] == "0.02" and facts_for(params, "3")["reject_band"] == "2.02"
    assert (view / "anomaly" / "3" / "model.onnx").read_bytes() == b"canomaly"
    assert not sync_view(repo, view, MODELS, [2])  # links only: Triton reloads nothing that stays
    assert served(view, "anomaly") == [2] and (view / "anomaly" / "config.pbtxt").read_text() == config
    built(tmp_path, "store", [b"d"])  # a fourth version installed: its facts join, once
    assert sync_view(repo, view, MODELS, [2]) and not sync_view(repo, view, MODELS, [2, 4])
    with pytest.raises(ModelRepositoryError, match="no version 9"):
        sync_view(repo, view, MODELS, [9])


def test_the_view_declares_the_embedding_only_when_every_installed_version_serves_it(tmp_path: Path) -> None:
    repo, view = built(tmp_path, "store", [b"a", b"b"]), tmp_path / "view"
    template = (SOURCE / "classifier" / "config.pbtxt").read_text()
    assert '{ name: "EMBEDDING"' in template
    for version in (1, 2):  # these stand-in graphs have no head: neither version's config declares the output
        assert '"EMBEDDING"' not in (repo / "classifier" / str(version) / "config.pbtxt").read_text()
    newest = repo / "classifier" / "2" / "config.pbtxt"
    newest.write_text(newest.read_text().replace('dims: [ 64 ] }\n]', 'dims: [ 64 ] },\n  { name: "EMBEDDING", '
                                                 'data_type: TYPE_FP32, dims: [ 128 ] }\n]'))  # fmt: skip
    sync_view(repo, view, MODELS, [1, 2])
    level = (view / "classifier" / "config.pbtxt").read_text()
    assert '"EMBEDDING"' not in level and "dims: [ 64 ] }\n]" in level, "version 1 cannot serve it: left out"
    sync_view(repo, view, MODELS, [2])
    assert '"EMBEDDING"' not in (view / "classifier" / "config.pbtxt").read_text(), "version 1 is still installed"
    assert shared_outputs(newest.read_text(), [newest.read_text()]) == newest.read_text()


def test_the_route_sends_canary_tools_to_the_canary_and_copies_to_the_other_version() -> None:
    route = Route("1", shadow="2", shadow_fraction=0.5, canary="3", canary_tools=frozenset({"T2"}))
    assert route.decides("T1", 0.9) == "1" and route.decides("T2", 0.9) == "3"
    assert route.compared("3", 0.9) == "1"  # the live version beside the canary's verdicts
    assert route.compared("1", 0.4) == "2" and route.compared("1", 0.6) is None  # the shadow's fraction
    assert route.serving == ["1", "2", "3"] and route.role("2") == "shadow"
    fraction = Route("1", canary="3", canary_fraction=0.25)
    assert fraction.decides("T1", 0.2) == "3" and fraction.decides("T1", 0.3) == "1"
    assert route.without("3").serving == ["1", "2"] and Route.from_json(route.to_json()) == route


def guard(**overrides: float) -> Guardrails:
    return Guardrails(GuardrailConfig(min_frames=20, window_frames=100, min_reviews=10, **overrides), "3", 0.0)


def test_not_inspected_frames_of_the_canary_break_the_guardrail_past_its_share() -> None:
    g = guard(max_not_inspected=0.05)
    for i in range(40):
        g.frame(True, i % 20 != 0, 0.05)
    assert g.breach() is None  # 2 of 40
    for _ in range(3):
        g.frame(True, False, 0.05)
    breach = g.breach()
    assert breach is not None and breach.rule == "not_inspected" and breach.value == pytest.approx(5 / 43)


def test_the_canary_p99_over_twice_the_live_one_breaks_the_guardrail() -> None:
    g = guard()
    for _ in range(30):
        g.frame(False, True, 0.040)
        g.frame(True, True, 0.070)
    assert g.breach() is None
    for _ in range(5):
        g.frame(True, True, 0.200)
    breach = g.breach()
    assert breach is not None and breach.rule == "latency" and breach.value > 2


def test_no_rule_judges_on_fewer_frames_than_asked() -> None:
    g = guard()
    for _ in range(19):
        g.frame(True, False, 1.0)
        g.compared(True)
    assert g.breach() is None


def test_reviews_break_the_guardrail_on_more_escapes_than_the_live_version() -> None:
    g = guard(max_escape_excess=0.1)
    for i in range(20):
        g.reviewed(False, "AUDIT", i < 2)  # live: 2 escapes in 20 sampled passes
        g.reviewed(True, "AUDIT", i < 3)  # canary: 3 in 20, within the excess
    assert g.breach() is None
    for _ in range(5):
        g.reviewed(True, "AUDIT", True)
    breach = g.breach()
    assert breach is not None and breach.rule == "escapes"


def test_reviews_break_the_guardrail_on_more_false_positives_than_the_live_version() -> None:
    g = guard(max_fpr_excess=0.1)
    for i in range(20):
        g.reviewed(False, "DEFECT", i >= 2)  # live: 2 of 20 flags false
        g.reviewed(True, "DEFECT", i >= 10)  # canary: 10 of 20
    breach = g.breach()
    assert breach is not None and breach.rule == "false_positives" and breach.value == pytest.approx(0.4)


def test_rank_correlation_is_spearmans() -> None:
    assert rank_correlation([(1.0, 10.0), (2.0, 20.0), (3.0, 25.0), (4.0, 100.0)]) == 1.0
    assert rank_correlation([(1.0, 4.0), (2.0, 3.0), (3.0, 2.0), (4.0, 1.0)]) == -1.0
    assert rank_correlation([(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]) is None and rank_correlation([(1.0, 2.0)]) is None

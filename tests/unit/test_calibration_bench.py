"""The calibration benchmark's own arithmetic: the oracle spends the budget exactly under either denominator, the
controllers run every scenario kind, summaries count what they say."""

from __future__ import annotations

import numpy as np
import pytest

from tools.bench import calibration as bench


@pytest.mark.parametrize("per_class", [1, 8])
@pytest.mark.parametrize("model", ["gaussian", "power"])
def test_the_oracle_spends_exactly_the_budget(model: str, per_class: int) -> None:
    sc = bench.Scenario("step", drift=lambda lot: 0.5 if lot >= 5 else 0.0, step_at=5)
    runs = bench.run(model, sc, "oracle", 3, 10, 300, per_class=per_class)
    assert [r.true_fpr for r in runs] == pytest.approx([bench.BUDGET] * 10, rel=1e-3)
    assert all(r.escape == pytest.approx(r.oracle_escape) for r in runs)
    if per_class > 1:  # over all negatives the class may spend more of its own: a lower threshold
        alone = bench.run(model, sc, "oracle", 3, 10, 300)
        assert all(a.threshold < b.threshold for a, b in zip(runs, alone, strict=True))


def test_the_normal_quantile_by_bisection() -> None:
    assert bench._z(0.001) == pytest.approx(3.090232, abs=1e-5)
    assert bench._z(0.5) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", ["dispositions a lot late", "4 tools pooled, aging", "tool swap + transfer"])
def test_the_controllers_run_every_kind_of_scenario_within_bounds(name: str) -> None:
    sc = next(s for s in bench.scenarios(60) if s.name == name)
    for kind in ("seed", "statistical"):
        runs = [bench.run("gaussian", sc, kind, seed, 60, 300) for seed in range(2)]
        assert bench.violations(runs) == 0 and all(len(r) == 60 for r in runs)
        m = bench.summarise(runs, sc, 30)
        assert np.all((m["over"] >= 0) & (m["over"] <= 1)) and np.all(m["true_fpr"] > 0)

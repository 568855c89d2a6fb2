"""The synthetic fab: determinism, agreement between processes, truth labels, masks, optics, process logs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.process_params import DEFAULT_PARAMETERS, THERMAL_CHEMICAL
from edge.taxonomy import DEFAULT_CLASSES, DEFECT_CLASSES, GOOD
from tools.synth import Fab, grey, label_for, make_dataset, render_die, tool_optics
from tools.synth_mes import NOMINAL, SIGMA

REPO = Path(__file__).resolve().parents[2]
PLAN_ARGS = dict(lots=2, wafers_per_lot=3, dies_per_wafer=6, defect_rate=0.5)
DIGEST = """
import hashlib, json
from tools.synth import Fab
def digest(seed, plan_args):
    fab = Fab(seed)
    h = hashlib.sha256()
    for wafer in fab.plan(**plan_args):
        h.update(repr(wafer).encode())
        h.update(json.dumps(fab.process_log(wafer, ts=1.0e9), sort_keys=True).encode())
        die = fab.render(wafer.dies[-1], wafer)
        h.update(die.image.tobytes() + die.mask.tobytes())
    return h.hexdigest()
"""


def _digest(seed: int) -> str:
    scope: dict = {}
    exec(DIGEST, scope)
    return scope["digest"](seed, PLAN_ARGS)


def test_render_is_deterministic_per_seed() -> None:
    optics = tool_optics("AOI-01")
    a, mask_a = render_die("PART-MD", 123, optics)
    b, mask_b = render_die("PART-MD", 123, optics)
    c, _ = render_die("PART-MD", 124, optics)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(a, c)


def test_dataset_is_deterministic_per_seed() -> None:
    one, two = make_dataset(5, 6), make_dataset(5, 6)
    for field in ("images", "labels", "process", "present", "notes", "masks"):
        assert np.array_equal(getattr(one, field), getattr(two, field)), field
    assert not np.array_equal(one.images, make_dataset(6, 6).images)


def test_two_processes_agree_on_the_plan() -> None:
    code = DIGEST + f"\nprint(digest(11, {PLAN_ARGS!r}))"
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == _digest(11)
    assert _digest(12) != _digest(11)


def test_plan_shape_and_unique_frame_ids() -> None:
    fab = Fab(3, tool_ids=("AOI-01", "AOI-02"))
    wafers = fab.plan(lots=4, wafers_per_lot=2, dies_per_wafer=9, defect_rate=0.3)
    assert len(wafers) == 8 and {w.tool_id for w in wafers} == {"AOI-01", "AOI-02"}
    for tool in ("AOI-01", "AOI-02"):
        ids = [d.frame_id for w in wafers if w.tool_id == tool for d in w.dies]
        assert len(ids) == len(set(ids))
    assert {w.lot_id for w in wafers if w.tool_id == "AOI-01"}.isdisjoint(
        {w.lot_id for w in wafers if w.tool_id == "AOI-02"}
    )
    assert [d.die for d in wafers[0].dies] == [(i % 3, i // 3) for i in range(9)]


def test_discolor_is_a_defect_only_with_an_excursion() -> None:
    assert label_for("DISCOLOR", excursion=True) == "DISCOLOR"
    assert label_for("DISCOLOR", excursion=False) == GOOD
    assert label_for("PART-SM", excursion=False) == "PART-SM"
    fab = Fab(7, excursion_rate=0.5)
    wafers = fab.plan(lots=3, wafers_per_lot=4, dies_per_wafer=4, defect_rate=1.0, looks=("DISCOLOR",))
    assert {w.excursion for w in wafers} == {True, False}
    for wafer in wafers:
        assert all(d.label == ("DISCOLOR" if wafer.excursion else GOOD) for d in wafer.dies)
    ds = make_dataset(8, 48, classes=(GOOD, "DISCOLOR"))
    discolor_look = ds.looks == DEFAULT_CLASSES.index("DISCOLOR")
    assert discolor_look.any() and (ds.labels == 0).any()
    assert np.array_equal(ds.labels[discolor_look] != 0, ds.excursion[discolor_look])


@pytest.mark.parametrize("look", DEFAULT_CLASSES)
def test_mask_marks_defects_only(look: str) -> None:
    optics = tool_optics("AOI-02")
    for seed in range(3):
        _, mask = render_die(look, seed, optics)
        assert mask.shape == (256, 256) and mask.dtype == bool
        assert mask.any() == (look != GOOD), (look, seed)


def test_defects_change_the_image() -> None:
    optics = tool_optics("AOI-01")
    clean, _ = render_die(GOOD, 9, optics)
    for look in DEFECT_CLASSES:
        image, mask = render_die(look, 9, optics)
        inside = np.abs(image.astype(int) - clean.astype(int)).mean(-1)[mask].mean()
        assert inside > 4.0, look


def test_tool_signature_changes_the_same_die() -> None:
    a, _ = render_die(GOOD, 42, tool_optics("AOI-01"))
    b, _ = render_die(GOOD, 42, tool_optics("AOI-02"))
    shifted, _ = render_die(GOOD, 42, tool_optics("AOI-01", shift=1.0))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 3.0
    assert np.abs(a.astype(int) - shifted.astype(int)).mean() > 0.5
    assert grey(a[None]).shape == (1, 1, 256, 256)


def test_process_log_has_48_finite_parameters() -> None:
    fab = Fab(1, recipe_id="R-TEST")
    wafer = fab.plan(lots=1, wafers_per_lot=1, dies_per_wafer=1, defect_rate=0.0)[0]
    log = json.loads(json.dumps(fab.process_log(wafer, ts=1700000000.0)))
    assert {k: log[k] for k in ("lot_id", "wafer_id", "recipe_id", "tool_id")} == {
        "lot_id": wafer.lot_id, "wafer_id": wafer.wafer_id, "recipe_id": "R-TEST", "tool_id": wafer.tool_id,
    }  # fmt: skip
    assert list(log["params"]) == list(DEFAULT_PARAMETERS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in log["params"].values())


def test_excursion_moves_thermal_chemical_parameters() -> None:
    fab = Fab(2, excursion_rate=0.5)
    wafers = fab.plan(lots=4, wafers_per_lot=5, dies_per_wafer=1, defect_rate=0.0)
    assert {w.excursion for w in wafers} == {True, False}
    tc = np.array([n in THERMAL_CHEMICAL for n in DEFAULT_PARAMETERS])
    for wafer in wafers:
        values = np.array(list(fab.process_log(wafer, ts=0.0)["params"].values()))
        z = np.abs(values - NOMINAL) / SIGMA
        assert z[~tc].max() < 4.0
        assert ((z[tc] >= 3.9).sum() >= 3) == wafer.excursion


def test_dataset_arrays() -> None:
    ds = make_dataset(4, 20)
    assert ds.images.shape == (20, 256, 256, 3) and ds.images.dtype == np.uint8
    assert ds.process.shape == (20, 48) and ds.process.dtype == np.float32
    assert ds.present.shape == (20, 2) and ds.notes.shape == (20, 32) and ds.notes.dtype == np.int64
    assert np.all((ds.process != 0).any(1) == (ds.present[:, 0] > 0))
    assert np.all((ds.notes > 0).any(1) == (ds.present[:, 1] > 0))
    assert make_dataset(4, 4, with_process=False).present[:, 0].sum() == 0


def test_drift_moves_the_image_and_no_drift_is_the_default() -> None:
    from tools.synth import Drift

    assert tool_optics("AOI-01", drift=Drift()) == tool_optics("AOI-01")
    new, _ = render_die(GOOD, 7, tool_optics("AOI-01"))
    for drift in (Drift(aging=1.0), Drift(reflectance=0.15), Drift(temperature=Drift.cycle(6.0))):
        moved, _ = render_die(GOOD, 7, tool_optics("AOI-01", drift=drift))
        assert np.abs(new.astype(int) - moved.astype(int)).mean() > 0.5, drift
    aged = tool_optics("AOI-01", drift=Drift(aging=1.0))
    assert aged.blur_sigma > tool_optics("AOI-01").blur_sigma and aged.vignette > tool_optics("AOI-01").vignette


def test_fab_drift_applies_to_one_tool() -> None:
    from tools.synth import Drift

    fab = Fab(2)
    before = fab.optics("AOI-02")
    fab.set_drift("AOI-01", Drift(aging=0.5))
    assert fab.optics("AOI-01") == tool_optics("AOI-01", drift=Drift(aging=0.5)) and fab.optics("AOI-02") == before


def test_borderline_cases_sit_on_both_sides_of_the_radius_tolerance() -> None:
    from tools.synth_defects import RADIUS_TOLERANCE, SMALL_BUMP_MAX, small_bump, within_tolerance
    from tools.synth_render import BUMP_RADIUS, base_scene

    rng = np.random.default_rng(0)
    inside, outside = [], []
    for _ in range(200):
        scene = base_scene(rng)
        nominal = scene.radius.max()
        within_tolerance(scene, rng)
        inside.append(scene.radius.min() / nominal)
        scene = base_scene(rng)
        nominal = scene.radius.max()
        assert small_bump(scene, rng).any()
        outside.append(scene.radius.min() / nominal)
    assert min(inside) >= RADIUS_TOLERANCE and max(outside) <= SMALL_BUMP_MAX
    assert np.mean(np.array(outside) > 0.72) > 0.15  # a share of BUMP-SM dies just outside the tolerance
    assert abs(nominal - BUMP_RADIUS) < 0.3

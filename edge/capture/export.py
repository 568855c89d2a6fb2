"""The reviewed captures as a labelled folder (the own-data format, README "A fab's own labelled dies"), so the dies
a station kept and its engineers judged go back into curation and training (``edge-inspect data select``,
``edge-inspect train``):

    OUT/images/<label>/<capture id>.png   the die as the models saw it (a copy of the capture's PNG)
    OUT/labels.csv                        id,split,class,tool_id,recipe_id,lot_id,wafer_id,die_x,die_y,path
    OUT/process.csv                       the wafers' notes, where a capture kept one (no parameter values: a
                                          capture keeps which were anomalous, not the log)

A die's class is what its reviewer said (``calibration.store.Label.label``: the class, GOOD for a false alarm);
a die judged NOVEL (a defect no class names), one still UNCLASSIFIED, and one whose capture is gone are left out and
counted. The split is left empty (training splits by wafer). The folder is written under ``OUT.partial`` and renamed
into place, so a reader never sees half of it; ``OUT`` must not exist.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from calibration.store import NOVEL, CalibrationStore
from edge.capture.store import CaptureStore
from edge.errors import CaptureError

LABEL_COLUMNS = ("id", "split", "class", "tool_id", "recipe_id", "lot_id", "wafer_id", "die_x", "die_y", "path")
UNNAMED = (NOVEL, "UNCLASSIFIED")


@dataclass
class Exported:
    dies: Counter[str] = field(default_factory=Counter)  # by class
    left_out: Counter[str] = field(default_factory=Counter)  # by why


def export_reviewed(captures: CaptureStore, calibration: CalibrationStore, out: Path,
                    recipe: str | None = None) -> Exported:  # fmt: skip
    """Write every reviewed capture (of ``recipe``, if given) into the labelled folder ``out``."""
    if out.exists():
        raise CaptureError(f"{out} exists: give a new folder")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    done = Exported()
    rows, notes = [], {}
    reviewed = [r for r in calibration.labels(reviewed=True) if recipe is None or r.recipe == recipe]
    kept = {c.capture_id: c for c in captures.facts([r.event_id for r in reviewed])}
    try:
        for review in reviewed:
            capture = kept.get(review.event_id)
            label = str(review.label)
            if capture is None or capture.image is None:
                done.left_out["capture gone"] += 1
                continue
            if label in UNNAMED:
                done.left_out[f"labelled {label}"] += 1
                continue
            relative = f"images/{label}/{capture.capture_id}.png"
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            (partial / relative).write_bytes(captures.image_bytes(capture))
            rows.append([capture.capture_id, "", label, capture.tool_id, capture.recipe_id, capture.lot_id,
                         capture.wafer_id, capture.die[0], capture.die[1], relative])  # fmt: skip
            if capture.facts.get("note"):
                notes[(capture.lot_id, capture.wafer_id, capture.recipe_id, capture.tool_id)] = capture.facts["note"]
            done.dies[label] += 1
        partial.mkdir(parents=True, exist_ok=True)
        with (partial / "labels.csv").open("w", newline="") as f:
            csv.writer(f).writerows([LABEL_COLUMNS, *rows])
        if notes:
            with (partial / "process.csv").open("w", newline="") as f:
                csv.writer(f).writerows([("lot_id", "wafer_id", "recipe_id", "tool_id", "notes"),
                                         *((*key, note) for key, note in sorted(notes.items()))])  # fmt: skip
        os.replace(partial, out)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise CaptureError(f"cannot write the labelled folder {out}: {err}") from err
    return done

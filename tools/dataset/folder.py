"""A fab's labelled folder, read and checked whole before anything trains (README, "Train on your own dies").

    DIR/images/<split>/<class>/<id>.png   8- or 16-bit PNG, grey or RGB, at most 2048 px a side
    DIR/labels.csv    id,split,class,tool_id,recipe_id,lot_id,wafer_id,die_x,die_y,path   (path relative to DIR)
    DIR/process.csv   lot_id,wafer_id,recipe_id,tool_id,<parameter columns>[,notes]     (optional)

``validate`` returns the set and a report: every error that refuses the set (by file and line, the header being
line 1) and every warning about data that is usable but suspicious. ``split`` is given on every row or on none;
when on none, the split is made by wafer (``tools.dataset.split``). Classes come from the data (``GOOD`` required,
at most 64), parameters from ``process.csv``'s header; a die whose wafer has no process row trains without it.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge.contract.images import unusable
from edge.errors import EdgeError
from edge.ingest.imaging import PNG_MAGIC
from edge.taxonomy import GOOD
from tools.dataset.split import SPLITS, missing, split_by_wafer

LABELS = "labels.csv"
PROCESS = "process.csv"
LABEL_COLUMNS = ("id", "split", "class", "tool_id", "recipe_id", "lot_id", "wafer_id", "die_x", "die_y", "path")
PROCESS_KEYS = ("lot_id", "wafer_id", "recipe_id", "tool_id")
NOTES = "notes"  # an optional process.csv column: the operator's free-text note on the wafer, not a parameter
MAX_NOTE = 2000  # characters, as on the wire
REQUIRED = ("id", "class", "tool_id", "recipe_id", "lot_id", "wafer_id", "path")
MAX_SIDE = 2048
MAX_CLASSES = 64
MAX_NAME = 64
MIN_TRAIN = 5  # training images a class needs

ProcessKey = tuple[str, str, str, str]  # (lot_id, wafer_id, recipe_id, tool_id)


@dataclass(frozen=True, slots=True)
class Problem:
    file: str  # relative to DIR
    line: int | None  # in that file, the header being line 1
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass
class Report:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, file: str, line: int | None, message: str) -> None:
        self.errors.append(Problem(file, line, message))

    def warn(self, file: str, line: int | None, message: str) -> None:
        self.warnings.append(Problem(file, line, message))

    def as_dict(self) -> dict[str, list[str]]:
        return {"errors": [str(p) for p in self.errors], "warnings": [str(p) for p in self.warnings]}


class DataSetRefused(EdgeError):
    """The folder breaks the own-data contract; ``report`` lists every problem."""

    def __init__(self, root: Path, report: Report) -> None:
        lines = "\n  ".join(str(p) for p in report.errors)
        super().__init__(f"{root}: {len(report.errors)} problem(s) refuse this data set:\n  {lines}")
        self.report = report


@dataclass(frozen=True, slots=True)
class Die:
    id: str
    split: str  # train | val | test (made by wafer when the folder gives none)
    cls: str
    tool_id: str
    recipe_id: str
    lot_id: str
    wafer_id: str
    die_x: int
    die_y: int
    path: Path  # absolute
    line: int  # in labels.csv

    @property
    def wafer(self) -> tuple[str, str]:
        return (self.lot_id, self.wafer_id)

    @property
    def process_key(self) -> ProcessKey:
        return (self.lot_id, self.wafer_id, self.recipe_id, self.tool_id)


@dataclass(frozen=True)
class DataSet:
    root: Path
    dies: tuple[Die, ...]
    classes: tuple[str, ...]  # GOOD first, then by name
    parameters: tuple[str, ...]  # process.csv's header order
    process: Mapping[ProcessKey, tuple[float, ...]]  # NaN where a cell is empty
    notes: Mapping[ProcessKey, str]  # the wafers whose row has a note
    split_given: bool

    def split(self, name: str) -> list[Die]:
        return [d for d in self.dies if d.split == name]


def load(root: Path, seed: int = 0, training: bool = True) -> tuple[DataSet, Report]:
    """The set and its warnings; ``DataSetRefused`` listing every error when it breaks the contract (``training``
    False: what only training needs, enough images per class and split, is a warning)."""
    data, report = validate(root, seed, training=training)
    if data is None:
        raise DataSetRefused(root, report)
    return data, report


def validate(root: Path, seed: int = 0, images: bool = True, training: bool = True) -> tuple[DataSet | None, Report]:
    """Check the whole folder; the set (None when any error) and the report. ``images``: decode every image;
    ``training``: what only training needs (a split of every class, enough images per class) is an error, else a
    warning (the data tools read a pool as it is)."""
    report = Report()
    root = root.resolve()
    if not root.is_dir():
        report.error(str(root), None, "not a folder")
        return None, report
    rows = _label_rows(root, report)
    dies = _dies(root, rows, report)
    if images:
        _check_images(root, dies, report)
    parameters, process, notes = _process(root, report)
    classes = _classes(dies, report)
    split_given, dies = _split(dies, report, seed, report.error if training else report.warn)
    _warn(dies, parameters, process, report, process_file=(root / PROCESS).is_file())
    if not report.ok:
        return None, report
    return DataSet(root, tuple(dies), classes, parameters, process, notes, split_given), report


def write_csvs(
    root: Path, labels: Sequence[Sequence[object]], process: Sequence[Mapping[str, object]], columns: Sequence[str]
) -> None:
    """Write ``labels.csv`` (rows in ``LABEL_COLUMNS`` order) and ``process.csv`` (dicts with ``PROCESS_KEYS`` and
    ``columns``: the parameters, and ``notes`` if any) under ``root``: the generators' side of the contract."""
    with (root / LABELS).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(labels)
    with (root / PROCESS).open("w", newline="") as f:
        rows = csv.DictWriter(f, [*PROCESS_KEYS, *columns])
        rows.writeheader()
        rows.writerows(process)


def _read_csv(path: Path, name: str, report: Report) -> tuple[list[str], Iterator[tuple[int, list[str]]]] | None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        report.error(name, None, "missing")
        return None
    except (OSError, UnicodeDecodeError) as err:
        report.error(name, None, f"unreadable: {err}")
        return None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    return header, ((reader.line_num, row) for row in reader if any(cell.strip() for cell in row))


def _label_rows(root: Path, report: Report) -> list[tuple[int, dict[str, str]]]:
    read = _read_csv(root / LABELS, LABELS, report)
    if read is None:
        return []
    header, rows = read
    absent = [c for c in LABEL_COLUMNS if c not in header]
    if absent:
        report.error(LABELS, 1, f"header lacks {', '.join(absent)} (needs {','.join(LABEL_COLUMNS)})")
        return []
    out = []
    for line, row in rows:
        if len(row) != len(header):
            report.error(LABELS, line, f"{len(row)} fields, the header has {len(header)}")
            continue
        out.append((line, {k: v.strip() for k, v in zip(header, row, strict=True)}))
    return out


def _dies(root: Path, rows: list[tuple[int, dict[str, str]]], report: Report) -> list[Die]:
    dies: list[Die] = []
    first: dict[str, int] = {}
    for line, row in rows:
        problems = [f"empty {k}" for k in REQUIRED if not row[k]]
        if row["split"] and row["split"] not in SPLITS:
            problems.append(f"unknown split {row['split']!r} (train, val, test, or empty on every row)")
        cls = row["class"]
        if cls and (len(cls) > MAX_NAME or not cls.isprintable()):
            problems.append(f"class name {cls[:80]!r} is over {MAX_NAME} characters or not printable")
        xy = []
        for k in ("die_x", "die_y"):
            try:
                xy.append(int(row[k]))
            except ValueError:
                problems.append(f"{k} {row[k]!r} is not an integer")
        path = (root / row["path"]).resolve()
        if row["path"] and not path.is_relative_to(root):
            problems.append(f"path {row['path']!r} is outside the data folder")
        if row["id"] in first:
            problems.append(f"duplicate id {row['id']!r} (first on line {first[row['id']]})")
        first.setdefault(row["id"], line)
        report.errors.extend(Problem(LABELS, line, p) for p in problems)
        if not problems:
            dies.append(
                Die(
                    row["id"],
                    row["split"],
                    cls,
                    row["tool_id"],
                    row["recipe_id"],
                    row["lot_id"],
                    row["wafer_id"],
                    xy[0],
                    xy[1],
                    path,
                    line,
                )
            )
    return dies


def _image_problem(path: Path) -> str | None:
    """Why the image at ``path`` cannot be used; None when it can."""
    try:
        with path.open("rb") as f:
            magic = f.read(len(PNG_MAGIC))
    except FileNotFoundError:
        return "image missing"
    except OSError as err:
        return f"image unreadable: {err.strerror}"
    if magic != PNG_MAGIC:
        return "not a PNG"
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return "image unreadable (truncated or corrupt PNG)"
    reason = unusable(image)  # the serving rule's own test of depth and channels
    if reason is not None:
        return reason
    if max(image.shape[:2]) > MAX_SIDE:
        return f"{image.shape[0]}x{image.shape[1]} px: at most {MAX_SIDE} px a side"
    return None


def _check_images(root: Path, dies: list[Die], report: Report) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:  # OpenCV decodes outside the GIL
        found = list(pool.map(_image_problem, [d.path for d in dies]))
    for die, problem in zip(dies, found, strict=True):
        if problem:
            report.error(LABELS, die.line, f"{problem}: {die.path.relative_to(root)}")


Process = tuple[tuple[str, ...], dict[ProcessKey, tuple[float, ...]], dict[ProcessKey, str]]


def _process(root: Path, report: Report) -> Process:
    """Parameter names, each wafer's values, and the wafers' notes."""
    if not (root / PROCESS).is_file():
        return (), {}, {}
    read = _read_csv(root / PROCESS, PROCESS, report)
    if read is None:
        return (), {}, {}
    header, rows = read
    absent = [c for c in PROCESS_KEYS if c not in header]
    repeated = sorted(n for n, k in Counter(header).items() if k > 1)
    if absent or repeated or "" in header:
        why = [f"lacks {', '.join(absent)}"] if absent else []
        why += [f"repeats {', '.join(repeated)}"] if repeated else []
        why += ["has an unnamed column"] if "" in header else []
        report.error(PROCESS, 1, f"header {'; '.join(why)}")
        return (), {}, {}
    names = tuple(h for h in header if h not in (*PROCESS_KEYS, NOTES))
    process: dict[ProcessKey, tuple[float, ...]] = {}
    notes: dict[ProcessKey, str] = {}
    first: dict[ProcessKey, int] = {}
    for line, row in rows:
        if len(row) != len(header):
            report.error(PROCESS, line, f"{len(row)} fields, the header has {len(header)}")
            continue
        cells = dict(zip(header, (c.strip() for c in row), strict=True))
        key = (cells["lot_id"], cells["wafer_id"], cells["recipe_id"], cells["tool_id"])
        problems = [f"empty {k}" for k in PROCESS_KEYS if not cells[k]]
        if key in first:
            problems.append(f"a second row for lot {key[0]} wafer {key[1]} (first on line {first[key]})")
        values = []
        for name in names:
            value = _number(cells[name])
            if value is None:
                problems.append(f"parameter {name!r}: {cells[name]!r} is not a number")
            values.append(math.nan if value is None else value)
        note = cells.get(NOTES, "")
        if len(note) > MAX_NOTE:
            problems.append(f"note of {len(note)} characters (at most {MAX_NOTE})")
        report.errors.extend(Problem(PROCESS, line, p) for p in problems)
        first.setdefault(key, line)
        if not problems:
            process[key] = tuple(values)
            if note:
                notes[key] = note
    return names, process, notes


def _number(cell: str) -> float | None:
    """A parameter value: a finite number, or NaN for an empty cell (missing); None when it is not a number."""
    if not cell:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _classes(dies: list[Die], report: Report) -> tuple[str, ...]:
    names = sorted({d.cls for d in dies})
    if dies and GOOD not in names:
        report.error(LABELS, None, f"no {GOOD} dies: the anomaly model trains on {GOOD} only")
    if len(names) > MAX_CLASSES:
        report.error(LABELS, None, f"{len(names)} classes: at most {MAX_CLASSES}")
    return tuple([GOOD] * (GOOD in names) + [n for n in names if n != GOOD])


def _split(
    dies: list[Die], report: Report, seed: int, short: Callable[[str, int | None, str], None]
) -> tuple[bool, list[Die]]:
    """``short``: how a class too small for training is reported (an error, or a warning for the data tools)."""
    given = [d for d in dies if d.split]
    if given and len(given) < len(dies):
        empty = [d.line for d in dies if not d.split]
        report.error(
            LABELS,
            empty[0],
            f"split is empty on {len(empty)} rows (lines {_lines(empty)}) "
            "and given on others: give it on every row or on none",
        )
        return True, dies
    if given:
        splits_of: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for d in dies:
            splits_of[d.wafer][d.split].append(d.line)
        for (lot, wafer), where in sorted(splits_of.items()):
            if len(where) > 1:
                placed = "; ".join(f"{s} (lines {_lines(lines)})" for s, lines in sorted(where.items()))
                report.error(
                    LABELS,
                    min(min(v) for v in where.values()),
                    f"wafer {wafer} of lot {lot} is in more than one split: {placed}",
                )
    else:
        pairs = [(d.wafer, d.cls) for d in dies]
        assignment = split_by_wafer(pairs, seed)
        for cls, absent in missing(assignment, pairs).items():
            wafers = len({w for w, c in pairs if c == cls})
            short(
                LABELS,
                None,
                f"class {cls!r} is on {wafers} wafer(s): a split by wafer cannot "
                f"put it in {', '.join(absent)} (it needs dies on at least 3 wafers)",
            )
        dies = [replace(d, split=assignment[d.wafer]) for d in dies]
    train = Counter(d.cls for d in dies if d.split == "train")
    held = {(d.cls, d.split) for d in dies}
    for cls in sorted({d.cls for d in dies}):
        if train[cls] < MIN_TRAIN:
            short(LABELS, None, f"class {cls!r} has {train[cls]} training images (at least {MIN_TRAIN})")
        for split in ("val", "test"):
            if given and (cls, split) not in held:
                report.warn(LABELS, None, f"class {cls!r} has no {split} images")
    return bool(given), dies


def _warn(
    dies: list[Die],
    parameters: tuple[str, ...],
    process: Mapping[ProcessKey, tuple[float, ...]],
    report: Report,
    process_file: bool,
) -> None:
    if not process_file:
        report.warn(PROCESS, None, "missing: the classifier trains without the process log")
    elif process:
        columns = np.array(list(process.values()), dtype=np.float64).reshape(len(process), len(parameters))
        for name, column in zip(parameters, columns.T, strict=True):
            present = column[~np.isnan(column)]
            if len(present) > 1 and np.all(present == present[0]):
                report.warn(PROCESS, None, f"parameter {name!r} is constant ({present[0]:g})")
        without = [d for d in dies if d.process_key not in process]
        if without:
            wafers = len({d.process_key for d in without})
            report.warn(
                LABELS,
                None,
                f"{len(without)} dies on {wafers} wafer(s) have no process row: they train with the process log absent",
            )
    tools_of: dict[str, set[str]] = defaultdict(set)
    for d in dies:
        tools_of[d.cls].add(d.tool_id)
    if len({d.tool_id for d in dies}) > 1:
        for cls, tools in sorted(tools_of.items()):
            if len(tools) == 1:
                report.warn(
                    LABELS,
                    None,
                    f"class {cls!r} is only on tool {next(iter(tools))}: the model may learn the tool, not the defect",
                )


def _lines(lines: list[int], shown: int = 8) -> str:
    text = ", ".join(map(str, lines[:shown]))
    return text + (f" and {len(lines) - shown} more" if len(lines) > shown else "")

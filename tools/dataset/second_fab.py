"""A second synthetic fab, unlike the project's generator, written out in the own-data format.

    python -m tools.dataset.second_fab --out DIR [--dies 3000] [--seed 7] [--no-split]

It exists to measure training on a fab's own data without grading the model on the generator it was designed
around. What differs from ``tools.synth``:
- grey 8-bit dies of 240x320 px (not square, not the model's input size);
- a non-periodic layout per recipe: Manhattan metal lines of random lengths, widths and directions, and pads,
  the same on every die of a recipe up to a small stage offset (no bump grid, no repeating texture);
- two tools with their own optics: ``OPT-A`` sharp, ``OPT-B`` softer, darker, vignetted, noisier;
- its own classes and their shares of the dies: GOOD 83%, PARTICLE 6%, BRIDGE 2% and OPEN 1.5% (rare),
  SCUFF 4%, HAZE 3.5%; HAZE is a soft bright tint that is a defect only on a wafer whose bake ran hot (a thermal
  excursion in ``bake_temp_c``); the same tint on a wafer baked normally is cosmetic, labelled GOOD; a BRIDGE is
  metal across the gap from one line to the next (3-16 px), an OPEN a 4 px cut across a line's whole width, so
  every defect a label names is on the die;
- its own 12 process parameters, correlated within their module.
Wafers hold 20 dies; lots hold 5 wafers; every lot runs on one tool and one recipe.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from tools.dataset.folder import write_csvs

SHAPE = (240, 320)  # (height, width)
TOOLS = ("OPT-A", "OPT-B")
RECIPES = ("M1-ROUTE", "M2-ROUTE")
DIES_PER_WAFER = 20
WAFERS_PER_LOT = 5
CLASS_SHARES = {"GOOD": 0.83, "PARTICLE": 0.06, "SCUFF": 0.04, "HAZE": 0.035, "BRIDGE": 0.02, "OPEN": 0.015}
HAZE_ON_HOT_WAFER = CLASS_SHARES["HAZE"] / 0.12  # HAZE dies all sit on hot-bake wafers (12% of them)
COSMETIC_HAZE = 0.04  # share of GOOD dies on normally baked wafers that carry the same tint as HAZE
HOT_BAKE_WAFERS = 0.12  # share of wafers whose bake ran hot (HAZE dies are drawn on these only)
PARAMETERS = {  # name: (nominal, sigma, module)
    "bake_temp_c": (115.0, 0.4, "bake"),
    "bake_time_s": (60.0, 0.8, "bake"),
    "resist_nm": (120.0, 1.5, "coat"),
    "spin_rpm": (3000.0, 20.0, "coat"),
    "dose_mj": (28.0, 0.35, "expose"),
    "focus_nm": (0.0, 10.0, "expose"),
    "etch_s": (50.0, 0.7, "etch"),
    "etch_w": (450.0, 5.0, "etch"),
    "chamber_mtorr": (15.0, 0.3, "etch"),
    "ar_sccm": (100.0, 1.5, "etch"),
    "rinse_s": (30.0, 0.5, "clean"),
    "humidity_pct": (43.0, 1.0, "clean"),
}
HOT_BAKE_SIGMA = 7.0  # how far a hot bake sits over nominal, in sigmas


def layout(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """A recipe's routing layer: background 0.25, metal 0.7, pads 0.85, before optics; larger than a die by the
    stage's travel."""
    h, w = SHAPE[0] + 8, SHAPE[1] + 8
    image = np.full((h, w), 0.25, np.float32)
    for _ in range(int(rng.integers(28, 40))):
        width = int(rng.integers(3, 9))
        if rng.random() < 0.55:  # horizontal
            y, x0 = int(rng.integers(0, h)), int(rng.integers(0, w - 40))
            cv2.rectangle(image, (x0, y), (min(w, x0 + int(rng.integers(40, 260))), y + width), 0.7, -1)
        else:
            x, y0 = int(rng.integers(0, w)), int(rng.integers(0, h - 40))
            cv2.rectangle(image, (x, y0), (x + width, min(h, y0 + int(rng.integers(40, 200)))), 0.7, -1)
    for _ in range(int(rng.integers(3, 7))):
        x, y = int(rng.integers(10, w - 30)), int(rng.integers(10, h - 30))
        cv2.rectangle(image, (x, y), (x + 18, y + 18), 0.85, -1)
    return image


METAL = (0.6, 0.8)  # grey levels of lines before optics (background 0.25, pads 0.85)
GAP = (3, 16)  # pixels of background a bridge spans


def _is_metal(die: npt.NDArray[np.float32], y: int, x: int) -> bool:
    h, w = die.shape
    return 0 <= y < h and 0 <= x < w and METAL[0] < die[y, x] < METAL[1]


def _run(die: npt.NDArray[np.float32], y: int, x: int, dy: int, dx: int) -> int:
    """Metal pixels from (y, x) onwards in direction (dy, dx), (y, x) included."""
    n = 0
    while _is_metal(die, y + n * dy, x + n * dx):
        n += 1
    return n


def _metal_points(
    die: npt.NDArray[np.float32], rng: np.random.Generator, tries: int = 20_000
) -> Iterator[tuple[int, int]]:
    """Up to ``tries`` metal pixels (y, x) of ``die``, drawn at random."""
    ys, xs = np.nonzero((die > METAL[0]) & (die < METAL[1]))
    for _ in range(tries):
        i = int(rng.integers(0, len(ys)))
        yield int(ys[i]), int(xs[i])


def _bridge(die: npt.NDArray[np.float32], rng: np.random.Generator) -> bool:
    """Metal across the gap between two lines: from a line's edge straight over background to the next metal."""
    for y, x in _metal_points(die, rng):
        dy, dx = ((0, 1), (0, -1), (1, 0), (-1, 0))[int(rng.integers(0, 4))]
        if _is_metal(die, y + dy, x + dx):
            continue
        k = 1
        while k <= GAP[1] and not _is_metal(die, y + k * dy, x + k * dx) and 0 <= y + k * dy < die.shape[0] \
                and 0 <= x + k * dx < die.shape[1]:  # fmt: skip
            k += 1
        if GAP[0] <= k - 1 and k <= GAP[1] and _is_metal(die, y + k * dy, x + k * dx):
            end = (x + k * dx, y + k * dy)
            half = (1 if dx == 0 else 0, 1 if dy == 0 else 0)  # 3 px wide across the walk
            cv2.rectangle(die, (min(x, end[0]) - half[0], min(y, end[1]) - half[1]),
                          (max(x, end[0]) + half[0], max(y, end[1]) + half[1]), 0.7, -1)  # fmt: skip
            return True
    return False


def _open(die: npt.NDArray[np.float32], rng: np.random.Generator) -> bool:
    """A cut through a line: a 4 px gap along it, across its whole width (and a pixel more each side)."""
    for y, x in _metal_points(die, rng):
        left, right = _run(die, y, x, 0, -1), _run(die, y, x, 0, 1)
        up, down = _run(die, y, x, -1, 0), _run(die, y, x, 1, 0)
        across, along = up + down - 1, left + right - 1  # a horizontal line's width and length here
        if along > 3 * across and 3 <= across <= 9:  # on a horizontal line, away from crossings
            cv2.rectangle(die, (x - 2, y - up), (x + 1, y + down - 1), 0.25, -1)
            return True
        if across > 3 * along and 3 <= along <= 9:  # on a vertical line
            cv2.rectangle(die, (x - left, y - 2), (x + right - 1, y + 1), 0.25, -1)
            return True
    return False


def draw_defect(die: npt.NDArray[np.float32], cls: str, rng: np.random.Generator) -> None:
    """Paint ``cls`` onto a die (in place, before optics)."""
    h, w = die.shape
    if cls == "PARTICLE":  # a dark irregular blob
        cx, cy = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
        pts = [(cx + int(r * np.cos(a)), cy + int(r * np.sin(a)))
               for a, r in zip(np.linspace(0, 2 * np.pi, 9)[:-1], rng.uniform(3, 9, 8), strict=True)]  # fmt: skip
        cv2.fillPoly(die, [np.array(pts, np.int32)], float(rng.uniform(0.02, 0.12)))
    elif cls in ("BRIDGE", "OPEN") and not (_bridge if cls == "BRIDGE" else _open)(die, rng):
        raise RuntimeError(f"no place for a {cls} on this layout")
    elif cls == "SCUFF":  # a long thin bright mark at an angle
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        angle, length = rng.uniform(0, np.pi), int(rng.integers(60, 160))
        end = (int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle)))
        cv2.line(die, (x0, y0), end, 0.95, int(rng.integers(1, 3)))
    elif cls in ("HAZE", "COSMETIC_HAZE"):  # a soft bright tint over a wide patch
        tint = np.zeros_like(die)
        cv2.circle(tint, (int(rng.integers(60, w - 60)), int(rng.integers(50, h - 50))), int(rng.integers(45, 80)),
                   1.0, -1)  # fmt: skip
        die += 0.12 * cv2.GaussianBlur(tint, (0, 0), 18)


def optics(die: npt.NDArray[np.float32], tool: str, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    if tool == "OPT-B":
        die = cv2.GaussianBlur(die, (0, 0), 1.2) * 0.85 + 0.03
        yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
        r2 = ((yy - SHAPE[0] / 2) / SHAPE[0]) ** 2 + ((xx - SHAPE[1] / 2) / SHAPE[1]) ** 2
        die = die * (1.0 - 0.35 * r2).astype(np.float32)
        noise = 0.03
    else:
        die = cv2.GaussianBlur(die, (0, 0), 0.6)
        noise = 0.018
    die = die + rng.normal(0.0, noise, die.shape).astype(np.float32)
    return np.clip(die * 255.0, 0, 255).astype(np.uint8)


def process_row(rng: np.random.Generator, hot_bake: bool) -> dict[str, float]:
    modules = {m: rng.normal() for _, _, m in PARAMETERS.values()}
    row = {}
    for name, (nominal, sigma, module) in PARAMETERS.items():
        z = 0.6 * modules[module] + 0.8 * rng.normal()
        if name == "bake_temp_c" and hot_bake:
            z = HOT_BAKE_SIGMA + rng.normal()
        row[name] = round(nominal + z * sigma, 4)
    return row


def generate(out: Path, dies: int, seed: int = 7, split: bool = True) -> Path:
    """Write ``dies`` labelled dies (whole wafers, so a few more) under ``out``; the folder."""
    rng = np.random.default_rng(seed)
    layouts = {recipe: layout(np.random.default_rng([seed, i])) for i, recipe in enumerate(RECIPES)}
    wafers = -(-dies // DIES_PER_WAFER)
    lots = -(-wafers // WAFERS_PER_LOT)
    defect_names = [c for c in CLASS_SHARES if c != "GOOD"]
    labels, process = [], []
    for lot in range(lots):
        lot_id, tool, recipe = f"LOT{lot:04d}", TOOLS[lot % 2], RECIPES[(lot // 2) % 2]
        part = ("train", "train", "train", "val", "test")[lot % 5] if split else ""
        for w in range(WAFERS_PER_LOT):
            wafer_id = f"W{w + 1:02d}"
            hot = rng.random() < HOT_BAKE_WAFERS
            process.append({"lot_id": lot_id, "wafer_id": wafer_id, "recipe_id": recipe, "tool_id": tool,
                            **process_row(rng, hot)})  # fmt: skip
            shares = np.array([CLASS_SHARES[c] for c in defect_names])
            # HAZE is a defect only after a hot bake: none on the other wafers, more on the hot ones
            shares[defect_names.index("HAZE")] = HAZE_ON_HOT_WAFER if hot else 0.0
            for d in range(DIES_PER_WAFER):
                cls = "GOOD"
                if rng.random() < shares.sum():
                    cls = defect_names[int(rng.choice(len(defect_names), p=shares / shares.sum()))]
                oy, ox = int(rng.integers(0, 9)), int(rng.integers(0, 9))  # stage offset
                die = layouts[recipe][oy : oy + SHAPE[0], ox : ox + SHAPE[1]].copy()
                draw_defect(die, cls, rng)
                if cls == "GOOD" and not hot and rng.random() < COSMETIC_HAZE:
                    draw_defect(die, "COSMETIC_HAZE", rng)
                die_id = f"{lot_id}-{wafer_id}-{d:02d}"
                rel = Path("images") / (part or "all") / cls / f"{die_id}.png"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out / rel), optics(die, tool, rng))
                labels.append([die_id, part, cls, tool, recipe, lot_id, wafer_id, d % 5, d // 5, rel.as_posix()])
    write_csvs(out, labels, process, list(PARAMETERS))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dies", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-split", action="store_true", help="leave the split column empty")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    generate(args.out, args.dies, args.seed, split=not args.no_split)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

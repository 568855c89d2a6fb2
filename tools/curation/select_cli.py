"""``edge-inspect data select``: choose a training subset of a labelled folder by its embeddings.

    edge-inspect data select --data DIR --budget N [--out selection.csv] [--map selection.png] [--folder OUT]
                             [--repository REPO] [--version V] [--split train] [--margin 0.15] [--threshold 0.5]
                             [--min-share GOOD=0.6]

Every die is embedded by the classifier of ``REPO`` (``tools.curation.embed``), then ``tools.curation.select``
keeps the borderline dies, gives each class a share of ``N`` by its spread and fills each share by k-center greedy.
Out: the manifest (the chosen dies' labels.csv rows with ``why`` and ``detail`` columns), the 2-D map of the pool
with the chosen dies ringed, a table per class on stdout, and with ``--folder`` a labelled folder of the chosen dies
(images hard-linked where the file system allows, else copied; the process rows of their wafers) that
``edge-inspect train --data OUT`` takes as it is. Exit 0: chosen; 1: the folder or the model cannot be read; 2: bad
arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tools.curation.embed import Embedded
from tools.curation.picture import draw, project
from tools.curation.pool import LABEL_HEADER, add_pool_arguments, label_row, with_pool, write_csv
from tools.curation.select import Selection, select
from tools.dataset.folder import PROCESS, DataSet, Die


def write_folder(out: Path, data: DataSet, dies: list[Die]) -> None:
    """A labelled folder of ``dies`` at ``out`` (which must not exist): images, labels.csv, process.csv."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    rows = []
    for die in dies:
        relative = die.path.relative_to(data.root)
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(die.path, target)
        except OSError:
            shutil.copyfile(die.path, target)
        rows.append(label_row(data, die))
        if not data.split_given:
            rows[-1][1] = ""
    write_csv(partial / "labels.csv", LABEL_HEADER, rows)
    source = data.root / PROCESS
    if source.is_file():
        shutil.copyfile(source, partial / PROCESS)
    partial.rename(out)


def render(selection: Selection, labels: list[str], budget: int) -> str:
    pool = {c: labels.count(c) for c in sorted(set(labels))}
    borderline = {c: sum(1 for i, why in selection.why.items() if why == "borderline" and labels[i] == c)
                  for c in pool}  # fmt: skip
    lines = [f"{'class':16s} {'pool':>6s} {'spread':>7s} {'chosen':>7s} {'borderline':>10s}"]
    for c in pool:
        lines.append(f"{c:16s} {pool[c]:6d} {selection.spread[c]:7.3f} {selection.allocation[c]:7d} "
                     f"{borderline[c]:10d}")  # fmt: skip
    lines.append(f"{'total':16s} {len(labels):6d} {'':7s} {len(selection.chosen):7d} "
                 f"{sum(borderline.values()):10d}   (budget {budget})")  # fmt: skip
    if selection.borderline_left_out:
        lines.append(f"{selection.borderline_left_out} borderline dies of {selection.borderline_found} left out: "
                     "past half their class's share or the borderline share of the budget; the most borderline "
                     "were kept")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "edge-inspect data select") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_pool_arguments(parser)
    parser.add_argument("--budget", type=int, required=True, help="how many dies to choose")
    parser.add_argument("--out", type=Path, default=Path("selection.csv"), help="the manifest (CSV)")
    parser.add_argument("--map", type=Path, help="the 2-D map (PNG; default: the manifest's name with .png)")
    parser.add_argument("--folder", type=Path, help="also write the chosen dies as a labelled folder here")
    parser.add_argument("--margin", type=float, default=0.15, help="how near a boundary or threshold is borderline")
    parser.add_argument("--threshold", type=float, default=0.5, help="the decision threshold borderline is near")
    parser.add_argument("--borderline-share", type=float, default=0.5, help="most of the budget borderline dies take")
    parser.add_argument("--min-share", nargs="*", default=[], metavar="CLASS=SHARE",
                        help="a class promised at least that share of the budget, e.g. GOOD=0.6")  # fmt: skip
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be a positive number of dies")
    if not 0 < args.margin < 1 or not 0 < args.threshold < 1 or not 0 <= args.borderline_share <= 1:
        parser.error("--margin and --threshold must lie in (0, 1), --borderline-share in [0, 1]")
    try:
        args.min_share = {c: float(v) for c, v in (item.split("=", 1) for item in args.min_share)}
    except ValueError:
        parser.error("--min-share takes CLASS=SHARE pairs, e.g. GOOD=0.6")
    if not all(0 <= v <= 1 for v in args.min_share.values()) or sum(args.min_share.values()) > 1:
        parser.error("--min-share: each share in [0, 1], together at most 1")
    if args.folder is not None and args.folder.exists():
        parser.error(f"--folder {args.folder} exists: give a new folder")
    return with_pool(args, prog, lambda data, dies, embedded: chosen(args, data, dies, embedded))


def chosen(args: argparse.Namespace, data: DataSet, dies: list[Die], embedded: Embedded) -> int:
    """Choose, write and print (``main``'s second half, on the embedded pool)."""
    labels = list(embedded.labels)
    selection = select(embedded.vectors, labels, embedded.probs, embedded.classes, args.budget, args.margin,
                       args.threshold, args.borderline_share, min_share=args.min_share)  # fmt: skip
    rows = []
    for i in selection.chosen:
        row = label_row(data, dies[i])
        if not data.split_given:
            row[1] = ""
        rows.append([*row, selection.why[i], "; ".join(selection.reasons.get(i, []))])
    write_csv(args.out, [*LABEL_HEADER, "why", "detail"], rows)
    picture = args.map or args.out.with_suffix(".png")
    title = f"{args.data.name}: {len(dies)} dies, {len(selection.chosen)} chosen ({embedded.model})"
    draw(project(embedded.vectors), labels, selection.chosen, title, "chosen", picture)
    if args.folder is not None:
        write_folder(args.folder, data, [dies[i] for i in selection.chosen])
    print(render(selection, labels, args.budget))
    print(f"manifest: {args.out}; map: {picture}" + (f"; folder: {args.folder}" if args.folder else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

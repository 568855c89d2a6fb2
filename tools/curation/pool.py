"""What ``edge-inspect data select`` and ``data audit`` share: the labelled folder read as a pool, and its
embeddings by a repository's classifier."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

from edge.errors import EdgeError
from tools.curation.embed import Embedded, Embedder
from tools.dataset.folder import LABEL_COLUMNS, DataSet, DataSetRefused, Die, load

DEFAULT_REPOSITORY = Path("build/model_repository")


class PoolError(Exception):
    """A pool that cannot be read or embedded: the message says why (exit 1)."""


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="the labelled folder (README: own data)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default="all",
                        help="the dies of one split only (default: all)")  # fmt: skip
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                        help="model repository whose classifier embeds the dies (default: %(default)s)")  # fmt: skip
    parser.add_argument("--version", type=int, help="classifier version (default: the newest)")


def embedded_pool(args: argparse.Namespace) -> tuple[DataSet, list[Die], Embedded]:
    """The folder, the dies asked for, and their embeddings; ``PoolError`` with every reason it cannot be had."""
    try:
        data, report = load(args.data, training=False)
    except DataSetRefused as exc:
        raise PoolError(str(exc)) from exc
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    dies = list(data.dies) if args.split == "all" else data.split(args.split)
    if len(dies) < 2:
        raise PoolError(f"{args.data}: {len(dies)} dies in split {args.split!r}: nothing to choose among")
    try:
        embedded = Embedder(args.repository, args.version).embed(data, dies)
    except (EdgeError, OSError, ValueError) as exc:
        raise PoolError(f"cannot embed the dies with {args.repository}: {exc}") from exc
    return data, dies, embedded


def with_pool(args: argparse.Namespace, prog: str, then: Callable[[DataSet, list[Die], Embedded], int]) -> int:
    """``then`` on the pool ``args`` name (``embedded_pool``); exit 1 with every reason when it cannot be had."""
    try:
        data, dies, embedded = embedded_pool(args)
    except PoolError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return then(data, dies, embedded)


def label_row(data: DataSet, die: Die) -> list[object]:
    """The die's labels.csv row (its path relative to the folder)."""
    return [die.id, die.split, die.cls, die.tool_id, die.recipe_id, die.lot_id, die.wafer_id, die.die_x, die.die_y,
            die.path.relative_to(data.root).as_posix()]  # fmt: skip


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """``rows`` under ``header`` at ``path``, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)


LABEL_HEADER = list(LABEL_COLUMNS)

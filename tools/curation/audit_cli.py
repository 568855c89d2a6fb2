"""``edge-inspect data audit``: the dies of a labelled folder whose labels look wrong.

    edge-inspect data audit --data DIR [--out label_audit.csv] [--map label_audit.png] [--k 10]
                            [--min-score 0.4] [--repository REPO] [--version V] [--split all]

Every die is embedded by the classifier of ``REPO`` (``tools.curation.embed``) and scored by
``tools.curation.audit``: its neighbours' disagreement in embedding space and the model's confident disagreement.
Out: a CSV of the suspects (score at least ``--min-score``), most suspect first, with the likely label and the
``k`` nearest dies (id and label); the 2-D map of the pool coloured by label with the suspects ringed; the top
suspects on stdout. Exit 0: audited (suspects or none); 1: the folder or the model cannot be read; 2: bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.curation.audit import Suspect, audit
from tools.curation.embed import Embedded
from tools.curation.picture import draw, project
from tools.curation.pool import add_pool_arguments, with_pool, write_csv
from tools.dataset.folder import DataSet, Die

HEADER = ["rank", "id", "label", "likely_label", "score", "neighbour_disagreement", "model_class", "model_p",
          "label_p", "tool_id", "lot_id", "wafer_id", "path", "neighbours"]  # fmt: skip
SHOWN = 15


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None, prog: str = "edge-inspect data audit") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_pool_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("label_audit.csv"), help="the suspects (CSV)")
    parser.add_argument("--map", type=Path, help="the 2-D map (PNG; default: the CSV's name with .png)")
    parser.add_argument("--k", type=int, default=10, help="neighbours each die is compared with")
    parser.add_argument("--min-score", type=float, default=0.4, help="the least score listed as a suspect (0..1)")
    args = parser.parse_args(argv)
    if args.k < 1 or not 0 <= args.min_score <= 1:
        parser.error("--k must be at least 1 and --min-score lie in [0, 1]")
    return with_pool(args, prog, lambda data, dies, embedded: audited(args, data, dies, embedded))


def audited(args: argparse.Namespace, data: DataSet, dies: list[Die], embedded: Embedded) -> int:
    """Score, write and print (``main``'s second half, on the embedded pool)."""
    labels = list(embedded.labels)
    suspects: list[Suspect] = [s for s in audit(embedded.vectors, labels, embedded.probs, embedded.classes, args.k)
                               if s.score >= args.min_score]  # fmt: skip
    rows = []
    for rank, s in enumerate(suspects, 1):
        die = dies[s.index]
        likely = s.model_class if s.model_class and s.model_class == s.neighbour_label else s.neighbour_label
        near = ";".join(f"{dies[j].id}:{labels[j]}" for j in s.neighbours)
        rows.append([rank, die.id, die.cls, likely, f"{s.score:.3f}", f"{s.neighbour_disagreement:.3f}",
                     s.model_class or "", _p(s.model_p), _p(s.label_p), die.tool_id, die.lot_id, die.wafer_id,
                     die.path.relative_to(data.root).as_posix(), near])  # fmt: skip
    write_csv(args.out, HEADER, rows)
    picture = args.map or args.out.with_suffix(".png")
    title = f"{args.data.name}: {len(dies)} dies by label, {len(suspects)} suspect ({embedded.model})"
    draw(project(embedded.vectors), labels, [s.index for s in suspects], title, "suspect label", picture)
    print(f"{len(suspects)} suspect labels of {len(dies)} dies (score >= {args.min_score})")
    for row in rows[:SHOWN]:
        print(f"  {row[0]:>3}. {row[1]}  labelled {row[2]}, likely {row[3]} (score {row[4]})")
    print(f"suspects: {args.out}; map: {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Check a labelled folder against the own-data contract without training anything.

    edge-inspect data check --data DIR [--json] [--seed N]     (or: python -m tools.dataset.check ...)

Prints every error (by file and line) and warning, and a summary of the set: classes with their dies per split,
tools, recipes, wafers, parameters. Exit status 0 when the set can train, 1 when it is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.dataset.folder import DataSet, Report, validate
from tools.dataset.split import SPLITS


@dataclass(frozen=True)
class Summary:
    dies: int
    split: str  # given | made by wafer
    classes: dict[str, dict[str, int]]  # dies per class and split
    tools: list[str]
    recipes: list[str]
    wafers: int
    parameters: list[str]


def summary(data: DataSet) -> Summary:
    per = Counter((d.cls, d.split) for d in data.dies)
    return Summary(
        dies=len(data.dies),
        split="given" if data.split_given else "made by wafer",
        classes={c: {s: per[(c, s)] for s in SPLITS} for c in data.classes},
        tools=sorted({d.tool_id for d in data.dies}),
        recipes=sorted({d.recipe_id for d in data.dies}),
        wafers=len({d.wafer for d in data.dies}),
        parameters=list(data.parameters),
    )


def render(data: DataSet | None, report: Report) -> str:
    lines = [f"error: {p}" for p in report.errors] + [f"warning: {p}" for p in report.warnings]
    if data is None:
        lines.append(f"refused: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
        return "\n".join(lines)
    s = summary(data)
    lines.append(
        f"{s.dies} dies on {s.wafers} wafers, split {s.split}; tools {', '.join(s.tools)}; "
        f"{len(s.parameters)} process parameters"
    )
    width = max(len(c) for c in (*s.classes, "class"))
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{sp:>6}" for sp in SPLITS))
    lines += [f"  {c:<{width}}  " + "  ".join(f"{n[sp]:>6}" for sp in SPLITS) for c, n in s.classes.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "edge-inspect data check") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the labelled folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split by wafer, when the folder gives none")
    parser.add_argument("--json", action="store_true", help="the report and the summary as JSON")
    args = parser.parse_args(argv)
    data, report = validate(args.data, args.seed)
    if args.json:
        print(
            json.dumps(
                {"ok": report.ok, **report.as_dict(), "summary": asdict(summary(data)) if data else None}, indent=2
            )
        )
    else:
        print(render(data, report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

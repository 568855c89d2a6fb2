"""``edge-inspect captures``: the dies a station kept, read from its capture store (safe while the daemon runs).

    edge-inspect captures list --config FILE [--reason DEFECT|REVIEW|AUDIT|BORDERLINE] [--limit N] [--json]
    edge-inspect captures show --config FILE CAPTURE_ID [--out DIR]

``show`` prints the capture's facts as JSON; with ``--out`` it also writes the die, the die with its heatmap and the
die with the classifier's attention as PNG files (``<id>.png``, ``<id>.heatmap.png``, ``<id>.attention.png``).
Exit 0: shown; 1: the store cannot be read; 3: the capture is gone (pruned, or never written: the reason is
printed); 4: the store never had it (or has forgotten it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.capture import overlay
from edge.capture.record import REASONS
from edge.capture.store import CaptureStore
from edge.config import load_config
from edge.errors import EdgeError

GONE, UNKNOWN = 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="captures_command", required=True)
    listing = sub.add_parser("list", help="the newest captures kept, newest first")
    listing.add_argument("--config", required=True, help="the station's TOML config ([capture] path)")
    listing.add_argument("--reason", choices=REASONS, help="only those kept for this reason")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", help="one capture's facts, and with --out its pictures")
    show.add_argument("--config", required=True, help="the station's TOML config ([capture] path)")
    show.add_argument("capture_id")
    show.add_argument("--out", type=Path, help="write the die, heatmap and attention pictures here")


def _store(config: str) -> CaptureStore:
    cfg = load_config(config).capture
    if not (cfg.path / "captures.sqlite").is_file():
        raise EdgeError(f"no capture store at {cfg.path} (the daemon creates it at its first start)")
    return CaptureStore(cfg.path, cfg.max_bytes, cfg.retention_days * 86400, cfg.tombstone_days * 86400)


def _list(store: CaptureStore, args: argparse.Namespace) -> int:
    for kept in store.recent(args.limit, args.reason):
        if args.json:
            print(json.dumps(kept.summary(), separators=(",", ":")))
        else:
            top = kept.facts.get("top_k", [{}])[0]
            print(f"{kept.capture_id}  {kept.reason:<10} {kept.tool_id} {kept.lot_id}/{kept.wafer_id} "
                  f"die {kept.die[0]},{kept.die[1]}  {kept.defect_class} {kept.confidence:.2f} "
                  f"(top {top.get('class')} {top.get('p', 0):.2f})  score {kept.score:.4g} {kept.band}")  # fmt: skip
    return 0


def _show(store: CaptureStore, args: argparse.Namespace) -> int:
    kept = store.get(args.capture_id)
    if kept is None:
        print(f"capture {args.capture_id}: unknown to this store", file=sys.stderr)
        return UNKNOWN
    print(json.dumps(kept.summary(), indent=1))
    if kept.gone is not None:
        print(f"capture {args.capture_id} is gone ({kept.gone}): {kept.gone_detail}", file=sys.stderr)
        return GONE
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        data = store.image_bytes(kept)
        (args.out / f"{kept.capture_id}.png").write_bytes(data)
        for which, drawn in (("heatmap", kept.heatmap), ("attention", kept.attention)):
            if drawn is not None:
                picture = overlay.over(data, which, kept.heatmap, kept.attention)
                (args.out / f"{kept.capture_id}.{which}.png").write_bytes(picture)
        print(f"pictures written to {args.out}", file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        store = _store(args.config)
    except EdgeError as err:
        print(f"edge-inspect captures: {err}", file=sys.stderr)
        return 1
    try:
        return _list(store, args) if args.captures_command == "list" else _show(store, args)
    except (EdgeError, OSError) as err:
        print(f"edge-inspect captures: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()

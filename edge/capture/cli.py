"""``edge-inspect captures``: the dies a station kept, read from its capture store (safe while the daemon runs).

    edge-inspect captures list --config FILE [--reason DEFECT|REVIEW|AUDIT|BORDERLINE] [--limit N] [--json]
    edge-inspect captures show --config FILE CAPTURE_ID [--out DIR]
    edge-inspect captures similar --config FILE (CAPTURE_ID | --image PNG) [--k 10] [--json]
    edge-inspect captures export --config FILE --out DIR [--recipe R]

``show`` prints the capture's facts as JSON; with ``--out`` it also writes the die, the die with its heatmap and the
die with the classifier's attention as PNG files (``<id>.png``, ``<id>.heatmap.png``, ``<id>.attention.png``).
``similar`` lists the captured dies most like a capture, or like an image the live classifier embeds through Triton
(``edge.capture.similar_search``), with what reviewers said of each. Exit 0: shown; 1: the store (or, for an image,
Triton) cannot be read, or the die has no embedding; 3: the capture is gone (pruned, or never written: the reason
is printed); 4: the store never had it (or has forgotten it). ``export`` writes the reviewed captures as a labelled
folder (``edge.capture.export``) for ``edge-inspect data select`` and ``edge-inspect train``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from calibration.store import CalibrationStore
from edge.capture import overlay
from edge.capture.export import export_reviewed
from edge.capture.record import REASONS
from edge.capture.similar_search import Hit, SimilarCaptures
from edge.capture.store import CaptureStore, embedding_space
from edge.config import Config, load_config
from edge.errors import EdgeError
from edge.review.inspect import AdHoc, InspectRefused, upload_of

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
    similar = sub.add_parser("similar", help="the captured dies most like a capture or an image, with their reviews")
    similar.add_argument("--config", required=True, help="the station's TOML config ([capture], [triton])")
    similar.add_argument("capture_id", nargs="?", help="the capture (or event) to match")
    similar.add_argument("--image", type=Path, help="a PNG or JPEG die to match instead, embedded by the live models")
    similar.add_argument("--k", type=int, default=10, help="how many (default 10)")
    similar.add_argument("--json", action="store_true", help="one JSON object per hit")
    export = sub.add_parser("export", help="the reviewed captures as a labelled folder (the own-data format)")
    export.add_argument("--config", required=True, help="the station's TOML config ([capture], [calibration])")
    export.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    export.add_argument("--recipe", help="only this recipe's dies")


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


def _similar(store: CaptureStore, args: argparse.Namespace) -> int:
    if (args.capture_id is None) == (args.image is None) or args.k < 1:
        print("edge-inspect captures similar: give a capture id or --image (one of them), and --k of 1 or more",
              file=sys.stderr)  # fmt: skip
        return 2
    search = SimilarCaptures(store)
    cfg = load_config(args.config)
    calibration = CalibrationStore(cfg.calibration.path)
    try:
        if args.image is not None:
            hits = asyncio.run(_like_image(cfg, calibration, search, args.image.read_bytes(), args.k))
        else:
            kept = store.get(args.capture_id)
            if kept is None:
                print(f"capture {args.capture_id}: unknown to this store", file=sys.stderr)
                return UNKNOWN
            found = search.like_capture(args.capture_id, args.k)
            if found is None:
                raise EdgeError(f"capture {args.capture_id} has no embedding (its classifier version had none)")
            hits = found
        for hit in hits:
            row = hit.summary()
            review = calibration.label(hit.capture.event_id) if hit.capture.event_id else None
            row["review"] = None if review is None or review.label is None else \
                {"disposition": review.disposition, "label": review.label, "by": review.reviewed_by}  # fmt: skip
            if args.json:
                print(json.dumps(row, separators=(",", ":")))
            else:
                said = f"{row['review']['disposition']} ({row['review']['label']})" if row["review"] else "not reviewed"
                print(f"{row['similarity']:.3f}  {hit.capture.capture_id}  {hit.capture.decision:<7} "
                      f"{hit.capture.defect_class:<12} {said:<24} {hit.capture.tool_id} "
                      f"{hit.capture.lot_id}/{hit.capture.wafer_id} die {hit.capture.die[0]},{hit.capture.die[1]}  "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(hit.capture.ts))}")  # fmt: skip
        search.save()
    finally:
        calibration.close()
    return 0


async def _like_image(cfg: Config, calibration: CalibrationStore, search: SimilarCaptures, image: bytes,
                      k: int) -> list[Hit]:  # fmt: skip
    ad_hoc = AdHoc(cfg, calibration)
    try:
        _, outcome, _ = await ad_hoc.outcome(upload_of(cfg, {"image": image}))
    except InspectRefused as err:
        raise EdgeError(str(err)) from err
    finally:
        await ad_hoc.close()
    if outcome.embedding is None:
        raise EdgeError("the live classifier serves no embedding (EMBEDDING output)")
    return search.like(embedding_space({"model_digests": outcome.digests, "models": outcome.models}),
                       outcome.embedding, k)  # fmt: skip


def _export(store: CaptureStore, args: argparse.Namespace) -> int:
    calibration = CalibrationStore(load_config(args.config).calibration.path)
    try:
        done = export_reviewed(store, calibration, args.out, args.recipe)
    finally:
        calibration.close()
    by_class = ", ".join(f"{name} {n}" for name, n in sorted(done.dies.items())) or "none"
    print(f"{sum(done.dies.values())} reviewed dies written to {args.out}: {by_class}")
    for why, n in sorted(done.left_out.items()):
        print(f"left out: {n} ({why})")
    return 0


COMMANDS = {"list": _list, "show": _show, "similar": _similar, "export": _export}


def main(args: argparse.Namespace) -> int:
    try:
        store = _store(args.config)
    except EdgeError as err:
        print(f"edge-inspect captures: {err}", file=sys.stderr)
        return 1
    try:
        return COMMANDS[args.captures_command](store, args)
    except (EdgeError, OSError) as err:
        print(f"edge-inspect captures: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()

"""``make demo``: a station on this machine for about a minute.

Starts Triton (CPU repository), a private Mosquitto when one is installed, and the daemon; the
simulated MES publishes process logs and lot events, the simulated AOI tools stream frames (each
wafer's defects drawn in a spatial pattern); every event, wafer summary, alert and drift event is
printed as the MES subscriber receives it, then a closing summary.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import zmq

from edge.capture.store import CaptureStore
from edge.review.auth import hash_password
from edge.serving.tritonserver import free_port
from tools.sim import aoi_sim
from tools.sim.mqtt_peer import Peer
from tools.station.station import RECIPE, TOOLS, Station


def print_event(topic: str, payload: bytes) -> None:
    kind = topic.split("/")[-2] if topic.count("/") >= 3 else ""
    if kind not in ("events", "wafers", "alerts", "drift"):
        print(f"  [{topic}] {payload.decode(errors='replace')}", flush=True)
        return
    e = json.loads(payload)
    if kind == "wafers":
        print(
            f"  WAFER {e['tool_id']} {e['lot_id']}/{e['wafer_id']} dies={e['dies_inspected']} "
            f"defective={len(e['defect_map'])} clusters={len(e['clusters'])} "
            f"pattern={e['signature']['pattern']} severity={e['severity']} ({e['ended_by']})",
            flush=True,
        )
        return
    if kind in ("alerts", "drift"):
        detail = (
            f"severity={e['severity']} pattern={e['pattern']}"
            if kind == "alerts"
            else f"{e['kind']} {e['state']} statistic={e['statistic']}"
        )
        print(f"  {kind.upper().rstrip('S')} {e['tool_id']} {detail}", flush=True)
        return
    score = e["anomaly"]["score"]
    print(
        f"  EVENT {e['decision']:<13} {e['defect_class']!s:<12} p={e['confidence'] or 0:.2f} "
        f"score={score if score is None else round(score, 5)} {e['tool_id']} {e['lot_id']}/{e['wafer_id']} "
        f"die={e['die']} frame={e['frame_id']} total={e['latency_ms'].get('total')}ms",
        flush=True,
    )


def follow_feed(endpoint: str, stop: threading.Event) -> None:
    """Without a broker, print the daemon's local ZeroMQ event feed instead."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    while not stop.is_set():
        if sock.poll(200):
            topic, payload = sock.recv_multipart()
            print_event(topic.decode(), payload)
    sock.close()


def summary(report: dict, events: list[dict]) -> str:
    outcomes = [o for o in report["outcomes"] if o["status"] == "ok"]
    named = {e["event_id"]: e["defect_class"] for e in events if e["decision"] == "DEFECT"}
    by_label: dict[str, Counter] = {}
    for o in outcomes:
        by_label.setdefault(o["label"], Counter())[o["decision"]] += 1
    defects = [o for o in outcomes if o["event_id"] in named]
    right = sum(named[o["event_id"]] == o["label"] for o in defects)
    lines = [
        "",
        "=" * 78,
        "demo summary",
        f"  frames sent {report['frames_sent']}, replies {report['replies']}, resent {report['resent']}, "
        f"unanswered {len(report['unanswered'])}",
        f"  malformed frames rejected with the expected reason: {report['malformed_rejected_as_expected']}",
        f"  decisions: {report['decisions']}",
        f"  events received by the MES subscriber: {len(events)}; DEFECT events naming the injected class: "
        f"{right}/{len(defects)}",
        f"  end-to-end latency (tool send -> verdict) ms: {report['latency_ms']}, "
        f"{report['frames_per_s']} frames/s over {report['elapsed_s']} s",
        "  injected truth -> decisions:",
    ]
    for label in sorted(by_label):
        lines.append(f"    {label:<12} {dict(by_label[label])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.station.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path("build/demo"))
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=12.0, help="frames per second, both tools together")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    dies_per_wafer = 49  # a 7 x 7 grid: enough for the wafer summaries' spatial patterns
    wafers = max(1, round(args.duration_s * args.rate / dies_per_wafer))
    lots = max(1, wafers // 4)
    plan = [
        "--seed",
        str(args.seed),
        "--recipe",
        RECIPE,
        "--tools",
        *TOOLS,
        "--lots",
        str(lots),
        "--wafers-per-lot",
        str(max(1, wafers // lots)),
        "--dies-per-wafer",
        str(dies_per_wafer),
        "--wafer-patterns",
    ]
    print(f"demo: starting Triton, the daemon in {args.workdir} ...", flush=True)
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh outbox: the same seed reuses frame ids
    t0 = time.monotonic()
    review_port, password = free_port(), secrets.token_urlsafe(12)
    review = (f'[review]\nport = {review_port}\nusers = [{{ name = "demo", role = "reviewer", '
              f'password_hash = "{hash_password(password)}" }}]\n')  # fmt: skip
    with Station(args.workdir, args.repository, config_extra=review) as st:
        reviewing = subprocess.Popen([sys.executable, "-m", "edge", "review", "--config", str(st.config_path)],
                                     stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"demo: review station http://127.0.0.1:{review_port}/ (user demo, password {password})",
              flush=True)  # fmt: skip
        print(
            f"demo: station up in {time.monotonic() - t0:.1f} s; frames {st.daemon_frames}, "
            f"metrics http://127.0.0.1:{st.http_port}/metrics, "
            f"MQTT {'127.0.0.1:' + str(st.mqtt_port) if st.mqtt_port else 'off (no mosquitto): ZeroMQ feed'}",
            flush=True,
        )
        stop = threading.Event()
        mes_sub = None
        if st.mqtt_port:
            mes_sub = Peer(
                "127.0.0.1", st.mqtt_port, "demo-mes-subscriber", ("fab/edge/#",), on_message=print_event
            ).wait_connected()
        else:
            threading.Thread(target=follow_feed, args=(st.event_feed, stop), daemon=True).start()
        start_at = time.time() + 2.0
        mes = None
        if st.mqtt_port:
            mes = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tools.sim.mes_sim",
                    *plan,
                    "--port",
                    str(st.mqtt_port),
                    "--start-at",
                    str(start_at),
                    "--rate",
                    str(args.rate),
                ]
            )
        time.sleep(max(0.0, start_at - time.time()))
        report_path = args.workdir / "aoi_report.json"
        aoi_sim.main(
            [
                *plan,
                "--endpoint",
                st.daemon_frames,
                "--rate",
                str(args.rate),
                "--malformed-every",
                "50",
                "--report",
                str(report_path),
                "--quiet",
            ]
        )
        if mes:
            mes.wait(timeout=60)
        time.sleep(1.0)
        stop.set()
        queue = review_queue(review_port, password)
        reviewing.terminate()
        reviewing.wait(timeout=10)
        events = mes_sub.json_messages("fab/edge/ST-01/events/") if mes_sub else []
        if mes_sub:
            mes_sub.close()
    report = json.loads(report_path.read_text())
    print(summary(report, events), flush=True)
    print(captured(args.workdir / "captures"), flush=True)
    print(f"  review service: {queue}", flush=True)
    return 0 if not report["unanswered"] else 1


def review_queue(port: int, password: str) -> str:
    """Log in to the review service as the demo user and say what its queue holds."""
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    login = json.dumps({"user": "demo", "password": password}).encode()
    try:
        request = urllib.request.Request(f"{base}/api/login", login, {"Content-Type": "application/json"})
        opener.open(request, timeout=10)
        counts = json.loads(opener.open(f"{base}/api/queue?limit=1", timeout=10).read())["counts"]
    except (OSError, ValueError, KeyError) as err:
        return f"not reached ({err})"
    return f"{counts['pending']} items to review {counts['by_decision']}: open {base}/queue (API: {base}/api/queue)"


def captured(folder: Path) -> str:
    """What the capture store kept, and how to look at it."""
    store = CaptureStore(folder, 10**12, 10**9, 10**9)
    try:
        reasons, size, kept = store.kept_by_reason(), store.used_bytes, store.recent(limit=1)
    finally:
        store.close()
    each = size // max(1, sum(reasons.values()))
    lines = [f"  dies captured for review: {reasons}, {size / 1e6:.1f} MB ({each} bytes each)"]
    if kept:
        lines.append(f"  look at one: edge-inspect captures show --config {folder.parent / 'edge.toml'} "
                     f"{kept[0].capture_id} --out {folder.parent / 'pictures'}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

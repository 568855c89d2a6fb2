"""Benchmark: the per-frame pieces the capture and shared-memory paths were made quicker in, each timed alone (process
CPU per call, the mean over ``--repeats``), old way against new, on dies the AOI simulator renders:

- a die's PNG written by OpenCV (level 1) and by ``edge.png.encode_png`` (ISA-L), with the files' sizes;
- a (3, H, W) die interleaved into (H, W, 3) by a NumPy transposed copy and by ``cv2.merge``;
- a batch's RGB dies stacked into an array and copied into a region, against stacked straight into it;
- a PNG die decoded into the models' tensors (``edge.ingest.imaging.decode``, the quick path) on two threads, alone
  and while the main thread runs Python as a busy event loop does: thread CPU per die and wall time per die. Each time
  a decode thread takes the interpreter lock back from a busy thread it pays in CPU and waits up to the switch
  interval (5 ms), so a decode that lets go of the lock fewer times costs less beside a busy loop. (No old way here:
  run this file against the commit before to compare.)

    python -m tools.bench.pieces --repeats 200
"""

from __future__ import annotations

import argparse
import json
import mmap
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge.ingest.imaging import decode
from edge.ingest.wire import Limits, parse_frame
from edge.png import encode_png
from tools.bench.capture import host
from tools.bench.ceiling import frames
from tools.station.station import RECIPE, TOOLS


def cpu_ms(fn: Callable[[int], Any], repeats: int) -> float:
    fn(0)
    start = time.process_time()
    for i in range(repeats):
        fn(i)
    return round((time.process_time() - start) / repeats * 1000, 3)


def stack_ms(parts: list[np.ndarray], repeats: int) -> dict[str, float]:
    """A batch of ``parts`` stacked into an array then copied into a region, against stacked straight into it."""
    region = mmap.mmap(-1, len(parts) * parts[0].nbytes)
    view = np.ndarray((len(parts), *parts[0].shape), np.uint8, buffer=region)

    def two_copies(_: int) -> None:
        view[:] = np.stack(parts)

    return {
        "stacked_then_copied": cpu_ms(two_copies, repeats),
        "stacked_into_region": cpu_ms(lambda _: np.stack(parts, out=view), repeats),
    }


def decode_ms(messages: list[list[bytes]], size: tuple[int, int], per_thread: int) -> dict[str, dict[str, float]]:
    """Each die of ``messages`` (frames on the wire) decoded on two threads, alone and beside a busy main thread."""
    limits = Limits(1 << 16, 1 << 24, 1 << 24, frozenset(TOOLS), frozenset({RECIPE}))
    parsed = [parse_frame(m, limits) for m in messages]
    dies = [p for p in parsed if isinstance(p, tuple)]
    assert len(dies) == len(messages), "every rendered frame parses"

    def work(cpu: list[float]) -> None:
        since = time.thread_time()
        for i in range(per_thread):
            header, payload = dies[i % len(dies)]
            decode(header, payload, size, 1 << 24, False)
        cpu.append(time.thread_time() - since)

    result = {}
    for busy in (False, True):
        cpu: list[float] = []
        threads = [threading.Thread(target=work, args=(cpu,)) for _ in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        while busy and any(t.is_alive() for t in threads):
            sum(range(1000))  # Python on the main thread, as a loop's callbacks are
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        result["beside_a_busy_thread" if busy else "alone"] = {
            "thread_cpu_ms_per_die": round(sum(cpu) / (2 * per_thread) * 1000, 3),
            "wall_ms_per_die": round(wall / (2 * per_thread) * 1000, 3),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=20, help="dies rendered")
    args = parser.parse_args()
    rendered = frames(args.distinct, args.distinct, 1)
    bgr = [cv2.imdecode(np.frombuffer(pending.parts[1], np.uint8), cv2.IMREAD_COLOR) for _, pending in rendered]
    rgb = [np.ascontiguousarray(d[:, :, ::-1]) for d in bgr]
    planes = [np.stack(cv2.split(d)) for d in rgb]
    n = len(rgb)
    result: dict[str, Any] = {"host": host(), "repeats": args.repeats, "die": list(rgb[0].shape)}
    level_1 = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    result["png_encode_ms"] = {
        "opencv_level_1": cpu_ms(lambda i: cv2.imencode(".png", bgr[i % n], level_1), args.repeats),
        "isal_level_1": cpu_ms(lambda i: encode_png(rgb[i % n]), args.repeats),
    }
    result["png_bytes_mean"] = {
        "opencv_level_1": round(float(np.mean([len(cv2.imencode(".png", d, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1])
                                                for d in bgr]))),
        "isal_level_1": round(float(np.mean([len(encode_png(d)) for d in rgb]))),
    }  # fmt: skip
    result["interleave_ms"] = {
        "numpy_transposed_copy": cpu_ms(lambda i: np.ascontiguousarray(planes[i % n].transpose(1, 2, 0)), args.repeats),
        "cv2_merge": cpu_ms(lambda i: cv2.merge(list(planes[i % n])), args.repeats),
    }
    stacking = {str(batch): stack_ms([planes[i % n] for i in range(batch)], max(10, args.repeats // 8))
                for batch in (16, 128)}  # fmt: skip
    result["batch_stack_ms"] = stacking
    messages = [pending.parts for _, pending in rendered]
    result["png_decode_two_threads"] = decode_ms(messages, rgb[0].shape[:2], args.repeats)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

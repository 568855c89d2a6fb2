"""Decoding in worker processes (``edge.ingest.decoders``), with real processes: the tensors and rejections are those
the daemon's own process makes, a PNG kept for the capture comes back as the very payload, and the workers' CPU is
counted to the decode stage. A worker's death costs the frame it held (lost: ``busy``), not the others, and a new
worker takes its place; a frame that kills its worker again is refused ``undecodable``; a worker that died idle is
replaced before it is given a frame."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import cv2
import numpy as np
import pytest

from edge.flow import FrameHeader, Rejected, Tensors
from edge.ingest.decoders import LOST, ProcessDecoder, Sizes, ThreadDecoder, decoder_for
from edge.ingest.imaging import decode
from edge.ops.metrics import Metrics

SIZES = Sizes((64, 64), 4096 * 4096, resize=False, max_payload=1 << 20)
KILL = b"\xffkill"  # a payload that ends the worker deciding it (as a crash inside a decoder would)
HOLD = b"\xffhold"  # a payload whose decode takes a while (in the pool when another worker dies)


def deadly_decode(
    header: FrameHeader, payload: bytes, size: tuple[int, int], max_pixels: int, resize: bool
) -> Tensors | Rejected:
    """The daemon's decode, except for the two marked payloads (runs in the worker: module level, picklable)."""
    if payload.startswith(KILL):
        os._exit(3)
    if payload.startswith(HOLD):
        time.sleep(1.0)
        payload = payload[len(HOLD) :]
    return decode(header, payload, size, max_pixels, resize)


def small_decode(
    header: FrameHeader, payload: bytes, size: tuple[int, int], max_pixels: int, resize: bool
) -> Tensors | Rejected:
    """Tensors of another size than the models' (one the worker's slot is not laid out for)."""
    image = np.frombuffer(payload[:48], np.uint8).reshape(3, 4, 4)
    return Tensors(rgb=image, grey=image[:1])


def wide_decode(
    header: FrameHeader, payload: bytes, size: tuple[int, int], max_pixels: int, resize: bool
) -> Tensors | Rejected:
    """Tensors of the models' size in 16 bits (not laid out as the slot is)."""
    image = np.full((3, *size), 300, np.uint16)
    return Tensors(rgb=image, grey=image[:1])  # type: ignore[arg-type]


def frame_header(frame_id: str = "f-1", encoding: str = "png", shape: tuple[int, ...] | None = None) -> FrameHeader:
    return FrameHeader(frame_id, "AOI-01", "R1", "L1", "W1", (0, 0), 0.0, encoding, shape, None, None)


def png(seed: int = 1) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def run(decoder: ProcessDecoder, *calls: tuple[FrameHeader, bytes]) -> list[Tensors | Rejected | object]:
    """Starts the decoder's workers, decodes the calls side by side, closes it."""

    async def scenario() -> list[Tensors | Rejected | object]:
        await decoder.start()
        try:
            return list(await asyncio.gather(*(decoder.decode(h, p) for h, p in calls)))
        finally:
            decoder.close()

    return asyncio.run(scenario())


def same(a: Tensors | Rejected | object, b: Tensors | Rejected) -> bool:
    if isinstance(a, Rejected) or isinstance(b, Rejected):
        return a == b
    assert isinstance(a, Tensors)
    return np.array_equal(a.rgb, b.rgb) and np.array_equal(a.grey, b.grey) and a.png == b.png


def test_workers_give_what_the_daemon_s_own_process_gives():
    metrics = Metrics()
    raw = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    calls = [
        (frame_header("png"), png()),
        (frame_header("raw", "raw", (64, 64, 3)), raw.tobytes()),
        (frame_header("big", "raw", (80, 64, 3)), bytes(80 * 64 * 3)),  # refused: not the models' size
        (frame_header("bad"), png()[:-20]),  # refused: chunks run past the end
    ]
    got = run(ProcessDecoder(2, decode, SIZES, metrics), *calls)
    for (header, payload), result in zip(calls, got, strict=True):
        assert same(result, decode(header, payload, SIZES.size, SIZES.max_pixels, SIZES.resize)), header.frame_id
    kept = got[0]
    assert isinstance(kept, Tensors) and kept.png is calls[0][1]  # the daemon's own payload, not a copy back
    assert [type(r).__name__ for r in got[2:]] == ["Rejected", "Rejected"]
    assert metrics.registry.get_sample_value("edge_stage_cpu_seconds_total", {"stage": "decode"}) > 0


def test_the_slot_takes_the_largest_payload_and_tensors_of_another_layout_come_back_whole():
    big = png(3) + bytes(SIZES.max_payload - len(png(3)))  # bytes after the end: the PNG's decoder reads up to IEND
    small = bytes(range(48))
    (got,) = run(ProcessDecoder(1, decode, SIZES, Metrics()), (frame_header("big"), big))
    assert isinstance(got, Tensors) and same(got, decode(frame_header(), big, SIZES.size, SIZES.max_pixels, False))
    (odd,) = run(ProcessDecoder(1, small_decode, SIZES, Metrics()), (frame_header("odd", "raw", (4, 4, 3)), small))
    assert isinstance(odd, Tensors) and odd.rgb.tobytes() == small and odd.grey.tobytes() == small[:16]
    (wide,) = run(ProcessDecoder(1, wide_decode, SIZES, Metrics()), (frame_header("wide"), png()))
    assert isinstance(wide, Tensors) and wide.rgb.dtype == np.uint16 and (wide.rgb == 300).all()


def restarts(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("edge_decode_worker_restarts_total") or 0.0


def test_a_dead_worker_costs_its_own_frame_and_one_that_kills_twice_is_refused():
    metrics = Metrics()
    decoder = ProcessDecoder(2, deadly_decode, SIZES, metrics)

    async def scenario() -> tuple[list[object], object, object]:
        await decoder.start()
        try:
            held = asyncio.ensure_future(decoder.decode(frame_header("innocent"), HOLD + png()))
            await asyncio.sleep(0.3)  # the innocent frame is in one worker, the poison goes to the other
            first = [await decoder.decode(frame_header("poison"), KILL + png()), await held]
            after = await decoder.decode(frame_header("next"), png(2))  # two workers again
            again = await decoder.decode(frame_header("poison"), KILL + png())
            return first, after, again
        finally:
            decoder.close()

    first, after, again = asyncio.run(scenario())
    poison, innocent = first
    assert poison is LOST
    alone = decode(frame_header("innocent"), png(), SIZES.size, SIZES.max_pixels, False)
    assert isinstance(innocent, Tensors) and isinstance(alone, Tensors) and np.array_equal(innocent.rgb, alone.rgb)
    assert isinstance(after, Tensors)
    assert isinstance(again, Rejected) and again.reason == "undecodable" and "died" in again.detail
    assert restarts(metrics) == 2


def test_a_frame_decoded_after_its_loss_is_forgotten():
    """A frame that came back and decoded is a frame like any other again: a later loss starts over."""
    decoder = ProcessDecoder(1, deadly_decode, SIZES, Metrics())

    async def scenario() -> list[object]:
        await decoder.start()
        try:
            out = [await decoder.decode(frame_header("k"), KILL)]
            out.append(await decoder.decode(frame_header("k"), png()))  # from the quarantine
            out.append(await decoder.decode(frame_header("k"), KILL))  # the pool again: lost, not refused
            return out
        finally:
            decoder.close()

    lost, decoded, lost_again = asyncio.run(scenario())
    assert lost is LOST and isinstance(decoded, Tensors) and lost_again is LOST


@pytest.mark.parametrize(("processes", "kind"), [(0, ThreadDecoder), (2, ProcessDecoder)])
def test_the_setting_picks_threads_or_processes(processes: int, kind: type):
    decoder = decoder_for(2, processes, decode, SIZES, Metrics())
    try:
        assert isinstance(decoder, kind)
    finally:
        decoder.close()


def test_a_worker_that_died_idle_costs_no_frame():
    metrics = Metrics()
    decoder = ProcessDecoder(2, decode, SIZES, metrics)

    async def scenario() -> object:
        await decoder.start()
        try:
            os.kill(decoder.pids[0], signal.SIGKILL)
            await asyncio.sleep(0.5)  # the pool has seen it die
            return await decoder.decode(frame_header(), png())
        finally:
            decoder.close()

    assert isinstance(asyncio.run(scenario()), Tensors)
    assert restarts(metrics) == 1

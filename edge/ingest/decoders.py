"""Where the intake decodes images: threads of the daemon's own process, or worker processes.

``ingest.decode_processes = 0`` (the default) decodes on ``ingest.decode_threads`` threads: OpenCV and ISA-L let go
of the interpreter lock, so that is enough while one process keeps up. ``decode_processes = N`` decodes in N worker
processes instead, for a station whose frame rate needs more cores than the daemon's own process gets through (a GPU
station): the event loop then spends nothing on decoding, and a decoder that crashes on a hostile image takes a worker
with it, not the daemon.

The hand-off: a worker is given the frame's header and payload and gives back the tensors or the rejection, and its
CPU time; nothing else crosses. Every decision about the frame (its key, de-duplication, admission, the one reply)
stays in the daemon's process, so exactly-once replies and de-duplication hold as with threads. A PNG that is kept
for the capture does not travel back: the daemon has the payload already. The bytes do not go through the pipe:
each worker shares one memory slot with the daemon (an anonymous ``memfd``, handed over the pipe at its start,
sized for the largest payload the wire accepts plus the models' tensors); the daemon copies the payload in, the
worker writes the tensors beside it, and only the header and a few words of answer are pickled. The slot is the
worker's alone and read only after its answer arrived, so a worker that dies halfway leaves nothing the daemon uses.

Each worker has a pipe of its own and one frame at a time, so a worker that dies (killed, out of memory, a crash
inside a decoder on a hostile image) costs exactly the frame it held: that frame is answered ``busy
decoder_restarting`` (nothing was recorded: the tool resends it) and remembered, and a new worker takes the dead one's
place; the other workers and their frames go on. A frame that comes back and kills its worker again is what kills
decoders and is refused ``undecodable``. A worker found dead while idle is replaced before it is given a frame.
(``concurrent.futures.ProcessPoolExecutor`` is not used: its workers share one result pipe, and one killed halfway
through writing a result leaves the pool waiting for the rest of it for ever.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import mmap
import multiprocessing
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Final, Protocol

import cv2
import numpy as np

from edge.flow import FrameHeader, Rejected, Tensors
from edge.ops.logs import get
from edge.ops.metrics import Metrics

log = get("edge.ingest.decoders")

# (header, payload, (height, width), max_pixels, resize) -> the models' tensors or why not (edge.ingest.imaging)
DecodeFn = Callable[[FrameHeader, bytes, tuple[int, int], int, bool], Tensors | Rejected]


class Lost:
    """The decode was cut off by a worker's death: answer ``busy``; the tool resends the frame."""

    reason: Final = "decoder_restarting"


LOST: Final = Lost()
REMEMBERED = 4096  # frames whose worker died, remembered until they come back


class Decoder(Protocol):
    async def start(self) -> None: ...

    async def decode(self, header: FrameHeader, payload: bytes) -> Tensors | Rejected | Lost: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What every decode is told besides the frame: the models' (height, width), the pixel limit, whether to fit;
    and the largest payload the wire accepts (what a worker's slot holds)."""

    size: tuple[int, int]
    max_pixels: int
    resize: bool
    max_payload: int

    @property
    def slot_bytes(self) -> int:
        """A worker's slot: the largest payload, then the RGB and grey tensors (one byte a value)."""
        return self.max_payload + 4 * self.size[0] * self.size[1]


class InSlot:
    """A worker's answer: the tensors are in its slot."""


IN_SLOT: Final = InSlot()
Answer = tuple[Tensors | Rejected | InSlot, bool, float]  # the result, whether the PNG was kept, the CPU seconds


class Slot:
    """One worker's shared memory: the payload at the start, the models' RGB and grey tensors after it."""

    def __init__(self, fd: int, sizes: Sizes) -> None:
        h, w = sizes.size
        self.fd = fd
        self._map = mmap.mmap(fd, sizes.slot_bytes)
        tensors = np.frombuffer(self._map, np.uint8, 4 * h * w, sizes.max_payload)
        self.rgb, self.grey = tensors[: 3 * h * w].reshape(3, h, w), tensors[3 * h * w :].reshape(1, h, w)

    def put(self, payload: bytes) -> int:
        """The payload into the slot (the wire refuses one bigger than ``Sizes.max_payload``); its length."""
        self._map[: len(payload)] = payload
        return len(payload)

    def payload(self, n: int) -> bytes:
        return self._map[:n]

    def holds(self, tensors: Tensors) -> bool:
        """Whether ``tensors`` are laid out as the slot's (the models' size, 8 bits)."""
        return all(
            t.shape == s.shape and t.dtype == s.dtype for t, s in ((tensors.rgb, self.rgb), (tensors.grey, self.grey))
        )

    def close(self) -> None:
        del self.rgb, self.grey  # the views go before the map can close
        self._map.close()
        os.close(self.fd)


class ThreadDecoder:
    """Decodes on threads of the daemon's process, counting each decode's CPU to the ``decode`` stage."""

    def __init__(self, threads: int, fn: DecodeFn, sizes: Sizes, metrics: Metrics) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self._fn = metrics.stage_cpu.timed("decode", fn)
        self._sizes = sizes

    async def start(self) -> None:
        return None

    async def decode(self, header: FrameHeader, payload: bytes) -> Tensors | Rejected | Lost:
        s = self._sizes
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._fn, header, payload, s.size, s.max_pixels, s.resize)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _serve(conn: Connection, fn: DecodeFn, sizes: Sizes) -> None:
    """A worker's life: take its slot, then decode what the daemon sends, one frame at a time, until it closes its
    end. A terminal's Ctrl-C reaches the whole process group and the stop is the daemon's to make (it drains, then
    closes); the unit's ``KillMode=mixed`` sends systemd's SIGTERM to the daemon alone. OpenCV runs on this one
    thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    try:
        slot = Slot(reduction.recv_handle(conn), sizes)
        while True:
            header, size = conn.recv()
            conn.send(_work(fn, header, slot, size, sizes))
    except (EOFError, OSError):  # the daemon closed its end, or died
        return


def _work(fn: DecodeFn, header: FrameHeader, slot: Slot, size: int, sizes: Sizes) -> Answer:
    """In a worker: the decode of the slot's payload (tensors into the slot), whether the PNG was kept for the capture
    (left out here), and its CPU seconds."""
    since = time.thread_time()
    result = fn(header, slot.payload(size), sizes.size, sizes.max_pixels, sizes.resize)
    if not isinstance(result, Tensors):
        return result, False, time.thread_time() - since
    kept = result.png is not None
    if not slot.holds(result):  # not the models' layout (a decode function of another kind): pickled
        return dataclasses.replace(result, png=None), kept, time.thread_time() - since
    np.copyto(slot.rgb, result.rgb)
    np.copyto(slot.grey, result.grey)
    return IN_SLOT, kept, time.thread_time() - since


class _Worker:
    """One worker process, the daemon's end of its own pipe and their slot. Only the worker holds the other end, so
    its death ends the pipe: a call waiting on it fails at once (``EOFError`` or ``OSError``) instead of waiting for
    ever."""

    def __init__(self, context: multiprocessing.context.ForkServerContext, fn: DecodeFn, sizes: Sizes) -> None:
        ours, theirs = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(theirs, fn, sizes), name="edge-decode", daemon=True)
        self.process.start()
        theirs.close()
        self._conn = ours
        fd = os.memfd_create("edge-decode", os.MFD_CLOEXEC)
        os.ftruncate(fd, sizes.slot_bytes)  # sparse: pages are used as they are written
        self._slot = Slot(fd, sizes)
        assert self.process.pid is not None
        try:
            reduction.send_handle(ours, self._slot.fd, self.process.pid)
        except OSError:  # died at once: the first call finds it so
            pass

    def call(self, header: FrameHeader, payload: bytes) -> tuple[Tensors | Rejected, bool, float]:
        """On an I/O thread: the frame to the worker, its answer back (the tensors copied out of the slot). Kept off
        the event loop: it is the daemon's one thread that cannot be spread over cores."""
        self._conn.send((header, self._slot.put(payload)))
        answer: Answer = self._conn.recv()
        result, kept, cpu_s = answer
        if isinstance(result, InSlot):
            result = Tensors(rgb=self._slot.rgb.copy(), grey=self._slot.grey.copy())
        return result, kept, cpu_s

    def stop(self) -> None:
        """Closing our end stops the worker (it reads the end of the pipe); the process is reaped at the exit."""
        self._conn.close()
        self._slot.close()


class ProcessDecoder:
    """Decodes in ``workers`` worker processes, one frame in each at a time (see the module's notes)."""

    def __init__(self, workers: int, fn: DecodeFn, sizes: Sizes, metrics: Metrics) -> None:
        # forkserver: the daemon has gRPC's and ZeroMQ's threads, which a plain fork would copy mid-flight; workers
        # fork from a server that has imported the decoders once, so one started again is ready in milliseconds
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([_work.__module__, fn.__module__])
        self._n, self._fn, self._sizes, self._metrics = workers, fn, sizes, metrics
        self._io = ThreadPoolExecutor(workers, thread_name_prefix="decode-io")  # one blocked call per worker
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: list[_Worker] = []
        self._starting = asyncio.Lock()
        self._cut_off: OrderedDict[tuple[str, str], None] = OrderedDict()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._all if w.process.pid is not None]

    async def start(self) -> None:
        """Starts every worker now (the first costs the fork server's start, about a second), logging their process
        ids: the kernel's log names a process it kills by id."""
        async with self._starting:
            if self._all:
                return
            for _ in range(self._n):
                worker = await self._new_worker()
                self._all.append(worker)
                self._idle.put_nowait(worker)
        log.info("decode_workers_started", pids=self.pids)

    async def decode(self, header: FrameHeader, payload: bytes) -> Tensors | Rejected | Lost:
        loop = asyncio.get_running_loop()
        if not self._all:  # a first frame before the start
            await self.start()
        worker = await self._idle.get()
        if not worker.process.is_alive():  # died while idle (killed, out of memory): not this frame's doing
            worker = await self._replace(worker)
        call = loop.run_in_executor(self._io, worker.call, header, payload)
        try:
            result, kept, cpu_s = await asyncio.shield(call)
        except asyncio.CancelledError:  # the worker is busy until the call ends: back to the idle ones then
            call.add_done_callback(lambda done: self._idle.put_nowait(worker) if done.exception() is None else None)
            raise
        except (EOFError, OSError):  # the worker died with this frame in hand
            self._idle.put_nowait(await self._replace(worker))
            return self._died_on(header, len(payload))
        self._idle.put_nowait(worker)
        self._cut_off.pop((header.tool_id, header.frame_id), None)
        self._metrics.stage_cpu.count("decode", cpu_s)
        if kept:
            assert isinstance(result, Tensors)
            result = dataclasses.replace(result, png=payload)
        return result

    async def _new_worker(self) -> _Worker:
        """A worker started (its fork and slot hand-over wait on the fork server: on an I/O thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._io, _Worker, self._context, self._fn, self._sizes)

    async def _replace(self, dead: _Worker) -> _Worker:
        dead.stop()
        worker = await self._new_worker()
        self._all[self._all.index(dead)] = worker
        self._metrics.decode_restarts.inc()
        died = dead.process
        log.error("decode_worker_died", pid=died.pid, exitcode=died.exitcode, new_pid=worker.process.pid)
        return worker

    def _died_on(self, header: FrameHeader, size: int) -> Rejected | Lost:
        """A frame whose worker died: lost (busy, resent) the first time, refused the second."""
        key = (header.tool_id, header.frame_id)
        if key in self._cut_off:
            del self._cut_off[key]
            log.error("image_kills_decoders", tool_id=header.tool_id, frame_id=header.frame_id, bytes=size)
            return Rejected("undecodable", "the decoder's process died on this image twice", header.frame_id)
        self._cut_off[key] = None
        while len(self._cut_off) > REMEMBERED:
            self._cut_off.popitem(last=False)
        return LOST

    def close(self) -> None:
        for worker in self._all:
            worker.stop()
        self._io.shutdown(wait=False)


def decoder_for(threads: int, processes: int, fn: DecodeFn, sizes: Sizes, metrics: Metrics) -> Decoder:
    """Worker processes where ``processes`` is set, else threads of the daemon's own process."""
    if processes:
        return ProcessDecoder(processes, fn, sizes, metrics)
    return ThreadDecoder(threads, fn, sizes, metrics)

"""System shared memory for the image tensors of a local Triton (DESIGN 4: the small inputs and every output stay on
gRPC). Imported only by ``edge.inference.triton_client``; with it, the only modules that import tritonclient.

A pool of POSIX shared-memory regions, each sized for a full batch of one model's IMAGE tensor, is registered with
Triton under names unique to this process. A request checks a slot out, writes its images into the slot's region,
names the region in its IMAGE input and gives the slot back when the answer is in. Whatever keeps a request off
shared memory (the setting is off, the server is remote, /dev/shm is short, Triton refused the regions, every slot
is taken) sends that request over plain gRPC instead: shared memory saves copies, it never decides whether a frame
is inspected.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory as posix_shm
from typing import Literal

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.utils.shared_memory as triton_shm
from tritonclient.utils import InferenceServerException

from edge.inference.inputs import Images
from edge.ops.logs import get

log = get("edge.inference.shared_memory")

Setting = Literal["auto", "off"]
SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory (a tmpfs: a write past its size kills the writer)
EXTRA_SLOTS = 2  # beyond one per concurrent batch: a batch split between a live and a canary version, warm-ups
# Triton could not be reached (restarting, not up yet): the regions are registered on a later request
_TRANSIENT = frozenset(str(code) for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))


def is_local(url: str) -> bool:
    """Whether the gRPC target ``url`` (``host:port``, ``[v6]:port`` or ``unix:path``) is on this host by its
    address alone: a loopback address, ``localhost`` or a Unix socket. Names are not resolved."""
    if url.startswith(("unix:", "unix-abstract:")):
        return True
    host = url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def off_reason(url: str, setting: Setting) -> str | None:
    """Why the images of requests to ``url`` cannot go through shared memory, or None when they can."""
    if setting == "off":
        return "off in the config (triton.shared_memory)"
    if not is_local(url):
        return f"Triton at {url} is not on this host"
    return None


def space_reason(needed_bytes: int, free_bytes: int) -> str | None:
    """Why regions of ``needed_bytes`` in all do not fit the ``free_bytes`` of /dev/shm, or None when they do."""
    if needed_bytes > free_bytes:
        return f"{SHM_DIR} has {free_bytes} bytes free, the regions need {needed_bytes}"
    return None


@dataclass(frozen=True, slots=True)
class ImagePlan:
    """The regions to make: ``slots`` per model, each of ``bytes_per_model[model]`` (a full batch of its IMAGE)."""

    slots: int
    bytes_per_model: Mapping[str, int]

    @classmethod
    def for_batches(
        cls, max_batch: int, concurrent_batches: int, height: int, width: int, channels: Mapping[str, int]
    ) -> ImagePlan:
        """One slot per batch that may be in flight, and ``EXTRA_SLOTS``; ``channels``: per model."""
        sizes = {model: max_batch * c * height * width for model, c in channels.items()}
        return cls(concurrent_batches + EXTRA_SLOTS, sizes)

    @property
    def total_bytes(self) -> int:
        return self.slots * sum(self.bytes_per_model.values())


class SlotPool:
    """Which of ``size`` slots are free. A checkout never waits: None when every slot is out."""

    def __init__(self, size: int) -> None:
        self._free = list(range(size - 1, -1, -1))
        self._out: set[int] = set()

    def take(self) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop()
        self._out.add(slot)
        return slot

    def give(self, slot: int) -> None:
        if slot not in self._out:
            raise ValueError(f"slot {slot} is not checked out")
        self._out.remove(slot)
        self._free.append(slot)

    @property
    def free(self) -> int:
        return len(self._free)


@dataclass(frozen=True, slots=True)
class Region:
    name: str  # Triton's name for it, unique to this process
    key: str  # the POSIX shared-memory object
    byte_size: int
    handle: triton_shm.SharedMemoryRegion


@dataclass(frozen=True, slots=True)
class Lease:
    """A slot checked out for one request, its images already written into the region."""

    model: str
    slot: int
    region: str
    byte_size: int  # of the images written


def _create(name: str, byte_size: int) -> Region:
    """A fresh region ``name``: one of the same name left by a killed process is unlinked first, never reused."""
    key = "/" + name
    try:
        handle = triton_shm.create_shared_memory_region(name, key, byte_size, create_only=True)
    except triton_shm.SharedMemoryException as err:
        if not isinstance(err.__cause__, FileExistsError):
            raise
        stale = posix_shm.SharedMemory(key)
        stale.close()
        stale.unlink()
        handle = triton_shm.create_shared_memory_region(name, key, byte_size, create_only=True)
    return Region(name, key, byte_size, handle)


State = Literal["unregistered", "registered", "off"]


class SharedImages:
    """The regions of one client and their registration with Triton (``client``: tritonclient's aio gRPC client).

    ``unregistered``: the regions are made and registered (again) on the next request; ``registered``: requests
    use them; ``off``: every request goes over plain gRPC (logged once, with the reason). ``on_state`` hears
    True while the regions are registered, False otherwise."""

    def __init__(
        self,
        client: grpcclient.InferenceServerClient,
        plan: ImagePlan,
        timeout_s: float,
        on_state: Callable[[bool], None] = lambda registered: None,
        free_bytes: Callable[[], int] = lambda: _free_bytes(SHM_DIR),
    ) -> None:
        self._client = client
        self._plan = plan
        self._timeout_s = timeout_s
        self._on_state = on_state
        self._free_bytes = free_bytes
        self.prefix = f"edge-{os.getpid()}-{secrets.token_hex(4)}"
        self.state: State = "unregistered"
        self._regions: dict[str, list[Region]] = {}
        self._pools = {model: SlotPool(plan.slots) for model in plan.bytes_per_model}
        self._registering = asyncio.Lock()

    @property
    def names(self) -> list[str]:
        """The names of this client's regions (made or not)."""
        return [
            f"{self.prefix}-{model}-{slot}" for model in self._plan.bytes_per_model for slot in range(self._plan.slots)
        ]

    async def ready(self) -> None:
        """Make and register the regions where they are not yet (and no other request is doing it)."""
        if self.state == "unregistered" and not self._registering.locked():
            async with self._registering:
                await self._register()

    def take(self, model: str, images: Images) -> Lease | None:
        """A slot of ``model``'s holding ``images`` (stacked straight into its region); None: send them over gRPC
        (shared memory off or not registered yet, every slot out, or more images than a slot holds)."""
        pool = self._pools.get(model)
        if self.state != "registered" or pool is None or images.nbytes > self._plan.bytes_per_model[model]:
            return None
        slot = pool.take()
        if slot is None:
            return None
        region = self._regions[model][slot]
        try:
            images.stacked(out=triton_shm.get_contents_as_numpy(region.handle, np.uint8, images.shape))
        except (triton_shm.SharedMemoryException, ValueError, TypeError) as err:
            pool.give(slot)
            log.warning("triton_shared_memory_write_failed", region=region.name, error=str(err.__cause__ or err))
            return None
        return Lease(model, slot, region.name, images.nbytes)

    def give_back(self, lease: Lease) -> None:
        self._pools[lease.model].give(lease.slot)

    def lost(self, lease: Lease, err: InferenceServerException) -> bool:
        """Whether ``err`` is Triton not knowing the lease's region (it restarted, or the region was unregistered
        behind our back): then the regions are registered again on the next request."""
        if lease.region not in str(err):
            return False
        if self.state == "registered":
            log.warning("triton_shared_memory_lost", error=str(err), action="registering again")
            self._set("unregistered")
        return True

    async def close(self) -> None:
        """Unregister the regions from Triton (where it can still be reached) and remove them."""
        async with self._registering:
            if self.state == "registered":
                try:
                    for name in self._made():
                        await self._client.unregister_system_shared_memory(name, client_timeout=self._timeout_s)
                except InferenceServerException as err:
                    log.info("triton_shared_memory_not_unregistered", error=str(err))
            self._destroy()
            self._set("off")

    def _made(self) -> list[str]:
        return [r.name for regions in self._regions.values() for r in regions]

    async def _register(self) -> None:
        if not self._regions:
            reason = space_reason(self._plan.total_bytes, self._free_bytes())
            if reason is not None:
                return self._give_up(reason)
            try:
                for model, size in self._plan.bytes_per_model.items():
                    self._regions[model] = []  # the ones made so far are removed if one cannot be
                    for slot in range(self._plan.slots):
                        self._regions[model].append(_create(f"{self.prefix}-{model}-{slot}", size))
            except (triton_shm.SharedMemoryException, OSError) as err:
                return self._give_up(f"cannot make a region in {SHM_DIR}: {err.__cause__ or err}")
        try:
            status = await self._client.get_system_shared_memory_status(as_json=True, client_timeout=self._timeout_s)
            known = set(status.get("regions", {}))
            for regions in self._regions.values():
                for r in regions:
                    if r.name not in known:
                        await self._client.register_system_shared_memory(
                            r.name, r.key, r.byte_size, client_timeout=self._timeout_s
                        )
        except InferenceServerException as err:
            if err.status() in _TRANSIENT:
                return None  # still unregistered: tried again with a later request
            for name in self._made():  # the ones it took before refusing
                try:
                    await self._client.unregister_system_shared_memory(name, client_timeout=self._timeout_s)
                except InferenceServerException:
                    break
            return self._give_up(f"Triton refused the regions: {err}")
        self._set("registered")
        log.info("triton_shared_memory_registered", regions=len(self._made()), bytes=self._plan.total_bytes)
        return None

    def _give_up(self, reason: str) -> None:
        log.warning("triton_shared_memory_off", reason=reason, transport="grpc")
        self._destroy()
        self._set("off")

    def _destroy(self) -> None:
        for regions in self._regions.values():
            for r in regions:
                triton_shm.destroy_shared_memory_region(r.handle)
        self._regions.clear()

    def _set(self, state: State) -> None:
        self.state = state
        self._on_state(state == "registered")


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize

"""Shared memory for the image tensors, without a server: which URLs qualify, the slot pool, the region plan, and the
registration states against a scripted Triton (the regions themselves are real POSIX shared memory)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from edge.config import Config
from edge.inference.inputs import Images
from edge.inference.shared_memory import (
    EXTRA_SLOTS,
    ImagePlan,
    Lease,
    SharedImages,
    SlotPool,
    is_local,
    off_reason,
    space_reason,
)
from edge.inference.triton_client import image_plan

SHM = Path("/dev/shm")
MINIMAL: dict[str, Any] = {"tools": [{"id": "AOI-01"}], "recipes": {"R1": {}}}


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:8001", "127.3.2.1:8001", "localhost:8001", "LOCALHOST:8001", "[::1]:8001", "::1", "unix:/run/t.sock"],
)
def test_loopback_and_unix_socket_urls_are_local(url: str) -> None:
    assert is_local(url)


@pytest.mark.parametrize("url", ["10.0.0.5:8001", "gpu-server.fab.local:8001", "[2001:db8::1]:8001", "192.168.1.2"])
def test_other_hosts_are_remote(url: str) -> None:
    assert not is_local(url)


def test_off_reason_names_the_setting_or_the_remote_host() -> None:
    assert off_reason("127.0.0.1:8001", "auto") is None
    assert "off in the config" in str(off_reason("127.0.0.1:8001", "off"))
    assert "10.0.0.5:8001 is not on this host" in str(off_reason("10.0.0.5:8001", "auto"))


def test_space_reason_only_when_dev_shm_is_too_small() -> None:
    assert space_reason(100, 100) is None
    assert space_reason(101, 100) == "/dev/shm has 100 bytes free, the regions need 101"


def test_plan_holds_a_full_batch_of_each_image_per_batch_in_flight() -> None:
    cfg = Config.model_validate({**MINIMAL, "batching": {"max_batch": 32, "max_concurrent_batches": 3}})
    plan = image_plan(cfg)
    assert plan.slots == 3 + EXTRA_SLOTS
    assert dict(plan.bytes_per_model) == {"anomaly": 32 * 256 * 256, "classifier": 32 * 3 * 256 * 256}
    assert plan.total_bytes == plan.slots * 32 * 4 * 256 * 256


def test_a_config_without_the_key_means_auto_and_a_wrong_value_is_refused() -> None:
    assert Config.model_validate(MINIMAL).triton.shared_memory == "auto"
    assert Config.model_validate({**MINIMAL, "triton": {"shared_memory": "off"}}).triton.shared_memory == "off"
    with pytest.raises(ValueError, match="shared_memory"):
        Config.model_validate({**MINIMAL, "triton": {"shared_memory": "on"}})


def test_pool_hands_out_each_slot_once_and_none_when_exhausted() -> None:
    pool = SlotPool(2)
    first, second = pool.take(), pool.take()
    assert {first, second} == {0, 1}
    assert pool.take() is None and pool.free == 0
    assert second is not None
    pool.give(second)
    assert pool.take() == second
    with pytest.raises(ValueError, match="not checked out"):
        pool.give(7)


def test_a_slot_cannot_be_given_back_twice() -> None:
    pool = SlotPool(1)
    slot = pool.take()
    assert slot is not None
    pool.give(slot)
    with pytest.raises(ValueError):
        pool.give(slot)
    assert pool.free == 1


class ScriptedTriton:
    """The shared-memory calls of tritonclient's aio client, answering from a table of registered regions."""

    def __init__(self) -> None:
        self.regions: dict[str, dict[str, Any]] = {}
        self.refuse: str | None = None  # a region name Triton cannot open
        self.down = False
        self.registered: list[str] = []

    def _check_up(self) -> None:
        if self.down:
            raise InferenceServerException("connection refused", status=str(grpc.StatusCode.UNAVAILABLE))

    async def get_system_shared_memory_status(self, as_json: bool, client_timeout: float) -> dict[str, Any]:
        self._check_up()
        return {"regions": dict(self.regions)}

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int, client_timeout: float) -> None:
        self._check_up()
        if name == self.refuse:
            raise InferenceServerException(
                f"Unable to open shared memory region: '{key}'", status="StatusCode.INTERNAL"
            )
        if not (SHM / key.lstrip("/")).exists():
            raise InferenceServerException(
                f"Unable to open shared memory region: '{key}'", status="StatusCode.INTERNAL"
            )
        self.regions[name] = {"name": name, "key": key, "byte_size": str(byte_size)}
        self.registered.append(name)

    async def unregister_system_shared_memory(self, name: str, client_timeout: float) -> None:
        self._check_up()
        self.regions.pop(name, None)


PLAN = ImagePlan(slots=2, bytes_per_model={"anomaly": 4 * 64, "classifier": 4 * 3 * 64})


def images(model: str, batch: int, seed: int = 0) -> np.ndarray:
    channels = 1 if model == "anomaly" else 3
    return np.random.default_rng(seed).integers(0, 256, (batch, channels, 8, 8), dtype=np.uint8)


async def take_slot(shared: SharedImages, model: str, images: Images) -> Lease | None:
    """As the client takes a slot: the regions registered where they are not, then a slot holding ``images``."""
    await shared.ready()
    return shared.take(model, images)


def shm_files(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM.glob(f"{prefix}-*"))


def make(triton: ScriptedTriton, free_bytes: int = 1 << 30) -> tuple[SharedImages, list[bool]]:
    states: list[bool] = []
    return SharedImages(triton, PLAN, 1.0, states.append, lambda: free_bytes), states  # type: ignore[arg-type]


def test_first_request_registers_every_region_and_writes_its_images() -> None:
    async def run() -> None:
        triton = ScriptedTriton()
        shared, states = make(triton)
        assert shared.prefix.startswith(f"edge-{os.getpid()}-")
        grey = images("anomaly", 3)
        lease = await take_slot(shared, "anomaly", Images(list(grey)))  # a frame's tensor each, stacked in the region
        assert lease is not None and shared.state == "registered" and states == [True]
        assert sorted(triton.regions) == sorted(shared.names) and len(shared.names) == 4
        assert shm_files(shared.prefix) == sorted(shared.names)
        assert lease.byte_size == grey.nbytes and lease.region.startswith(shared.prefix)
        written = np.fromfile(SHM / lease.region, np.uint8)[: grey.nbytes].reshape(grey.shape)
        np.testing.assert_array_equal(written, grey)
        shared.give_back(lease)
        await shared.close()
        assert triton.regions == {} and shm_files(shared.prefix) == [] and states[-1] is False

    asyncio.run(run())


def test_frames_that_do_not_stack_give_their_slot_back_and_go_over_grpc() -> None:
    async def run() -> None:
        shared, _ = make(ScriptedTriton())
        odd = Images([images("anomaly", 1)[0], np.zeros((1, 4, 8), np.uint8)])  # two shapes: no batch of them
        assert await take_slot(shared, "anomaly", odd) is None
        held = [await take_slot(shared, "anomaly", Images.of(images("anomaly", 1))) for _ in range(PLAN.slots)]
        assert all(lease is not None for lease in held)  # the slot tried was given back
        await shared.close()

    asyncio.run(run())


def test_requests_beyond_the_free_slots_or_a_full_batch_go_over_grpc_without_waiting() -> None:
    async def run() -> None:
        shared, _ = make(ScriptedTriton())
        held = [await take_slot(shared, "classifier", Images.of(images("classifier", 4))) for _ in range(PLAN.slots)]
        assert all(lease is not None for lease in held)
        assert await asyncio.wait_for(take_slot(shared, "classifier", Images.of(images("classifier", 1))), 0.5) is None
        assert await take_slot(shared, "anomaly", Images.of(images("anomaly", 5))) is None  # a slot holds 4
        first = held[0]
        assert first is not None
        shared.give_back(first)
        assert await take_slot(shared, "classifier", Images.of(images("classifier", 1))) is not None
        await shared.close()

    asyncio.run(run())


def test_a_refused_region_turns_shared_memory_off_and_removes_what_was_made() -> None:
    async def run() -> None:
        triton = ScriptedTriton()
        shared, states = make(triton)
        triton.refuse = shared.names[2]
        assert await take_slot(shared, "anomaly", Images.of(images("anomaly", 1))) is None
        assert shared.state == "off" and states == [False]
        assert triton.regions == {}  # the two it took before refusing were unregistered
        assert shm_files(shared.prefix) == []
        triton.refuse = None
        assert await take_slot(shared, "anomaly", Images.of(images("anomaly", 1))) is None  # off stays off
        assert len(triton.registered) == 2

    asyncio.run(run())


def test_a_short_dev_shm_turns_shared_memory_off_before_making_anything() -> None:
    async def run() -> None:
        triton = ScriptedTriton()
        shared, _ = make(triton, free_bytes=PLAN.total_bytes - 1)
        assert await take_slot(shared, "anomaly", Images.of(images("anomaly", 1))) is None
        assert shared.state == "off" and triton.registered == [] and shm_files(shared.prefix) == []

    asyncio.run(run())


def test_an_unreachable_triton_leaves_registration_to_a_later_request() -> None:
    async def run() -> None:
        triton = ScriptedTriton()
        triton.down = True
        shared, states = make(triton)
        assert await take_slot(shared, "anomaly", Images.of(images("anomaly", 1))) is None
        assert shared.state == "unregistered" and states == []
        triton.down = False
        assert await take_slot(shared, "anomaly", Images.of(images("anomaly", 1))) is not None
        assert shared.state == "registered"
        await shared.close()

    asyncio.run(run())


def test_an_error_naming_a_lost_region_registers_the_missing_regions_once_more() -> None:
    async def run() -> None:
        triton = ScriptedTriton()
        shared, states = make(triton)
        lease = await take_slot(shared, "anomaly", Images.of(images("anomaly", 1)))
        assert lease is not None
        other = InferenceServerException("model not ready", status=str(grpc.StatusCode.UNAVAILABLE))
        assert not shared.lost(lease, other) and shared.state == "registered"
        del triton.regions[lease.region]  # unregistered behind our back
        gone = InferenceServerException(f"Unable to find shared memory region: '{lease.region}'", status="NOT_FOUND")
        assert shared.lost(lease, gone) and shared.state == "unregistered"
        shared.give_back(lease)
        before = len(triton.registered)
        assert await take_slot(shared, "anomaly", Images.of(images("anomaly", 1))) is not None
        assert triton.registered[before:] == [lease.region]  # only the one Triton had lost
        assert states == [True, False, True]
        await shared.close()

    asyncio.run(run())


def test_a_region_left_by_a_killed_process_under_the_same_name_is_replaced() -> None:
    async def run() -> None:
        shared, _ = make(ScriptedTriton())
        stale = SHM / f"{shared.prefix}-anomaly-0"
        stale.write_bytes(b"x" * 16)  # too small, and someone else's contents
        try:
            grey = images("anomaly", 4)
            # a frame's tensor each, stacked in the region
            lease = await take_slot(shared, "anomaly", Images(list(grey)))
            assert lease is not None and lease.region == stale.name
            assert stale.stat().st_size == PLAN.bytes_per_model["anomaly"]
            np.testing.assert_array_equal(np.fromfile(stale, np.uint8).reshape(grey.shape), grey)
            shared.give_back(lease)
            await shared.close()
            assert not stale.exists()
        finally:
            stale.unlink(missing_ok=True)

    asyncio.run(run())

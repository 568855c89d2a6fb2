"""Detector state as bytes: round trips, and a damaged or foreign blob is refused, never executed."""

import msgpack
import numpy as np
import pytest

from edge.watch import state_codec


class Ring:
    __slots__ = ("data", "filled")

    def __init__(self, data, filled):
        self.data, self.filled = data, filled


class State:
    __slots__ = ("index", "names", "raised", "reference", "ring", "statistic")


def sample() -> State:
    s = State()
    s.names, s.index = ["a", "b"], {"a": 0, "b": 1}
    s.raised, s.statistic = True, None
    s.reference = np.array([[1.5, np.nan], [2.0, 3.0]])
    s.ring = Ring(np.arange(4, dtype=np.int64), np.int64(3))
    return s


CLASSES = {"State": State, "Ring": Ring}


def test_a_state_comes_back_as_it_was():
    back = state_codec.load(state_codec.dump(sample()), CLASSES)
    assert isinstance(back, State) and isinstance(back.ring, Ring)
    assert back.names == ["a", "b"] and back.index == {"a": 0, "b": 1} and back.raised is True
    assert back.statistic is None and back.ring.filled == 3
    np.testing.assert_array_equal(back.reference, sample().reference)
    assert back.ring.data.dtype == np.int64 and back.ring.data.flags.writeable


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\xc1garbage", "not a state blob"),
        (msgpack.packb({"v": 99, "state": None}), "another version"),
        (msgpack.packb({"v": 1, "state": {"__obj__": "os.system", "slots": {}}}), "unexpected state class"),
        (msgpack.packb({"v": 1, "state": {"__obj__": "Ring", "slots": {"data": 1}}}), "slots"),
        (msgpack.packb({"v": 1, "state": {"__nd__": ["|O", [1], b"x"]}}), "unexpected array type"),
        (msgpack.packb({"v": 1, "state": {"x": 1}}), "unexpected mapping"),
    ],
)
def test_a_damaged_or_foreign_blob_is_refused(blob, message):
    with pytest.raises(ValueError, match=message):
        state_codec.load(blob, CLASSES)

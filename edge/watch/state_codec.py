"""Bytes for the in-memory state of the line-watch detectors (pure): msgpack with numpy arrays.

The detectors keep their per-key state in small ``__slots__`` objects holding numpy arrays, numbers,
lists of names and ``None``, and sometimes another such object (a ring buffer). ``dump`` walks the
slots and packs arrays as dtype, shape and raw bytes; ``load`` rebuilds the object from the classes
it is allowed to build (never from a name found in the data), so a damaged or foreign blob is a
``ValueError``, never code run.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

VERSION = 1
_ND = "__nd__"
_OBJ = "__obj__"
_MAP = "__map__"


def dump(obj: object) -> bytes:
    blob: bytes = msgpack.packb({"v": VERSION, "state": _encode(obj)}, use_bin_type=True)
    return blob


def load(blob: bytes, classes: dict[str, type]) -> Any:
    """The object ``dump`` packed; ``classes`` names every slot class it may contain, by class name."""
    try:
        data = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except Exception as err:  # noqa: BLE001 - msgpack raises several unrelated types on corrupt input
        raise ValueError(f"not a state blob: {type(err).__name__}") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise ValueError(f"state blob of another version: {data.get('v') if isinstance(data, dict) else None}")
    return _decode(data.get("state"), classes)


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {_ND: [value.dtype.str, list(value.shape), np.ascontiguousarray(value).tobytes()]}
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__slots__") and not isinstance(value, (str, bytes)):
        return {_OBJ: type(value).__name__, "slots": {s: _encode(getattr(value, s)) for s in value.__slots__}}
    if isinstance(value, dict):
        return {_MAP: [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot pack a {type(value).__name__}")


def _decode(value: Any, classes: dict[str, type]) -> Any:
    if isinstance(value, dict) and _ND in value:
        dtype, shape, raw = value[_ND]
        if np.dtype(dtype).kind not in "biuf":
            raise ValueError(f"unexpected array type {dtype}")
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if isinstance(value, dict) and _OBJ in value:
        # Any: built reflectively, through the __new__ and __slots__ of whichever slot class the blob names
        cls: Any = classes.get(value[_OBJ])
        if cls is None:
            raise ValueError(f"unexpected state class {value[_OBJ]!r}")
        obj = cls.__new__(cls)
        slots = value.get("slots", {})
        if set(slots) != set(cls.__slots__):
            raise ValueError(f"{cls.__name__}: slots {sorted(slots)} are not {sorted(cls.__slots__)}")
        for name, item in slots.items():
            setattr(obj, name, _decode(item, classes))
        return obj
    if isinstance(value, dict) and _MAP in value:
        return {_decode(k, classes): _decode(v, classes) for k, v in value[_MAP]}
    if isinstance(value, list):
        return [_decode(v, classes) for v in value]
    if isinstance(value, dict):
        raise ValueError("unexpected mapping in a state blob")
    return value


class Exportable:
    """Per-key state that outlives a restart: ``export`` it, and ``restore`` what a previous run exported.

    A subclass keeps its states in ``_keys``, names the slot classes they are built of in
    ``_classes``, and says in ``_fits`` whether a loaded state matches its present settings (a window
    size changed in the config makes an old state useless: that key starts afresh).
    """

    _keys: dict[tuple[str, str], Any]
    _classes: dict[str, type]

    def _fits(self, state: Any) -> bool:
        raise NotImplementedError

    def tracked_keys(self) -> list[tuple[str, str]]:
        return list(self._keys)

    def export(self) -> dict[tuple[str, str], bytes]:
        return {key: dump(state) for key, state in self._keys.items()}

    def restore(self, states: dict[tuple[str, str], bytes]) -> list[tuple[str, str]]:
        """Take the states of a previous run; the keys left to start afresh (unreadable, or not fitting)."""
        refused = []
        for key, blob in states.items():
            try:
                state = load(blob, self._classes)
                fits = self._fits(state)
            except (ValueError, TypeError, AttributeError, IndexError):
                fits = False
            if fits:
                self._keys[key] = state
            else:
                refused.append(key)
        return refused

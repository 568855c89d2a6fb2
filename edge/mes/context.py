"""MES context (DESIGN 3.2): parse process logs and lot events, keep a bounded, aged cache. Pure."""

from __future__ import annotations

import json
import math
import sys
from collections import OrderedDict
from typing import Any, get_args

from edge.flow import LotEvent, MesRejectReason, ProcessLog, Rejected

MES_REJECT_REASONS: tuple[MesRejectReason, ...] = get_args(MesRejectReason)
_IDS = ("lot_id", "wafer_id", "recipe_id", "tool_id")
_MAX_PARAMS = 512


LOT_EVENTS = ("lot_start", "lot_end", "wafer_end")


def json_object(payload: bytes) -> dict[str, Any] | Rejected:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        return Rejected("bad_json", f"not JSON: {err}")
    if not isinstance(data, dict):
        return Rejected("not_an_object", "message must be a JSON object")
    return data


def string_fields(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str] | Rejected:
    missing = [k for k in keys if k not in data]
    if missing:
        return Rejected("missing_key", f"missing {', '.join(missing)}")
    bad = [k for k in keys if not isinstance(data[k], str) or not data[k] or len(data[k]) > 128]
    if bad:
        return Rejected("bad_value", f"{', '.join(bad)} must be non-empty strings")
    return {k: data[k] for k in keys}


def parse_process_log(payload: bytes) -> ProcessLog | Rejected:
    data = json_object(payload)
    if isinstance(data, Rejected):
        return data
    ids = string_fields(data, _IDS)
    if isinstance(ids, Rejected):
        return ids
    params = data.get("params")
    if not isinstance(params, dict) or len(params) > _MAX_PARAMS:
        return Rejected("bad_value", f"params must be an object of at most {_MAX_PARAMS} entries")
    clean = {  # names interned: thousands of cached logs share one copy of each
        sys.intern(str(k)): float(v)
        for k, v in params.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    ts = data.get("ts", 0.0)
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return Rejected("bad_value", "ts must be epoch seconds")
    notes = data.get("notes")
    if notes is not None and not isinstance(notes, str):
        return Rejected("bad_value", "notes must be a string")
    chamber = data.get("chamber_id")
    if chamber is not None and (not isinstance(chamber, str) or not chamber or len(chamber) > 128):
        return Rejected("bad_value", "chamber_id must be a non-empty string of at most 128 characters")
    return ProcessLog(
        ids["lot_id"],
        ids["wafer_id"],
        ids["recipe_id"],
        ids["tool_id"],
        float(ts),
        clean,
        notes[:2000] if notes else None,
        chamber_id=chamber,
    )


def parse_lot_event(payload: bytes) -> LotEvent | Rejected:
    data = json_object(payload)
    if isinstance(data, Rejected):
        return data
    kind = data.get("event")
    if kind not in LOT_EVENTS:
        return Rejected("bad_value", f"event must be one of {', '.join(LOT_EVENTS)}")
    keys = ("lot_id", "recipe_id", "tool_id", "wafer_id") if kind == "wafer_end" else ("lot_id", "recipe_id", "tool_id")
    ids = string_fields(data, keys)
    if isinstance(ids, Rejected):
        return ids
    return LotEvent(kind, ids["lot_id"], ids["recipe_id"], ids["tool_id"], ids.get("wafer_id"))


class ContextCache:
    """Process logs by (tool_id, lot_id, wafer_id), at most ``max_entries``, none older than ``max_age_s``."""

    def __init__(self, max_entries: int, max_age_s: float) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, ProcessLog]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, log: ProcessLog, now: float) -> None:
        self._entries.pop(log.key, None)
        self._entries[log.key] = (now, log)
        self._expire(now)

    def get(self, key: tuple[str, str, str], now: float) -> ProcessLog | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if now - item[0] > self.max_age_s:
            del self._entries[key]
            return None
        return item[1]

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (stored, _) = next(iter(self._entries.items()))
            if len(self._entries) <= self.max_entries and now - stored <= self.max_age_s:
                break
            del self._entries[key]

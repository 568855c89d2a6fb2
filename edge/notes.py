"""Operator-note tokenizer shared by training and serving: hashed word ids, fixed length."""

from __future__ import annotations

import re
import zlib

import numpy as np

VOCAB_SIZE = 4096  # id 0 is padding
MAX_TOKENS = 32
_WORD = re.compile(r"[a-z0-9]+(?:[-_.][a-z0-9]+)*")


def tokenize(text: str | None, max_tokens: int = MAX_TOKENS) -> tuple[np.ndarray, bool]:
    """Token ids (int64, zero padded) of a note, and whether a non-empty note was present."""
    ids = np.zeros(max_tokens, dtype=np.int64)
    if not text:
        return ids, False
    words = _WORD.findall(text.lower())[:max_tokens]
    for i, word in enumerate(words):
        ids[i] = 1 + zlib.crc32(word.encode()) % (VOCAB_SIZE - 1)
    return ids, bool(words)

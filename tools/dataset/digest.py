"""The digest of a labelled folder: what a model was trained on, named by content (pure over the files).

SHA-256 over ``labels.csv``, ``process.csv`` (when present) and every image the labels name, each entered as its
path relative to the folder and the SHA-256 of its bytes, in label order. Two folders with the same files give the
same digest wherever they lie; one changed pixel, label or process value gives another.
"""

from __future__ import annotations

import hashlib

from tools.dataset.folder import LABELS, PROCESS, DataSet
from tools.precision_gate import sha256


def data_digest(data: DataSet) -> str:
    total = hashlib.sha256()
    files = [data.root / LABELS, data.root / PROCESS, *(d.path for d in data.dies)]
    for path in files:
        if path.is_file():
            total.update(f"{path.relative_to(data.root).as_posix()}\0{sha256(path)}\n".encode())
    return total.hexdigest()

"""Benchmark of the similar-defect index (edge/capture/similar.py): build time, size, single-query latency, recall.

    python -m tools.bench.similar --sizes 10000 100000 1000000 --queries 1000 --k 10 [--hnsw] [--out FILE.json]

Per size: ``SimilarIndex.build`` over that many synthetic embeddings (``--threads`` faiss threads, as a rebuild from
the store would run), the saved file's bytes (faiss index and id map) and the time to save it, ``--queries`` single
queries one at a time on one thread (as a user asks, through ``SimilarIndex.search``) with their p50/p99 latency,
recall@k against exact search (faiss ``IndexFlatIP`` over the same unit vectors), and the time to remove a batch of
1,000 captures (a prune). ``--hnsw`` also times faiss HNSW (M=32, efConstruction=40, efSearch=64) on the same
vectors, the alternative the index does not use: its build, bytes, latency (raw faiss, no id map) and recall.

Embeddings (``--data``):

- ``clustered`` (default, the realistic case): 16 classes with Zipf-like frequencies; a class is a random unit centre
  plus a spread along a random 32-d subspace of the 128 (scales 0.3 x 0.93^i) plus isotropic noise of norm ~0.3.
  Queries are new draws from the same mixture (an event's die is never itself stored).
- ``uniform``: isotropic Gaussian noise, no structure: the worst case for approximate search (no neighbourhoods to
  find), not what a classifier's embeddings look like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from edge.capture.similar import DIM, SimilarIndex, use_threads

CLASSES = 16
SUBSPACE = 32  # the spread of a class lies in this many of the 128 dimensions
SPREAD = 0.3  # the scale of the subspace's first axis; the next ones decay by DECAY
DECAY = 0.93
NOISE = 0.3  # norm of the isotropic noise on each embedding
PRUNE_BATCH = 1000

Vectors = npt.NDArray[np.float32]


def clustered_embeddings(n: int, seed: int, *, model_seed: int = 0, dim: int = DIM) -> Vectors:
    """``n`` draws from a fixed mixture of ``CLASSES`` class clusters (the mixture fixed by ``model_seed``)."""
    model = np.random.default_rng(model_seed)
    centres = model.standard_normal((CLASSES, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = [np.linalg.qr(model.standard_normal((dim, SUBSPACE)))[0].T.astype(np.float32) for _ in range(CLASSES)]
    scales = (SPREAD * DECAY ** np.arange(SUBSPACE)).astype(np.float32)
    weights = 1.0 / np.arange(1, CLASSES + 1)
    rng = np.random.default_rng(seed)
    classes = rng.choice(CLASSES, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    for c in range(CLASSES):
        rows = np.flatnonzero(classes == c)
        spread = rng.standard_normal((rows.size, SUBSPACE), dtype=np.float32) * scales
        noise = rng.standard_normal((rows.size, dim), dtype=np.float32) * np.float32(NOISE / np.sqrt(dim))
        out[rows] = centres[c] + spread @ bases[c] + noise
    return out


def uniform_embeddings(n: int, seed: int, *, dim: int = DIM) -> Vectors:
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def _unit(x: Vectors) -> Vectors:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def recall(found: list[list[int]], truth: npt.NDArray[np.int64], k: int) -> float:
    """Mean share of the exact top-k that the approximate answer holds."""
    return float(np.mean([len(set(f) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def _percentiles_ms(seconds: list[float]) -> dict[str, float]:
    return {f"p{q}_ms": round(float(np.percentile(seconds, q)) * 1e3, 3) for q in (50, 99)}


def _hnsw(vectors: Vectors, queries: Vectors, truth: npt.NDArray[np.int64], k: int, threads: int) -> dict[str, float]:
    use_threads(threads)
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.add(vectors)
    build_s = time.perf_counter() - t0
    use_threads(1)
    index.hnsw.efSearch = 64
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, labels = index.search(q[None, :], k)
        latencies.append(time.perf_counter() - t)
        found.append(labels[0].tolist())
    return {"build_s": round(build_s, 1), "bytes": int(faiss.serialize_index(index).nbytes),
            **_percentiles_ms(latencies), "recall": round(recall(found, truth, k), 4)}  # fmt: skip


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """One row: build, save, query and prune an index of ``size`` embeddings."""
    if args.data == "clustered":
        vectors, queries = clustered_embeddings(size, seed=size), clustered_embeddings(args.queries, seed=size + 1)
    else:
        vectors, queries = uniform_embeddings(size, seed=size), uniform_embeddings(args.queries, seed=size + 1)
    ids = [f"c{i}" for i in range(size)]
    t0 = time.perf_counter()
    index = SimilarIndex.build(ids, vectors, threads=args.threads)
    build_s = time.perf_counter() - t0

    unit, unit_queries = _unit(vectors), _unit(queries)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(unit)
    _, truth = exact.search(unit_queries, args.k)
    del exact

    with tempfile.TemporaryDirectory(prefix="bench-similar-") as tmp:
        path = Path(tmp) / "similar.npz"
        t0 = time.perf_counter()
        index.save(path)
        save_s = time.perf_counter() - t0
        file_bytes = path.stat().st_size

    use_threads(1)  # queries as the daemon answers them
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        answer = index.search(q, args.k)
        latencies.append(time.perf_counter() - t)
        found.append([int(capture_id[1:]) for capture_id, _ in answer])
    row: dict[str, Any] = {
        "size": size, "index": "exact" if index.exact else f"ivf nlist={index.nlist} nprobe={index.nprobe}",
        "build_s": round(build_s, 2), "file_bytes": file_bytes, "save_s": round(save_s, 2),
        **_percentiles_ms(latencies), f"recall@{args.k}": round(recall(found, truth, args.k), 4),
    }  # fmt: skip
    pruned = np.random.default_rng(size).choice(size, size=min(PRUNE_BATCH, size // 2), replace=False)
    t0 = time.perf_counter()
    index.remove([ids[i] for i in pruned])
    row[f"remove_{len(pruned)}_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    if args.hnsw:
        del index
        row["hnsw"] = _hnsw(unit, unit_queries, truth, args.k, args.threads)
    return row


def _table(rows: list[dict[str, Any]], k: int) -> str:
    lines = [f"{'size':>9} {'index':<26} {'build_s':>8} {'file_MB':>8} {'p50_ms':>7} {'p99_ms':>7} "
             f"{'recall@' + str(k):>9} {'remove_1000_ms':>14}"]  # fmt: skip
    for r in rows:
        remove = next(v for key, v in r.items() if key.startswith("remove_"))
        lines.append(f"{r['size']:>9} {r['index']:<26} {r['build_s']:>8} {r['file_bytes'] / 2**20:>8.1f} "
                     f"{r['p50_ms']:>7} {r['p99_ms']:>7} {r[f'recall@{k}']:>9} {remove:>14}")  # fmt: skip
        if "hnsw" in r:
            h = r["hnsw"]
            lines.append(f"{'':>9} {'(hnsw M=32 efSearch=64)':<26} {h['build_s']:>8} {h['bytes'] / 2**20:>8.1f} "
                         f"{h['p50_ms']:>7} {h['p99_ms']:>7} {h['recall']:>9} {'n/a':>14}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.similar", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000, help="single queries per size")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="faiss threads for the builds")
    parser.add_argument("--hnsw", action="store_true", help="also time faiss HNSW on the same vectors")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    what = "16 class clusters, the realistic case" if args.data == "clustered" else "isotropic noise, the worst case"
    host = f"{os.cpu_count()} CPUs, {platform.machine()}, faiss {faiss.__version__}"
    print(f"data: {args.data} ({what}); {args.queries} single queries on 1 thread; "
          f"builds on {args.threads} thread(s); {host}", flush=True)  # fmt: skip
    rows = []
    for size in args.sizes:
        rows.append(measure(size, args))
        print(json.dumps(rows[-1]), flush=True)
    print(_table(rows, args.k))
    if args.out:
        report = {"data": args.data, "k": args.k, "queries": args.queries, "threads": args.threads, "host": host,
                  "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

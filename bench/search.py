"""search.py's exact search against its faiss index, on synthetic FoodSpace-like embeddings.

For each index size (default 50,000 and 1,000,000 items of 1024 dimensions) it times, with
search.py's own functions (:func:`utils.search_index.normalize_rows`, :func:`~utils.search_index.exact_search`,
:func:`~utils.search_index.build_faiss`, :func:`~utils.search_index.faiss_search`):

* building: exact = normalising the rows (the index *is* the matrix); faiss = k-means training
  of its ``IndexIVFFlat`` (``nlist`` = search.py's default, about sqrt(N)) and adding the rows;
* memory: the bytes the index holds (exact: N x D float32; IVFFlat: the same codes plus an int64
  id per row and the centroids) and the process's peak resident memory after the size;
* queries per second for ``--queries`` queries, top ``--k``;
* faiss recall@k against the exact search, for each ``--nprobe``.

The items are synthetic, shaped as embeddings tend to be (an inverted file needs structure to
prune; uniformly random 1024-d vectors have none, and any synthetic set is only a guess at real
ones): ``--clusters`` (1000) Gaussian clusters in a random ``--latent`` (64)-dimensional
subspace, each item its cluster's centre plus an offset of ``--spread`` (1) times the centres'
scale, so that clusters overlap, plus isotropic noise of norm ``--noise`` (0.3), L2-normalised;
a query is an item plus noise of norm 0.5 (a recipe near its photo), normalised. search.py prints
the recall on a run's own embeddings when it builds a faiss index.

Usage: ``python bench/search.py [--sizes 50000,1000000] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

try:
    from utils import search_index
except ModuleNotFoundError:  # run as `python bench/search.py`: the checkout is not on sys.path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from utils import search_index

from utils.io import atomic_write_json


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="50000,1000000", help="index sizes, comma-separated")
    p.add_argument("--dim", type=int, default=1024, help="embedding dimension")
    p.add_argument("--queries", type=int, default=256, help="queries timed per size")
    p.add_argument("--k", type=int, default=10, help="results per query (recall@k)")
    p.add_argument("--nprobe", default="8,32,128", help="faiss lists searched per query, comma-separated")
    p.add_argument("--latent", type=int, default=64, help="dimension of the subspace the items live in")
    p.add_argument("--clusters", type=int, default=1000, help="cluster centres of the synthetic items")
    p.add_argument("--spread", type=float, default=1.0, help="an item's offset from its centre, relative to the centres")
    p.add_argument("--noise", type=float, default=0.3, help="norm of the isotropic noise added to each item")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--quick", action="store_true", help="a smoke run: 5,000 items of 128 dimensions")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p


def make_items(n: int, args, rng: np.random.Generator, block: int = 65536) -> np.ndarray:
    """(n, dim) float32 unit rows from the module docstring's model, built in blocks."""
    dim, r = args.dim, args.latent
    basis = np.linalg.qr(rng.standard_normal((dim, r)))[0].astype(np.float32)  # (dim, r) orthonormal
    centres = rng.standard_normal((args.clusters, r), dtype=np.float32) / np.float32(np.sqrt(r))
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, block):
        b = min(s + block, n) - s
        z = centres[rng.integers(args.clusters, size=b)]
        z += rng.standard_normal((b, r), dtype=np.float32) * np.float32(args.spread / np.sqrt(r))
        noise = rng.standard_normal((b, dim), dtype=np.float32) * np.float32(args.noise / np.sqrt(dim))
        out[s:s + b] = search_index.normalize_rows(z @ basis.T + noise)
    return out


def make_queries(items: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    """(q, dim) queries: random items plus noise of norm ~0.5, normalised."""
    base = items[rng.integers(len(items), size=q)]
    noise = rng.standard_normal(base.shape, dtype=np.float32) * np.float32(0.5 / np.sqrt(items.shape[1]))
    return search_index.normalize_rows(base + noise)


def peak_rss_gb() -> float:
    """The process's peak resident memory so far, in GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def timed(fn, min_seconds: float = 1.0):
    """``(result, seconds per call)``, repeating ``fn`` until ``min_seconds`` have passed."""
    calls, start = 0, time.perf_counter()
    while True:
        result = fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return result, elapsed / calls


def bench_size(n: int, args, nprobes: list[int]) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    raw = make_items(n, args, rng)
    queries = make_queries(raw, args.queries, rng)
    print(f"[{n} x {args.dim}] synthetic data in {time.perf_counter() - start:.1f} s", flush=True)
    rows = []

    start = time.perf_counter()
    matrix = search_index.normalize_rows(raw)
    build = time.perf_counter() - start
    del raw
    (_, exact_idx), seconds = timed(lambda: search_index.exact_search(matrix, queries, args.k))
    rows.append({"n": n, "method": "exact", "build_s": build, "index_gb": matrix.nbytes / 1e9,
                 "peak_rss_gb": peak_rss_gb(), "queries_per_s": args.queries / seconds, "recall": 1.0})
    print(f"[{n}] exact: {rows[-1]['queries_per_s']:.0f} queries/s", flush=True)

    start = time.perf_counter()
    ivf = search_index.build_faiss(matrix, seed=args.seed)
    build = time.perf_counter() - start
    index_gb = (ivf.ntotal * (args.dim * 4 + 8) + ivf.nlist * args.dim * 4) / 1e9
    print(f"[{n}] faiss IVF{ivf.nlist},Flat built in {build:.1f} s", flush=True)
    for nprobe in nprobes:
        (_, idx), seconds = timed(lambda nprobe=nprobe: search_index.faiss_search(ivf, queries, args.k, nprobe))
        rows.append({"n": n, "method": f"faiss IVF{ivf.nlist},Flat nprobe {min(nprobe, ivf.nlist)}", "build_s": build,
                     "index_gb": index_gb, "peak_rss_gb": peak_rss_gb(), "queries_per_s": args.queries / seconds,
                     "recall": search_index.recall_at_k(idx, exact_idx)})
        print(f"[{n}] {rows[-1]['method']}: {rows[-1]['queries_per_s']:.0f} queries/s, "
              f"recall@{args.k} {rows[-1]['recall']:.3f}", flush=True)
    return rows


def table(rows: list[dict], k: int) -> str:
    lines = [f"| items | method | build (s) | index (GB) | peak RSS (GB) | queries/s | recall@{k} |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['method']} | {r['build_s']:.1f} | {r['index_gb']:.3f} | "
                     f"{r['peak_rss_gb']:.1f} | {r['queries_per_s']:,.0f} | {r['recall']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = get_parser().parse_args(argv)
    if args.quick:
        args.sizes, args.dim, args.latent, args.clusters = "5000", 128, 16, 100
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    nprobes = [int(s) for s in args.nprobe.split(",") if s.strip()]
    search_index.import_faiss()
    import torch

    print(f"{torch.get_num_threads()} torch threads; {args.queries} queries, top {args.k}", flush=True)
    rows = []
    for n in sizes:
        rows += bench_size(n, args, nprobes)
    print(table(rows, args.k))
    if args.json:
        atomic_write_json(args.json, rows, indent=1)
    return rows


if __name__ == "__main__":
    main()

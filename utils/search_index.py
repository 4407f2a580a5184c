"""A run's search index: which checkpoint and embedding files it holds, the index itself, exact and faiss search.

The index is test.py's embedding files (``foodSpace_vectors_*_<ckpt>_<partition>_<lang>.npz``) of
some partitions (``available``: every one of test, val, train that exists, in that order),
L2-normalised and concatenated into ``RUN/search_index_<ckpt>_<parts>_<lang>.npz`` (written
atomically, rebuilt when an embedding file changes). The exact search is one float32 matrix
product, batched over queries and chunks of the index; the approximate one is a faiss inverted-file
index (``IndexIVFFlat``, inner product, ``nlist`` about the square root of the index size) saved
beside it, with its recall@k against the exact search measured when it is built. faiss is
optional (``pip install faiss-cpu``).

Only numpy, torch and the run folder's names: no model and no LMDB. :mod:`pipeline.search` puts a
run's model in front of it (search.py, GAN_test.py ``--recipe``); ``bench/search.py`` times it.
"""

from __future__ import annotations

import glob
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.embeddings import load_embeddings
from utils.errors import InputError, RunFolderError
from utils.io import atomic_write
from utils.runs import (
    MODELS_DIR,
    best_glob,
    checkpoint_path,
    checkpoint_vectors,
    checkpoint_vectors_command,
    ckpt_name,
    is_image_encoder_file,
    search_index_name,
)

PARTITIONS = ("test", "val", "train")  # the order of --index_parts available
TARGETS = ("images", "recipes")  # what a query searches: recipes search images, photos search recipes
QUERY_BATCH = 512  # queries per matrix product of the exact search
CHUNK = 1 << 16  # index rows per matrix product of the exact search
RECALL_QUERIES = 256  # sample queries for the faiss recall printed at build time
TRAIN_PER_LIST = 64  # faiss k-means training points per inverted list


class SearchError(InputError):
    """A run, index or flag a search cannot use; the message names the file and the fix."""


# --------------------------------------------------------------------------- run folder


def search_checkpoint(run_dir: Path, checkpoint: str | None, lang: str) -> Path:
    """The checkpoint whose embeddings are searched (and which embeds the queries).

    ``checkpoint`` (``--checkpoint``: a path, or a name in ``RUN/models/``), else the newest
    BEST_REC checkpoint of the run that test.py has written embeddings for in ``lang``.

    Raises:
        SearchError, RunFolderError: no such checkpoint, or none that test.py has embedded.
    """
    if not run_dir.is_dir():
        raise RunFolderError(f"--run {run_dir}: no such folder (give a train.py run folder)")
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            path = checkpoint_path(run_dir, ckpt_name(checkpoint))
        if not path.is_file():
            raise SearchError(f"--checkpoint {checkpoint}: no such file, nor {path}")
        if is_image_encoder_file(path):
            raise SearchError(f"--checkpoint {path}: an exported image encoder, not a training checkpoint")
        return path
    models = run_dir / MODELS_DIR
    found = sorted(Path(p) for p in glob.glob(glob.escape(str(models)) + "/" + best_glob("REC")))
    if not found:
        raise RunFolderError(f"{models}: no model_BEST_REC_*.pth.tar checkpoint (train.py writes it); "
                             f"give --checkpoint")
    embedded = [p for p in found if checkpoint_vectors(run_dir, ckpt_name(p), lang)]
    if not embedded:
        raise RunFolderError(f"{run_dir}: no embedding file foodSpace_vectors_*_{ckpt_name(found[-1])}_*_{lang}.npz; "
                             f"make them with: {checkpoint_vectors_command(found[-1], PARTITIONS, lang)}")
    return embedded[-1]


def parse_parts(value: str) -> list[str] | None:
    """``--index_parts``: a comma-separated subset of test, val, train; None for ``available``."""
    if value.strip().lower() == "available":
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTITIONS]
    if bad or not parts:
        raise SearchError(f"--index_parts {value!r}: give 'available' or partitions among {', '.join(PARTITIONS)}")
    return list(dict.fromkeys(parts))


def index_files(run_dir: Path, ckpt_path: Path, lang: str, parts: list[str] | None) -> dict[str, Path]:
    """The embedding file of each partition of the index (``parts`` None: the available ones).

    Raises:
        RunFolderError: a partition asked for (or every one, for ``available``) has no file.
    """
    name = ckpt_name(ckpt_path)
    wanted = parts or PARTITIONS
    files = checkpoint_vectors(run_dir, name, lang, wanted)
    missing = [p for p in wanted if p not in files] if parts else ([] if files else [PARTITIONS[0]])
    if missing:
        raise RunFolderError(f"{run_dir}: no embedding file foodSpace_vectors_*_{name}_{missing[0]}_{lang}.npz; "
                             f"make it with: {checkpoint_vectors_command(ckpt_path, parts or PARTITIONS, lang)}")
    return files


# --------------------------------------------------------------------------- the index


def normalize_rows(x) -> np.ndarray:
    """float32, C-contiguous, every row of unit L2 norm (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def sources_signature(files: dict[str, Path]) -> str:
    """What an index was built from: each embedding file's partition, name, size and mtime (JSON)."""
    return json.dumps([[part, path.name, path.stat().st_size, path.stat().st_mtime_ns]
                       for part, path in files.items()])


@dataclass
class SearchIndex:
    """test.py's embeddings of some partitions, concatenated and L2-normalised."""

    img: np.ndarray  # (N, D) float32, first image of each recipe
    rec: np.ndarray  # (N, D) float32
    ids: np.ndarray  # (N,) recipe ids
    partitions: np.ndarray  # (N,) partition of each row
    sources: str  # sources_signature of the embedding files
    path: Path | None = None

    def matrix(self, target: str) -> np.ndarray:
        """The rows a query searches: ``images`` (for recipe queries) or ``recipes`` (for photos)."""
        return self.img if target == "images" else self.rec

    def __len__(self) -> int:
        return len(self.ids)


def build_index(files: dict[str, Path]) -> SearchIndex:
    """Read and concatenate the embedding files (in ``files`` order), normalising every row."""
    img, rec, ids, parts = [], [], [], []
    for part, path in files.items():
        try:
            emb = load_embeddings(path)
        except (FileNotFoundError, ValueError, OSError) as err:
            raise SearchError(f"{path}: not a readable embedding file of test.py ({err})") from None
        img.append(normalize_rows(emb["img_embeds"]))
        rec.append(normalize_rows(emb["rec_embeds"]))
        ids.append(emb["rec_ids"].astype(str))
        parts.append(np.full(len(emb["rec_ids"]), part))
    dims = {m.shape[1] for m in img + rec}
    if len(dims) > 1:
        raise SearchError(f"embedding files of different sizes {sorted(dims)}: {', '.join(map(str, files.values()))}")
    return SearchIndex(np.concatenate(img), np.concatenate(rec), np.concatenate(ids), np.concatenate(parts),
                       sources_signature(files))


def save_index(index: SearchIndex, path: Path) -> None:
    """Write the index atomically (an ``.npz`` readable with ``allow_pickle=False``)."""
    with atomic_write(path, "wb") as handle:
        np.savez(handle, img_embeds=index.img, rec_embeds=index.rec, rec_ids=index.ids,
                 partitions=index.partitions, sources=np.asarray(index.sources))
    index.path = path


def read_index(path: Path) -> SearchIndex:
    """Read a file written by :func:`save_index`."""
    with np.load(path, allow_pickle=False) as data:
        return SearchIndex(data["img_embeds"], data["rec_embeds"], data["rec_ids"], data["partitions"],
                           str(data["sources"]), path)


def load_index(run_dir: Path, ckpt_path: Path, lang: str, parts: list[str] | None,
               log: Callable[[str], None] = print) -> SearchIndex:
    """The saved index of these embedding files when it is up to date, else a new one (saved)."""
    files = index_files(run_dir, ckpt_path, lang, parts)
    path = search_index_name(run_dir, ckpt_name(ckpt_path), list(files), lang)
    signature = sources_signature(files)
    if path.is_file():
        try:
            index = read_index(path)
            if index.sources == signature:
                log(f"index: {path.name} ({len(index)} recipes: {', '.join(files)})")
                return index
            log(f"index: {path.name} is out of date (its embedding files changed): rebuilding")
        except (OSError, ValueError, KeyError) as err:
            log(f"index: {path.name} unreadable ({err}): rebuilding")
    start = time.perf_counter()
    index = build_index(files)
    save_index(index, path)
    log(f"index: built {path.name} from test.py's embeddings of {', '.join(files)} ({len(index)} recipes, "
        f"{time.perf_counter() - start:.1f} s)")
    return index


# --------------------------------------------------------------------------- exact search


def exact_search(matrix: np.ndarray, queries, k: int, *, query_batch: int = QUERY_BATCH,
                 chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``matrix`` (L2-normalised, float32) by cosine with each query.

    One float32 matrix product per batch of queries and chunk of the index, keeping a running
    top-k, so no (Q, N) matrix is held. Equal scores are ordered by increasing row.

    Returns:
        ``(scores, indices)``: (Q, k) float32 (decreasing) and (Q, k) int64; k is clipped to N.
    """
    index = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))  # (N, D), no copy
    q_all = torch.from_numpy(normalize_rows(queries))  # (Q, D)
    n, k = index.shape[0], min(int(k), index.shape[0])
    scores = np.empty((q_all.shape[0], k), dtype=np.float32)
    indices = np.empty((q_all.shape[0], k), dtype=np.int64)
    with torch.no_grad():
        for s in range(0, q_all.shape[0], query_batch):
            q = q_all[s:s + query_batch]  # (b, D)
            best_s = best_i = None
            for t in range(0, n, chunk):
                sims = q @ index[t:t + chunk].T  # (b, c)
                vals, idx = sims.topk(min(k, sims.shape[1]), dim=1)
                idx += t
                if best_s is not None:
                    vals, idx = torch.cat([best_s, vals], 1), torch.cat([best_i, idx], 1)
                    vals, pos = vals.topk(k, dim=1)
                    idx = idx.gather(1, pos)
                best_s, best_i = vals, idx
            vals, idx = best_s.numpy(), best_i.numpy()
            order = np.lexsort((idx, -vals), axis=1)  # equal scores by increasing row
            scores[s:s + q.shape[0]] = np.take_along_axis(vals, order, 1)
            indices[s:s + q.shape[0]] = np.take_along_axis(idx, order, 1)
    return scores, indices


# --------------------------------------------------------------------------- faiss


def import_faiss():
    """The faiss module, or a :class:`SearchError` saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise SearchError("--faiss needs the faiss library: pip install faiss-cpu") from None
    return faiss


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` items: about sqrt(n), at most n / 39 (faiss wants 39 training points per list)."""
    return max(1, min(int(round(math.sqrt(n))), n // 39))


def build_faiss(matrix: np.ndarray, nlist: int | None = None, seed: int = 0):
    """A faiss ``IndexIVFFlat`` (inner product) over the rows of ``matrix`` (L2-normalised float32).

    k-means is trained on at most ``TRAIN_PER_LIST * nlist`` rows drawn with ``seed``.
    """
    faiss = import_faiss()
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, dim = matrix.shape
    nlist = nlist or default_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # a small index: no warning for few points per list
    rng = np.random.default_rng(seed)
    take = min(n, TRAIN_PER_LIST * nlist)
    sample = matrix if take == n else matrix[np.sort(rng.choice(n, take, replace=False))]
    index.train(sample)
    index.add(matrix)
    return index  # faiss's wrapper keeps the quantizer alive with the index


def faiss_search(index, queries, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of a :func:`build_faiss` index for each query: ``(scores, indices)`` as :func:`exact_search`."""
    index.nprobe = max(1, min(int(nprobe), index.nlist))
    k = min(int(k), index.ntotal)
    scores, indices = index.search(normalize_rows(queries), k)
    return scores.astype(np.float32), indices.astype(np.int64)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    if exact.size == 0:
        return 1.0
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(sum(hits) / exact.size)


def sample_recall(matrix: np.ndarray, queries: np.ndarray, index, k: int, nprobe: int, seed: int = 0) -> tuple[float, int]:
    """faiss recall@k against :func:`exact_search` on at most ``RECALL_QUERIES`` rows of ``queries``."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(queries), min(RECALL_QUERIES, len(queries)), replace=False))
    _, exact = exact_search(matrix, queries[pick], k)
    _, approx = faiss_search(index, queries[pick], k, nprobe)
    return recall_at_k(approx, exact), len(pick)


def load_faiss(index: SearchIndex, run_dir: Path, ckpt: str, lang: str, target: str, k: int, nprobe: int,
               log: Callable[[str], None] = print):
    """The saved faiss index of ``target`` when it was built from this index, else a new one (saved).

    When built, its recall@k against the exact search is printed, measured with the index's own
    embeddings of the other modality as queries (a sample).
    """
    faiss = import_faiss()
    parts = list(dict.fromkeys(index.partitions.tolist()))
    path = search_index_name(run_dir, ckpt, parts, lang, target=target)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["sources"]) == index.sources:
                    ivf = faiss.deserialize_index(data["index"])
                    log(f"faiss: {path.name} (IVF{ivf.nlist},Flat; recall@{int(data['recall_k'])} "
                        f"{float(data['recall']):.3f} vs exact with nprobe {int(data['recall_nprobe'])} when built)")
                    return ivf
            log(f"faiss: {path.name} is out of date: rebuilding")
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            log(f"faiss: {path.name} unreadable ({err}): rebuilding")
    matrix = index.matrix(target)
    start = time.perf_counter()
    ivf = build_faiss(matrix)
    seconds = time.perf_counter() - start
    other = index.rec if target == "images" else index.img
    recall, n_queries = sample_recall(matrix, other, ivf, k, nprobe)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, index=faiss.serialize_index(ivf), sources=np.asarray(index.sources), recall=recall,
                 recall_k=k, recall_nprobe=min(nprobe, ivf.nlist))
    log(f"faiss: built {path.name}: IVF{ivf.nlist},Flat over {len(matrix)} {target} in {seconds:.1f} s; "
        f"recall@{k} {recall:.3f} vs exact search on {n_queries} sample queries (nprobe {min(nprobe, ivf.nlist)})")
    return ivf

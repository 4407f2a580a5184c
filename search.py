"""Search a trained run's FoodSpace with your own photos or recipes.

    python search.py --run runs/<run> --image photo.jpg [photo2.jpg ...] --k 5
    python search.py --run runs/<run> --recipe recipe.json --figure out.png
    python search.py --run runs/<run> --text "Tomato soup" --ingredients "4 tomatoes; 1 onion" \\
        --instructions "Chop the onion.;Simmer 20 minutes." --json

A photo gives the top-k recipes of the index (id, score, title, first ingredients); a recipe gives
the top-k images (recipe id, image id, score, path). The score is the cosine of the two
L2-normalised FoodSpace embeddings.

The model is a checkpoint of the run, rebuilt from the architecture stored in it (no
architecture flags): by default the newest ``models/model_BEST_REC_*.pth.tar`` that test.py has
written embeddings for in ``--language``; ``--checkpoint`` picks another. Queries go through the
preprocessing of training and test (:mod:`data.query`): the run's tokenizer (from its
``data_path``), create_lmdb.py's text rules, [CLS]/[SEP], truncation to the LMDB's ``max_len``,
the run's ``textinputs``; photos with their EXIF orientation and the evaluation transform at the
run's ``image_size``.

The index is test.py's embedding files (``foodSpace_vectors_*_<ckpt>_<partition>_<lang>.npz``)
of ``--index_parts`` (default ``available``: every one of test, val, train that exists, in that
order), L2-normalised and concatenated into ``RUN/search_index_<ckpt>_<parts>_<lang>.npz``
(written atomically, rebuilt when an embedding file changes). The search is exact by default:
one float32 matrix product, batched over queries and chunks of the index. ``--faiss`` uses an
approximate inverted-file index (faiss ``IndexIVFFlat``, inner product, ``nlist`` about the square
root of the index size, ``--nprobe`` lists searched), saved beside it as
``...<lang>.faiss-<images|recipes>.npz``; its recall@k against the exact search, on a sample of the
index's own embeddings of the other modality, is printed when it is built. faiss is optional:
``pip install faiss-cpu``.

Recipe JSON: one recipe in layer1 format, ``{"title": ..., "ingredients": [{"text": ...}],
"instructions": [{"text": ...}], "id": optional}``, or a list of them. ``--ingredients`` and
``--instructions`` take lines separated by newlines or ``;``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.langs import parse_language
from data.lmdb_format import PART_INGR, PART_TITLE, RecordError, RecordReader, lmdb_dir, part_text
from data.query import (
    QueryRecipe,
    RecipeTokenizer,
    load_query_image,
    load_query_photo,
    read_recipe_json,
    recipe_from_text,
)
from data.recipe1m import image_path
from utils import lineage
from utils.cli import IMAGE_BACKEND_HELP, IMAGE_BACKENDS, HelpFormatter, resolve_device, run_main
from utils.embeddings import embeddings_lineage, load_embeddings
from utils.errors import InputError, RunFolderError
from utils.io import atomic_write
from utils.runs import (
    MODELS_DIR,
    best_glob,
    checkpoint_path,
    checkpoint_vectors,
    ckpt_name,
    is_image_encoder_file,
    search_index_name,
    shown,
)

PARTITIONS = ("test", "val", "train")  # the order of --index_parts available
TARGETS = ("images", "recipes")  # what a query searches: recipes search images, photos search recipes
QUERY_BATCH = 512  # queries per matrix product of the exact search
CHUNK = 1 << 16  # index rows per matrix product of the exact search
RECALL_QUERIES = 256  # sample queries for the faiss recall printed at build time
TRAIN_PER_LIST = 64  # faiss k-means training points per inverted list


class SearchError(InputError):
    """A run, index or flag search.py cannot use; the message names the file and the fix."""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="train.py run folder (test.py has written its embeddings)")
    query = p.add_argument_group("query (exactly one of --image, --recipe, --text)")
    query.add_argument("--image", nargs="+", default=None, metavar="PHOTO", help="photos: find their recipes")
    query.add_argument("--recipe", default=None, metavar="JSON",
                       help="a recipe in layer1 format (or a list of them): find its images")
    query.add_argument("--text", default=None, metavar="TITLE", help="a recipe's title: find its images")
    query.add_argument("--ingredients", default="", help="with --text: ingredient lines, separated by newlines or ';'")
    query.add_argument("--instructions", default="", help="with --text: instruction lines, separated by newlines or ';'")
    p.add_argument("--k", type=int, default=5, help="results per query")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint of the run (path or name in RUN/models/; None: the newest BEST_REC one "
                        "with test.py's embeddings)")
    p.add_argument("--index_parts", default="available",
                   help="partitions in the index, e.g. test or test,val,train; 'available': every one of test, "
                        "val, train with an embedding file")
    p.add_argument("--language", default="en", help="language of the recipe embeddings and texts (code or number)")
    p.add_argument("--faiss", action="store_true", help="approximate search with faiss (pip install faiss-cpu)")
    p.add_argument("--nprobe", type=int, default=32, help="with --faiss: inverted lists searched per query")
    p.add_argument("--json", action="store_true", help="print the results as JSON (messages go to stderr)")
    p.add_argument("--figure", default=None, metavar="PNG", help="draw each query beside its top-k into this PNG")
    p.add_argument("--data_path", default=None, help="folder written by create_lmdb.py (None: the run's)")
    p.add_argument("--img_path", default=None, help="root of the images (None: the run's)")
    p.add_argument("--batch_size", type=int, default=32, help="queries embedded at once")
    p.add_argument("--image_backend", choices=IMAGE_BACKENDS, default="fast", help=IMAGE_BACKEND_HELP)
    p.add_argument("--no_cuda", "--no-cuda", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--device", default=None, help="CUDA device index or 'cpu'")
    return p


# --------------------------------------------------------------------------- run folder


def resolve_checkpoint(run_dir: Path, checkpoint: str | None, lang: str) -> Path:
    """``--checkpoint`` (a path, or a name in ``RUN/models/``), else the newest BEST_REC checkpoint with embeddings.

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
                             f"make them with: {vectors_command(found[-1], PARTITIONS, lang)}")
    return embedded[-1]


def vectors_command(ckpt_path: Path, parts: Sequence[str], lang: str) -> str:
    """The test.py command that writes the embedding files of ``ckpt_path``."""
    return f"python test.py --model_init_path {ckpt_path} --partitions {','.join(parts)} --language {lang}"


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
                             f"make it with: {vectors_command(ckpt_path, parts or PARTITIONS, lang)}")
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


# --------------------------------------------------------------------------- the run's model


def check_lineage(ckpt: dict, ckpt_path: Path, files: dict[str, Path], data_path: Path, lang: str) -> str:
    """Refuse an LMDB or embedding files that do not belong to the checkpoint; returns its fingerprint.

    Raises:
        utils.lineage.LineageError: ``data_path``'s token ids mean something else than in training,
            or an embedding file was made by another checkpoint (one line naming both files).
    """
    from data.dataset import read_manifest

    lineage.check_lmdb(ckpt_path, lineage.lmdb_of(ckpt.get(lineage.KEY)), data_path, read_manifest(data_path),
                       arch=ckpt["arch"])
    fingerprint = lineage.checkpoint_fingerprint(ckpt)
    for path in files.values():
        made_by = (embeddings_lineage(path) or {}).get("checkpoint")
        lineage.require_same("checkpoint", (path, made_by), (ckpt_path, fingerprint),
                             f"make the embeddings again with: {vectors_command(ckpt_path, list(files), lang)}")
    return fingerprint


class RunSearch:
    """A run's model, query preprocessing, index and recipe descriptions (what search.py and GAN_test.py share).

    Args:
        run_dir: the train.py run folder.
        checkpoint: ``--checkpoint`` (None: :func:`resolve_checkpoint`'s default).
        lang: the language of the index and of the texts shown.
        parts: the index's partitions (None: the available ones).
        data_path, img_path: override the run's.
        device: where the model runs.
        log: where messages go.
        check: called with the checkpoint's path and fingerprint (utils/lineage.py) before the index
            is read or written (GAN_test.py: is it the one G was trained with?).
    """

    def __init__(self, run_dir, *, checkpoint: str | None = None, lang: str = "en", parts: list[str] | None = None,
                 data_path=None, img_path=None, device="cpu", log: Callable[[str], None] = print,
                 check: Callable[[Path, str], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.lang = parse_language(lang)
        self.log = log
        self.ckpt_path = resolve_checkpoint(self.run_dir, checkpoint, self.lang)
        self.ckpt_name = ckpt_name(self.ckpt_path)
        files = index_files(self.run_dir, self.ckpt_path, self.lang, parts)
        from models.foodspace import load_foodspace  # torchvision and transformers: after the input checks

        self.device = torch.device(device)
        self.model, ckpt = load_foodspace(self.ckpt_path, self.device)
        opts = ckpt.get("opts", {})
        self.data_path = Path(data_path or opts.get("data_path") or "data/loader_data")
        self.img_path = Path(img_path or opts.get("img_path") or "data/Recipe1M/images")
        self.image_size = int(opts.get("image_size", 224))
        self.channels_last = bool(opts.get("channels_last"))
        self.recipes = RecipeTokenizer(self.data_path, opts.get("textinputs", "title,ingr,inst"))
        self.fingerprint = check_lineage(ckpt, self.ckpt_path, files, self.data_path, self.lang)
        if check is not None:
            check(self.ckpt_path, self.fingerprint)
        self.index = load_index(self.run_dir, self.ckpt_path, self.lang, parts, log)
        if self.index.img.shape[1] != self.model.cfg.emb_dim:
            raise SearchError(f"{self.index.path}: embeddings of size {self.index.img.shape[1]}, but "
                              f"{self.ckpt_path.name} makes {self.model.cfg.emb_dim}")
        self._readers: dict[str, RecordReader] = {}
        log(f"model: {shown(self.ckpt_path)} ({self.model.cfg.image_backbone}, {self.model.cfg.emb_dim}-d) | "
            f"data {shown(self.data_path)} | device {self.device}")

    @torch.no_grad()
    def embed_images(self, paths: Sequence, batch_size: int = 32, backend: str = "fast") -> np.ndarray:
        """Photos (files, or images decoded by ``load_query_photo``) -> (Q, D) float32 embeddings, as test.py's
        (``backend``: --image_backend)."""
        out = []
        for s in range(0, len(paths), batch_size):
            images = torch.stack([load_query_image(p, self.image_size, backend) for p in paths[s:s + batch_size]])
            images = images.to(self.device)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            out.append(self.model.embed_images(images).float().cpu())  # (b, D)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def embed_recipes(self, recipes: Sequence[QueryRecipe], batch_size: int = 32) -> np.ndarray:
        """Recipes -> (Q, D) float32 embeddings, each recipe as test.py's (same token row)."""
        out = []
        for s in range(0, len(recipes), batch_size):
            tokens = self.recipes.tokens(recipes[s:s + batch_size]).to(self.device)  # (b, T)
            out.append(self.model.embed_recipes(tokens).float().cpu())  # (b, D)
        return torch.cat(out).numpy()

    def search(self, queries: np.ndarray, target: str, k: int, *, use_faiss: bool = False,
               nprobe: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows of the index's ``target`` matrix for each query: ``(scores, indices)``."""
        matrix = self.index.matrix(target)
        if not use_faiss:
            return exact_search(matrix, queries, k)
        ivf = load_faiss(self.index, self.run_dir, self.ckpt_name, self.lang, target, k, nprobe, self.log)
        return faiss_search(ivf, queries, k, nprobe)

    def describe(self, row: int, n_ingredients: int = 5) -> dict:
        """Row ``row`` of the index: recipe id, partition, title, first ingredients, first image id and path."""
        rid, partition = str(self.index.ids[row]), str(self.index.partitions[row])
        out = {"recipe_id": rid, "partition": partition, "title": "", "ingredients": [], "image_id": None,
               "path": None}
        reader = self._readers.setdefault(partition, RecordReader(lmdb_dir(self.data_path, partition)))
        try:
            record = reader.get(rid)
        except (RecordError, FileNotFoundError) as err:
            raise SearchError(f"{lmdb_dir(self.data_path, partition)}: record {rid}: {err}") from None
        if record is None:
            return out
        tokenizer = self.recipes.tokenizer
        out["title"] = part_text(record, tokenizer, self.lang, PART_TITLE).rstrip(" .")
        ingredients = [t.strip() for t in re.split(r"\s*\.\s+", part_text(record, tokenizer, self.lang, PART_INGR) + " ")]
        out["ingredients"] = [t for t in ingredients if t][:n_ingredients]
        if record.images:
            out["image_id"] = record.images[0]
            out["path"] = str(image_path(self.img_path, partition, record.images[0]))
        return out


# --------------------------------------------------------------------------- output


def format_results(results: list[dict]) -> str:
    """The results as text, one block per query."""
    lines = []
    for entry in results:
        q = entry["query"]
        if "image" in q:
            lines.append(f"query {q['number']}: photo {shown(q['image'])} -> top {len(entry['results'])} recipes")
            for r in entry["results"]:
                ingr = ", ".join(r["ingredients"])
                lines.append(f"  {r['rank']:>2}  {r['score']:.4f}  {r['recipe_id']}  {r['title']}"
                             + (f"  [{ingr}]" if ingr else ""))
        else:
            lines.append(f"query {q['number']}: recipe {q['recipe_id']} \"{q['title']}\" -> top "
                         f"{len(entry['results'])} images")
            for r in entry["results"]:
                lines.append(f"  {r['rank']:>2}  {r['score']:.4f}  {r['recipe_id']}  {r['image_id']}  {shown(r['path'])}"
                             + (f"  [{r['title']}]" if r["title"] else ""))
    return "\n".join(lines)


def draw_figure(results: list[dict], path: str | Path, photos: Sequence | None = None) -> Path:
    """Each query beside its top-k (utils/vis.py's tiles): photo -> recipe texts with their photos, recipe -> photos.

    ``photos``: the query photos already decoded (in query order), drawn instead of reading their files again.
    """
    from PIL import ImageDraw

    from utils.vis import TILE, image_tile, stack_rows, text_block, tile_row

    def scored(tile, score: float):
        draw = ImageDraw.Draw(tile)
        draw.rectangle([0, TILE - 16, 58, TILE - 1], fill=(0, 0, 0))
        draw.text((4, TILE - 14), f"{score:.3f}", fill=(255, 255, 255))
        return tile

    rows = []
    for entry in results:
        q = entry["query"]
        if "image" in q:
            cells = [image_tile(photos[q["number"] - 1] if photos else q["image"])]
            for r in entry["results"]:
                cells += [text_block(f"{r['rank']}. {r['title']}", ", ".join(r["ingredients"]), False),
                          scored(image_tile(r["path"]), r["score"])]
        else:
            cells = [text_block(q["title"], ", ".join(q["ingredients"][:6]), False)]
            cells += [scored(image_tile(r["path"]), r["score"]) for r in entry["results"]]
        rows.append(tile_row(cells))
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        stack_rows(rows).save(handle, format="PNG")
    return path


# --------------------------------------------------------------------------- main


def read_queries(args) -> tuple[str, list]:
    """``("images", paths)`` or ``("recipes", [QueryRecipe])`` from the query flags."""
    given = [flag for flag, value in (("--image", args.image), ("--recipe", args.recipe), ("--text", args.text))
             if value is not None]
    if len(given) != 1:
        raise SearchError("give exactly one of --image, --recipe and --text" + (f" (got {', '.join(given)})"
                                                                              if given else ""))
    if args.image is not None:  # decoded once, here: a bad photo fails before the model loads
        return "recipes", [load_query_photo(path) for path in args.image]
    if args.recipe is not None:
        return "images", read_recipe_json(args.recipe, args.language)
    return "images", [recipe_from_text(args.text, args.ingredients, args.instructions)]


def main(argv=None) -> dict:
    """Search; returns ``{"run", "checkpoint", "index", "method", "results": [...]}`` (what ``--json`` prints)."""
    try:
        out = run_main(lambda: _main(argv))
        sys.stdout.flush()  # a reader that has gone (`search.py ... | head`) shows here, not at exit
        return out
    except BrokenPipeError:
        # No traceback: stdout goes to devnull so that the interpreter's last flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def _main(argv) -> dict:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.k < 1:
        raise SearchError(f"--k {args.k}: give at least 1")
    if args.batch_size < 1:
        raise SearchError(f"--batch_size {args.batch_size}: give at least 1")
    try:
        lang = parse_language(args.language)
    except ValueError as err:
        raise SearchError(f"--language: {err}") from None
    parts = parse_parts(args.index_parts)
    target, queries = read_queries(args)  # photos: decoded images; their paths are args.image
    if args.faiss:
        import_faiss()
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    searcher = RunSearch(args.run, checkpoint=args.checkpoint, lang=lang, parts=parts, data_path=args.data_path,
                         img_path=args.img_path, device=resolve_device(args.no_cuda, args.device), log=log)
    if target == "recipes":
        embs = searcher.embed_images(queries, args.batch_size, args.image_backend)
    else:
        embs = searcher.embed_recipes(queries, args.batch_size)
    scores, indices = searcher.search(embs, target, args.k, use_faiss=args.faiss, nprobe=args.nprobe)
    results = []
    for q, query in enumerate(queries):
        if target == "recipes":
            head = {"number": q + 1, "image": str(args.image[q])}
        else:
            head = {"number": q + 1, "recipe_id": query.id, "title": query.title, "ingredients": query.ingredients}
        hits = []
        for rank, (score, row) in enumerate(zip(scores[q].tolist(), indices[q].tolist()), 1):
            if row < 0:  # faiss found fewer than k
                continue
            hits.append({"rank": rank, "score": round(float(score), 6), **searcher.describe(row)})
        results.append({"query": head, "results": hits})
    out = {"run": str(searcher.run_dir), "checkpoint": str(searcher.ckpt_path), "index": str(searcher.index.path),
           "language": lang, "method": f"faiss IVF, nprobe {args.nprobe}" if args.faiss else "exact",
           "target": target, "results": results}
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(format_results(results))
    if args.figure:
        log(f"figure -> {shown(draw_figure(results, args.figure, queries if target == 'recipes' else None))}")
    return out


if __name__ == "__main__":
    main()

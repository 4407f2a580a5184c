"""A run's model, its query preprocessing and its search index together: what search.py and GAN_test.py share.

:class:`RunSearch` loads a train.py run's checkpoint, refuses an LMDB or embedding files that do
not belong to it (:mod:`utils.lineage`), reads or builds the run's index
(:mod:`utils.search_index`), embeds photos and recipes exactly as test.py does (:mod:`data.query`)
and describes each hit from the LMDB. :func:`format_hits` and :func:`draw_figure` show the results
(docs/search.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from data.langs import parse_language
from data.lmdb_format import PART_INGR, PART_TITLE, RecordError, RecordReader, lmdb_dir, part_text
from data.query import QueryRecipe, RecipeTokenizer, load_query_image
from data.recipe1m import image_path
from utils import lineage
from utils.embeddings import embeddings_lineage
from utils.io import atomic_write
from utils.runs import DEFAULT_DATA_PATH, DEFAULT_IMG_PATH, checkpoint_vectors_command, ckpt_name, shown
from utils.search_index import (
    SearchError,
    exact_search,
    faiss_search,
    index_files,
    load_faiss,
    load_index,
    search_checkpoint,
)


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
                             f"make the embeddings again with: {checkpoint_vectors_command(ckpt_path, list(files), lang)}")
    return fingerprint


class RunSearch:
    """A run's model, query preprocessing, index and recipe descriptions (what search.py and GAN_test.py share).

    Args:
        run_dir: the train.py run folder.
        checkpoint: ``--checkpoint`` (None: :func:`search_checkpoint`'s default).
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
        self.ckpt_path = search_checkpoint(self.run_dir, checkpoint, self.lang)
        self.ckpt_name = ckpt_name(self.ckpt_path)
        files = index_files(self.run_dir, self.ckpt_path, self.lang, parts)
        from models.foodspace import load_foodspace  # torchvision and transformers: after the input checks

        self.device = torch.device(device)
        self.model, ckpt = load_foodspace(self.ckpt_path, self.device)
        opts = ckpt.get("opts", {})
        self.data_path = Path(data_path or opts.get("data_path") or DEFAULT_DATA_PATH)
        self.img_path = Path(img_path or opts.get("img_path") or DEFAULT_IMG_PATH)
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

    def hits(self, scores: np.ndarray, indices: np.ndarray) -> list[list[dict]]:
        """Each query's hits from :meth:`search`'s ``(scores, indices)``: rank, score (6 decimals) and
        :meth:`describe` of the row; a row faiss did not fill (-1, fewer than k found) is left out."""
        return [[{"rank": rank, "score": round(float(score), 6), **self.describe(row)}
                 for rank, (score, row) in enumerate(zip(q_scores, q_rows), 1) if row >= 0]
                for q_scores, q_rows in zip(scores.tolist(), indices.tolist())]


# --------------------------------------------------------------------------- output


def format_hits(results: list[dict]) -> str:
    """search.py's hits as text, one block per query (the retrieval metrics' table is
    :func:`utils.metrics.format_results`)."""
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

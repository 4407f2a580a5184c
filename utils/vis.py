"""Retrieval figures like the paper's: queries followed by their top-3 matches (PNG, drawn with PIL).

Recipe texts are decoded from the LMDB's token rows with the saved tokenizer, so no Recipe1M JSON
is needed; nearest neighbours come from chunked products, never an N x N matrix.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from data.lmdb_format import PART_INGR, PART_TITLE, TOKENIZER_DIR, decode_record, lmdb_dir, shared_env
from data.recipe1m import image_path
from utils.metrics import topk_chunked

TILE = 160  # image side in the figure
TEXT_W = 220  # width of a recipe's text block


class _Recipes:
    """Title, first ingredients and first image of recipes, read lazily from one LMDB partition."""

    def __init__(self, data_path: Path, img_path: Path, partition: str, lang: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(Path(data_path) / TOKENIZER_DIR))
        self.env = shared_env(lmdb_dir(data_path, partition))
        self.img_path, self.partition, self.lang = Path(img_path), partition, lang

    def text(self, recipe_id: str) -> tuple[str, str]:
        record = self._record(recipe_id)
        row = record.langs.index(self.lang) if self.lang in record.langs else 0
        ids, parts = record.ids[row], record.parts[row]
        title = self.tokenizer.decode(ids[parts == PART_TITLE].tolist()).strip()
        ingredients = self.tokenizer.decode(ids[parts == PART_INGR].tolist()).strip()
        return title, ingredients[:140]

    def image(self, recipe_id: str) -> Image.Image:
        record = self._record(recipe_id)
        try:
            with Image.open(image_path(self.img_path, self.partition, record.images[0])) as img:
                return ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (TILE, TILE))
        except (OSError, IndexError):  # unreadable: draw a labelled grey tile, not a fake photo
            tile = Image.new("RGB", (TILE, TILE), (90, 90, 90))
            ImageDraw.Draw(tile).text((8, TILE // 2), "image unreadable", fill=(255, 255, 255))
            return tile

    def _record(self, recipe_id: str):
        with self.env.begin() as txn:
            return decode_record(txn.get(recipe_id.encode("utf-8")))


def _text_block(title: str, ingredients: str, marked: bool) -> Image.Image:
    block = Image.new("RGB", (TEXT_W, TILE), (255, 255, 255))
    draw = ImageDraw.Draw(block)
    font = ImageFont.load_default()
    y = 4
    for line in textwrap.wrap(title, 30)[:3]:
        draw.text((6, y), line, fill=(0, 0, 0), font=font)
        y += 14
    y += 4
    for line in textwrap.wrap(ingredients, 34)[:6]:
        draw.text((6, y), line, fill=(80, 80, 80), font=font)
        y += 13
    if marked:
        draw.rectangle([0, 0, TEXT_W - 1, TILE - 1], outline=(0, 170, 0), width=4)
    return block


def _row(cells: list[Image.Image]) -> Image.Image:
    width = sum(c.width for c in cells) + 6 * (len(cells) - 1)
    row = Image.new("RGB", (width, TILE), (235, 235, 235))
    x = 0
    for cell in cells:
        row.paste(cell, (x, 0))
        x += cell.width + 6
    return row


def _stack(rows: list[Image.Image]) -> Image.Image:
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + 6 * (len(rows) - 1)), (235, 235, 235))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 6
    return sheet


def retrieval_figures(emb: dict, data_path, img_path, partition: str, lang: str, out_dir, n: int,
                      k: int = 3) -> list[Path]:
    """Write ``im2rec.png`` and ``rec2im.png`` for the first ``n`` queries of ``emb``.

    Each row: the query (image, or recipe text) then its top-``k`` matches (recipe text with that
    recipe's image, or image); the true match has a green frame.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipes = _Recipes(Path(data_path), Path(img_path), partition, lang)
    ids = [str(i) for i in emb["rec_ids"]]
    n = min(n, len(ids))
    img, rec = np.asarray(emb["img_embeds"]), np.asarray(emb["rec_embeds"])
    written = []
    for name, queries, cands in (("im2rec", img[:n], rec), ("rec2im", rec[:n], img)):
        top, _ = topk_chunked(queries, cands, k)
        rows = []
        for q in range(n):
            query = recipes.image(ids[q]) if name == "im2rec" else _text_block(*recipes.text(ids[q]), False)
            cells = [query]
            for j in np.asarray(top[q]).tolist():
                hit = j == q
                if name == "im2rec":
                    cells += [_text_block(*recipes.text(ids[j]), hit), recipes.image(ids[j])]
                else:
                    tile = recipes.image(ids[j])
                    if hit:
                        ImageDraw.Draw(tile).rectangle([0, 0, TILE - 1, TILE - 1], outline=(0, 170, 0), width=5)
                    cells.append(tile)
            rows.append(_row(cells))
        path = out_dir / f"{partition}_{lang}_{name}.png"
        tmp = path.with_suffix(".tmp.png")
        _stack(rows).save(tmp)
        tmp.replace(path)
        written.append(path)
    return written

"""Retrieval figures like the paper's: queries followed by their top-3 matches (PNG, drawn with PIL).

Pure drawing: the caller says what a recipe looks like (:class:`RecipeView`: title, ingredient
line, image path or picture), e.g. decoded from the LMDB by test.py; nearest neighbours come from
chunked products, never an N x N matrix.
"""

from __future__ import annotations

import importlib.util
import textwrap
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from utils.io import atomic_write
from utils.metrics import topk_chunked

TILE = 160  # image side in the figure
TEXT_W = 220  # width of a recipe's text block
FONT_SIZE = 11  # pixels; a line of text_block is 13-14 px high
FONT_PACKAGE, FONT_FILE = "matplotlib", "mpl-data/fonts/ttf/DejaVuSans.ttf"  # Latin, Greek and Cyrillic


def font_path() -> Path | None:
    """DejaVu Sans as the ``matplotlib`` package ships it (found through the package, not imported), or None."""
    spec = importlib.util.find_spec(FONT_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / FONT_FILE
        if path.is_file():
            return path
    return None


@cache
def figure_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The figures' font: DejaVu Sans, so that titles in German, French, Russian (or Greek) are drawn,
    not boxes; Pillow's default font (Latin only), with one warning, when matplotlib is missing."""
    path = font_path()
    if path is None:
        warnings.warn(f"{FONT_PACKAGE} is not installed: figures draw non-Latin titles as boxes "
                      f"(pip install {FONT_PACKAGE})", stacklevel=2)
        return ImageFont.load_default()
    return ImageFont.truetype(str(path), size)


class RecipeView(NamedTuple):
    """What a figure shows of a recipe."""

    title: str
    ingredients: str  # one line, cut by the caller
    image: str | Path | Image.Image | None  # a path, a picture, or None (no image: a labelled grey tile)


def image_tile(image: str | Path | Image.Image | None) -> Image.Image:
    """A ``TILE`` x ``TILE`` tile of ``image``; a grey labelled tile when it is None or unreadable."""
    try:
        if image is None:
            raise OSError("no image")
        if isinstance(image, Image.Image):
            return ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), (TILE, TILE))
        with Image.open(image) as img:
            return ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (TILE, TILE))
    except OSError:  # unreadable: draw a labelled grey tile, not a fake photo
        tile = Image.new("RGB", (TILE, TILE), (90, 90, 90))
        ImageDraw.Draw(tile).text((8, TILE // 2), "image unreadable", fill=(255, 255, 255))
        return tile


def text_block(title: str, ingredients: str, marked: bool) -> Image.Image:
    """A recipe's title and ingredient line in a ``TEXT_W`` x ``TILE`` block; a green frame when ``marked``."""
    block = Image.new("RGB", (TEXT_W, TILE), (255, 255, 255))
    draw = ImageDraw.Draw(block)
    font = figure_font()
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


def tile_row(cells: list[Image.Image], gap: int = 6) -> Image.Image:
    """``cells`` side by side, ``gap`` apart on grey, as high as the highest (``TILE`` for this module's cells)."""
    width = sum(c.width for c in cells) + gap * (len(cells) - 1)
    row = Image.new("RGB", (width, max(c.height for c in cells)), (235, 235, 235))
    x = 0
    for cell in cells:
        row.paste(cell, (x, 0))
        x += cell.width + gap
    return row


def stack_rows(rows: list[Image.Image]) -> Image.Image:
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + 6 * (len(rows) - 1)), (235, 235, 235))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 6
    return sheet


def retrieval_figures(emb: dict, recipe: Callable[[str], RecipeView], out_dir, prefix: str, n: int,
                      k: int = 3) -> list[Path]:
    """Write ``<prefix>_im2rec.png`` and ``<prefix>_rec2im.png`` for the first ``n`` queries of ``emb``.

    Each row: the query (image, or recipe text) then its top-``k`` matches (recipe text with that
    recipe's image, or image); the true match has a green frame.

    Args:
        emb: test.py's arrays (``img_embeds``, ``rec_embeds``, ``rec_ids``).
        recipe: what to show of a recipe id (called only for the queries and their matches).
        out_dir: the folder of the figures (made when missing).
        prefix: the start of the file names, e.g. ``test_en``.
        n, k: queries and matches per query.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [str(i) for i in emb["rec_ids"]]
    n = min(n, len(ids))
    img, rec = np.asarray(emb["img_embeds"]), np.asarray(emb["rec_embeds"])
    written = []
    for name, queries, cands in (("im2rec", img[:n], rec), ("rec2im", rec[:n], img)):
        top, _ = topk_chunked(queries, cands, k)
        rows = []
        for q in range(n):
            query = recipe(ids[q])
            cells = [image_tile(query.image) if name == "im2rec" else text_block(query.title, query.ingredients, False)]
            for j in np.asarray(top[q]).tolist():
                hit, match = j == q, recipe(ids[j])
                if name == "im2rec":
                    cells += [text_block(match.title, match.ingredients, hit), image_tile(match.image)]
                else:
                    tile = image_tile(match.image)
                    if hit:
                        ImageDraw.Draw(tile).rectangle([0, 0, TILE - 1, TILE - 1], outline=(0, 170, 0), width=5)
                    cells.append(tile)
            rows.append(tile_row(cells))
        path = out_dir / f"{prefix}_{name}.png"
        with atomic_write(path, "wb") as handle:
            stack_rows(rows).save(handle, format="PNG")
        written.append(path)
    return written

"""Figures drawn with PIL: retrieval figures like the paper's (queries followed by their top-3
matches) and GAN_test.py's sheets of generated images (``synthesis_figure``, ``recipes_figure``).

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
GAP = 4  # between the cells and rows of GAN_test.py's sheets
HEADER_H = 20  # height of their row of column names
SHEET_TILE = 128  # image side in GAN_test.py's sheets (G's output size)
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


# --------------------------------------------------------------------------- GAN_test.py's sheets


def _label(text: str, width: int, height: int, lines: int = 6) -> Image.Image:
    """``text`` wrapped in a white ``width`` x ``height`` cell, at most ``lines`` lines."""
    cell = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(cell), figure_font()
    for k, line in enumerate(textwrap.wrap(text, max(8, width // 7))[:lines]):
        draw.text((4, 4 + 13 * k), line, fill=(0, 0, 0), font=font)
    return cell


def _sheet(header: list[tuple[str, int]], rows: list[list[Image.Image]], width: int) -> Image.Image:
    """A grey sheet ``width`` wide: a row of column names (``(name, width)``), then the rows of cells.

    A row is a text cell and ``SHEET_TILE`` x ``SHEET_TILE`` images, ``GAP`` apart
    (:func:`tile_row`), so its cells fall under the columns the header names; rows start
    ``HEADER_H`` down, one ``SHEET_TILE + GAP`` apart.
    """
    sheet = Image.new("RGB", (width, HEADER_H + len(rows) * (SHEET_TILE + GAP)), (235, 235, 235))
    sheet.paste(tile_row([_label(name, w, HEADER_H - 2, 1) for name, w in header], gap=GAP), (0, 0))
    for r, cells in enumerate(rows):
        sheet.paste(tile_row(cells, gap=GAP), (0, HEADER_H + r * (SHEET_TILE + GAP)))
    return sheet


def synthesis_figure(rows: list[tuple[str, Image.Image, list[Image.Image], list[Image.Image]]], k: int) -> Image.Image:
    """Header, then per recipe: title, real image, k images from the recipe, k from the image embedding."""
    text_w = 150
    header = [("recipe", text_w), ("real", SHEET_TILE)] + [(f"from recipe {j + 1}", SHEET_TILE) for j in range(k)]
    header += [(f"from image {j + 1}", SHEET_TILE) for j in range(k)]
    cells = [[_label(title, text_w, SHEET_TILE, 9), real, *from_rec, *from_img] for title, real, from_rec, from_img in rows]
    return _sheet(header, cells, text_w + (1 + 2 * k) * (SHEET_TILE + GAP))


def _scored(photo: Image.Image, score: float) -> Image.Image:
    """``photo`` as a ``SHEET_TILE`` tile with its cosine in the lower left corner."""
    tile = photo.resize((SHEET_TILE, SHEET_TILE))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, SHEET_TILE - 15, 50, SHEET_TILE - 1], fill=(0, 0, 0))
    draw.text((3, SHEET_TILE - 13), f"{score:.3f}", fill=(255, 255, 255))
    return tile


def recipes_figure(rows: list[tuple[str, list[Image.Image], list[tuple[Image.Image, float]]]], n: int,
                   k: int) -> Image.Image:
    """Header, then per recipe: its text, ``n`` generated images, ``k`` nearest real photos with their cosine."""
    text_w = 200
    header = [("recipe", text_w)] + [(f"generated {j + 1}", SHEET_TILE) for j in range(n)]
    header += [(f"nearest photo {j + 1}", SHEET_TILE) for j in range(k)]
    cells = [[_label(text, text_w, SHEET_TILE, 9), *generated, *(_scored(photo, score) for photo, score in nearest)]
             for text, generated, nearest in rows]
    return _sheet(header, cells, sum(w + GAP for _, w in header))

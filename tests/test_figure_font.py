"""The figures' font draws accented, Cyrillic and Greek titles, not missing-glyph boxes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from utils.vis import figure_font, font_path, text_block


def _glyph(font, text: str) -> np.ndarray:
    mask = font.getmask(text)
    return np.asarray(mask, dtype=np.uint8).reshape(mask.size[1], mask.size[0])


def test_the_font_is_the_packages_and_covers_latin_cyrillic_and_greek():
    path = font_path()
    package = Path(next(iter(importlib.util.find_spec("matplotlib").submodule_search_locations)))
    assert path is not None and path.is_relative_to(package)  # found through the package, no system path
    font = figure_font()
    box = _glyph(font, "\ue000")  # a private-use code point: the font's .notdef box
    glyphs = {ch: _glyph(font, ch) for ch in "ЖФщЯñéΩλ"}
    for ch, bitmap in glyphs.items():
        assert bitmap.shape != box.shape or not np.array_equal(bitmap, box), ch
    for a, b in (("Ж", "Ф"), ("щ", "Я"), ("ñ", "é"), ("Ω", "λ")):
        assert not np.array_equal(glyphs[a], glyphs[b]), (a, b)


def test_a_cyrillic_title_is_drawn_in_the_figure():
    def drawn(title: str) -> np.ndarray:
        return np.asarray(text_block(title, "", False))

    blank = drawn("")
    borshch, shchi = drawn("Борщ"), drawn("Щи с капустой")
    assert not np.array_equal(borshch, blank) and not np.array_equal(borshch, shchi)
    # Boxes would draw "Жжжж" and "Фффф" alike.
    assert not np.array_equal(drawn("Жжжж"), drawn("Фффф"))
    assert not np.array_equal(drawn("Jalapeño"), drawn("Jalape\ue000o"))

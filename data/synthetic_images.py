"""The images of the synthetic Recipe1M (``data/synthetic.py``): :func:`draw_image`.

An image shows its recipe: the dish type sets the plate (its style and colour) and the
background colour, each ingredient is drawn as pieces with its own look (colour, shape, texture:
``data/synthetic_lexicon.py``), and placement, scale, rotation, lighting and noise are random.

Determinism: image ``k`` of recipe ``i`` draws only from ``np.random.default_rng([seed, 2, i, k])``;
sprites, noise tiles and work buffers are cached per process, and none of them depends on what
was drawn before, so the pixels do not depend on the order or the process that draws them.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data.synthetic_lexicon import lexicon

SPRITE = 48  # side of an ingredient's canonical sprite, scaled per piece


def _shade(colour, factor: float, add: float = 0.0) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor + add))) for c in colour)


@cache
def _sprite(index: int) -> Image.Image:
    """Ingredient ``index``'s look: an RGBA ``SPRITE`` x ``SPRITE`` image (shape, texture, outline)."""
    ing = lexicon()["ingredients"][index]
    n, c = SPRITE, SPRITE / 2
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    shape = ing["shape"]
    if shape == "circle":
        draw.ellipse([4, 4, n - 5, n - 5], fill=255)
    elif shape == "square":
        draw.rectangle([8, 8, n - 9, n - 9], fill=255)
    elif shape == "triangle":
        draw.polygon([(c, 3), (n - 3, n - 5), (3, n - 5)], fill=255)
    elif shape == "stripe":
        draw.rectangle([2, c - 7, n - 3, c + 6], fill=255)
    elif shape == "star":
        points = [(c + (22 if k % 2 == 0 else 9) * math.cos(math.pi * (k / 5 - 0.5)),
                   c + (22 if k % 2 == 0 else 9) * math.sin(math.pi * (k / 5 - 0.5))) for k in range(10)]
        draw.polygon(points, fill=255)
    elif shape == "ring":
        draw.ellipse([3, 3, n - 4, n - 4], fill=255)
        draw.ellipse([15, 15, n - 16, n - 16], fill=0)
    elif shape == "diamond":
        draw.polygon([(c, 2), (n - 3, c), (c, n - 3), (2, c)], fill=255)
    else:  # cross
        draw.rectangle([c - 6, 4, c + 5, n - 5], fill=255)
        draw.rectangle([4, c - 6, n - 5, c + 5], fill=255)
    colour = np.asarray(ing["colour"], dtype=np.float32)
    # Texture marks contrast with the colour: darker on light colours, lighter on dark ones.
    accent = colour * 0.55 if colour @ np.float32([0.299, 0.587, 0.114]) > 100 else colour * 0.5 + 110
    rgb = np.tile(colour, (n, n, 1))  # (n, n, 3)
    yy, xx = np.mgrid[0:n, 0:n]
    if ing["texture"] == "dots":
        rgb[((xx % 8) - 3.5) ** 2 + ((yy % 8) - 3.5) ** 2 <= 5] = accent
    elif ing["texture"] == "stripes":
        rgb[((xx + yy) // 5) % 2 == 0] = accent
    elif ing["texture"] == "noise":  # fixed per ingredient: part of its look, not of the image
        rgb += np.random.default_rng([7919, index]).normal(0, 30, (n, n, 1)).astype(np.float32)
    alpha = np.asarray(mask)
    edge = (alpha > 0) & (np.asarray(mask.filter(ImageFilter.MinFilter(5))) == 0)
    rgb[edge] = colour * 0.6
    rgba = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha])  # (n, n, 4)
    return Image.fromarray(rgba, "RGBA")


def _rect(cx: float, cy: float, hx: float, hy: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a rectangle of half-sides ``hx``, ``hy`` rotated by ``angle`` radians."""
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos)
            for x, y in ((-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy))]


def _draw_plate(draw: ImageDraw.ImageDraw, dish: dict, rng: np.random.Generator,
                size: int) -> tuple[float, float, float, float]:
    """Draw the dish's plate, bowl, board... and return where food goes: ``(cx, cy, rx, ry)``."""
    cx, cy = size * (0.5 + rng.uniform(-0.08, 0.08, 2))
    r = size * rng.uniform(0.36, 0.46)
    col = _shade(np.asarray(dish["plate"]) + rng.integers(-10, 11, 3), 1.0)
    dark, width = _shade(col, 0.75), max(1, size // 96)
    style = dish["style"]
    if style in ("plate", "bowl", "pan"):
        if style == "pan":  # the handle first, so the pan covers its root
            t = rng.uniform(0, 2 * math.pi)
            draw.line([(cx, cy), (cx + 1.6 * r * math.cos(t), cy + 1.6 * r * math.sin(t))],
                      fill=dark, width=max(2, int(0.18 * r)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        inner = 0.8 * r
        if style == "plate":
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], outline=dark, width=width)
        else:  # a bowl's or pan's inside is in shadow (bowl) or lighter metal (pan)
            fill = _shade(col, 0.8) if style == "bowl" else _shade(col, 1.0, 30)
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=fill)
        return cx, cy, 0.68 * r, 0.68 * r
    if style == "oval":
        rx, ry = 1.12 * r, 0.78 * r
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=col)
        draw.ellipse([cx - 0.82 * rx, cy - 0.8 * ry, cx + 0.82 * rx, cy + 0.8 * ry], outline=dark, width=width)
        return cx, cy, 0.72 * rx, 0.68 * ry
    if style in ("square", "board"):
        angle = rng.uniform(-0.4, 0.4)
        hx, hy = (0.88 * r, 0.88 * r) if style == "square" else (1.05 * r, 0.72 * r)
        draw.polygon(_rect(cx, cy, hx, hy, angle), fill=col)
        if style == "square":
            draw.polygon(_rect(cx, cy, 0.75 * hx, 0.75 * hy, angle), outline=dark, width=width)
        else:  # wood grain along the board
            for k in range(-2, 3):
                (x0, y0), (x1, y1) = _rect(cx, cy, 0.9 * hx, 0.3 * k * hy, angle)[:2]
                draw.line([(x0, y0), (x1, y1)], fill=dark, width=width)
        return cx, cy, 0.75 * hy, 0.75 * hy
    if style == "tray":
        hx, hy = 1.1 * r, 0.85 * r
        draw.rounded_rectangle([cx - hx, cy - hy, cx + hx, cy + hy], radius=0.1 * r, fill=col,
                               outline=dark, width=3 * width)
        return cx, cy, 0.8 * hx, 0.75 * hy
    # glass: tall, with the drink inside
    hx, hy = 0.45 * r, 0.95 * r
    draw.rounded_rectangle([cx - hx, cy - hy, cx + hx, cy + hy], radius=0.15 * r, fill=col,
                           outline=_shade(col, 1.0, 40), width=2 * width)
    draw.rectangle([cx - 0.8 * hx, cy - 0.6 * hy, cx + 0.8 * hx, cy + 0.9 * hy], fill=_shade(col, 0.85))
    return cx, cy + 0.15 * hy, 0.6 * hx, 0.65 * hy


@cache
def _sprite_level(index: int, level: int) -> Image.Image:
    """``_sprite(index)`` halved ``level`` times (box filter), alpha premultiplied ("RGBa", the
    mode PIL resamples in, so each piece skips two conversions): the source of small pieces."""
    sprite = _sprite(index)
    return (sprite if level == 0 else sprite.reduce(2 ** level)).convert("RGBa")


def _piece(index: int, angle: float, side: int) -> Image.Image:
    """Ingredient ``index`` rotated by ``angle`` (radians) in an RGBA ``side`` x ``side`` box.

    One affine transform (rotation and scale, on premultiplied alpha) from the smallest halved
    sprite at least ``side`` wide, so bilinear sampling never skips texture (no aliasing).
    """
    level = 0
    while level < 2 and SPRITE >> (level + 1) >= side:
        level += 1
    sprite = _sprite_level(index, level)
    n = sprite.size[0]
    cos, sin = math.cos(angle), math.sin(angle)
    k = n * (abs(cos) + abs(sin)) / side  # source pixels per output pixel: the box holds the rotated shape
    a, b, d, e = cos * k, sin * k, -sin * k, cos * k
    c = side / 2
    return sprite.transform((side, side), Image.AFFINE, (a, b, n / 2 - (a + b) * c, d, e, n / 2 - (d + e) * c),
                            resample=Image.BILINEAR).convert("RGBA")


@cache
def _noise_tile(size: int) -> np.ndarray:
    """Fixed standard normal noise, float32 (2 size, 2 size, 3); images take a random window."""
    return np.random.default_rng([7, size]).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)


@cache
def _buffers(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Work arrays of this process for :func:`draw_image`: float32 (S, S), two (S, S, 3), uint8 (S, S, 3)."""
    return (np.empty((size, size), np.float32), np.empty((size, size, 3), np.float32),
            np.empty((size, size, 3), np.float32), np.empty((size, size, 3), np.uint8))


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to [-0.5, 0.5], for lighting gradients: two (size, size) arrays."""
    v = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return np.meshgrid(v, v)


def draw_image(seed: int, index: int, k: int, recipe: dict, size: int = 256) -> Image.Image:
    """Image ``k`` of recipe ``index``: the dish's plate on its background with the recipe's
    ingredients scattered on it (the featured one more often), under random light and noise.

    Args:
        seed: the data set's seed.
        index: the recipe's index (with ``k``, seeds this image's draws).
        k: which image of the recipe.
        recipe: a :func:`data.synthetic.make_recipe` structure (``dish``, ``ingredients``, ``featured`` used).
        size: side in pixels.

    Returns:
        An RGB ``size`` x ``size`` image.
    """
    rng = np.random.default_rng([seed, 2, index, k])
    dish = lexicon()["dishes"][recipe["dish"]]
    background = _shade(np.asarray(dish["background"]) + rng.integers(-14, 15, 3), 1.0)
    img = Image.new("RGB", (size, size), background)
    cx, cy, rx, ry = _draw_plate(ImageDraw.Draw(img), dish, rng, size)
    pieces = []
    for ing in recipe["ingredients"]:
        pieces += [ing] * int(rng.integers(4, 7) if ing == recipe["featured"] else rng.integers(2, 4))
    for j in rng.permutation(len(pieces)):  # random order: random overlaps
        rho, phi = math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        x, y = cx + rx * rho * math.cos(phi), cy + ry * rho * math.sin(phi)
        side = max(4, int(size * rng.uniform(0.09, 0.15)))
        piece = _piece(pieces[int(j)], rng.uniform(0, 2 * math.pi), side)
        img.paste(piece, (int(x) - side // 2, int(y) - side // 2), piece)
    # Lighting: overall brightness, a linear gradient in a random direction, a colour cast; noise
    # from a fixed tile at a random offset (a fresh normal draw per image cost ~2 ms, a third of
    # the whole image).
    u, v = _grid(size)
    light, gain, arr, out = _buffers(size)  # reused: fresh arrays this size cost page faults
    t, slope = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.35)
    np.multiply(u, np.float32(slope * math.cos(t)), out=light)  # (S, S)
    light += v * np.float32(slope * math.sin(t))
    light += 1
    light *= np.float32(rng.uniform(0.75, 1.2))
    np.multiply(light[..., None], rng.uniform(0.93, 1.07, 3).astype(np.float32), out=gain)  # (S, S, 3)
    ox, oy = (int(o) for o in rng.integers(0, size, 2))
    arr[...] = np.asarray(img)  # (S, S, 3)
    arr *= gain
    np.multiply(_noise_tile(size)[oy:oy + size, ox:ox + size], np.float32(rng.uniform(2, 7)), out=gain)
    arr += gain
    arr += 0.5  # round, not truncate
    np.clip(arr, 0, 255, out=arr)
    np.copyto(out, arr, casting="unsafe")
    return Image.frombytes("RGB", (size, size), out.data)  # a copy: the buffers are free again

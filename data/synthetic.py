"""A learnable synthetic Recipe1M: ``python -m data.synthetic --out DIR --recipes N --seed S``.

Writes every Recipe1M file of docs/data.md#recipe1m-on-disk into ``DIR`` (``layer1.json``, ``layer2.json``,
``det_ingrs.json``, ``classes1M.pkl``, ``{train,val,test}_keys.pkl``), the translations
``layer1_{de,ru,fr,de-en,ru-en}.json`` rendered from a built-in lexicon, and JPEG images under
``DIR/images/<partition>/<c1>/<c2>/<c3>/<c4>/<image id>.jpg``; so ``--r1m_path DIR
--img_path DIR/images``. ``synthetic.json`` (parameters and counts) is written last, so its
presence marks a finished set.

Why it is learnable: recipes come from dish templates (a core set of ingredients plus random
extras), and every image is drawn from its recipe: each ingredient has its own look (colour,
shape, texture), the dish type sets the plate and the background colour, and placement, scale,
rotation, lighting and noise are random. Images of one recipe show the same ingredients in other
places and light; many recipes share most of their ingredients, so retrieval needs the details.
The lexicon is in ``data/synthetic_lexicon.py``, the drawing in ``data/synthetic_images.py``; this
module makes the recipes, writes their texts and all the files.

Determinism: every random draw comes from a numpy ``Generator`` seeded by a fixed tuple, so the
same arguments give byte-identical files whatever ``--workers``. Streams: ``[seed, 0]`` ids,
``[seed, 1, i]`` recipe ``i``, ``[seed, 2, i, k]`` its image ``k``, ``[seed, 3, block]`` the rare
features of a block of recipes, ``[seed, 4, i, lang]`` back-translation wording, ``[seed, 5]``
the order of ``layer2.json`` (a permutation, so that readers must keep layer2 order for keys).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import shutil
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.recipe1m import PARTITIONS, image_path, write_classes, write_keys
from data.synthetic_images import draw_image
from data.synthetic_lexicon import UNIT_KINDS, lexicon
from utils.errors import InputError
from utils.io import atomic_write_json

LANGS_OUT = ("en", "de-en", "ru-en", "de", "ru", "fr")  # what render() knows
TRANSLATIONS = ("de", "ru", "fr", "de-en", "ru-en")  # the layer1_<lang>.json files written
BACK_SYNONYM_P = {"de-en": 0.3, "ru-en": 0.45}  # chance a back-translation swaps a word or wording
IMAGE_COUNT_P = (0.4, 0.25, 0.15, 0.1, 0.1)  # P(1..5 images) of a recipe with images
BLOCK = 40  # every block of 40 recipes holds each rare feature (see _rare_features)
BACKGROUND_CLASS_P = 0.1  # recipes put in class 0 (background)
JPEG_QUALITY = 90


# --- recipes -------------------------------------------------------------------------------------

@cache
def _rare_features(seed: int, block: int) -> dict[str, set[int]]:
    """Positions (``i % BLOCK``) of the rare features in one block of ``BLOCK`` recipes.

    Each block holds exactly one recipe without images, one missing from classes1M, two with an
    empty ingredient line and two with an empty instruction line, so even a small set exercises
    the readers' handling of them.
    """
    perm = [int(v) for v in np.random.default_rng([seed, 3, block]).permutation(BLOCK)]
    return {"no_image": {perm[0]}, "no_class": {perm[1]}, "empty_ingredient": set(perm[2:4]),
            "empty_instruction": set(perm[4:6])}


def _pick(rng: np.random.Generator, items):
    """One element of ``items``, uniformly (cheaper than ``rng.choice``, which the loops felt)."""
    return items[int(rng.integers(len(items)))]


def _sample(rng: np.random.Generator, items: list, k: int) -> list:
    """``k`` distinct elements of ``items`` in random order."""
    return [items[int(j)] for j in rng.permutation(len(items))[:k]]


def _make_steps(rng: np.random.Generator, dish_index: int, ingredients: list[int]) -> list[tuple]:
    """3-8 instruction steps ``(template key, slots)``: prepare, combine, add, cook, rest, serve."""
    lex = lexicon()
    prep, mix, how, serve = (lex["groups"][g] for g in ("prep", "mix", "how", "serve"))
    dish = lex["dishes"][dish_index]
    steps: list[tuple] = []
    for _ in range(int(rng.integers(1, 3))):
        steps.append(("prep", {"V": _pick(rng, prep), "A": _pick(rng, ingredients)}))
    for _ in range(int(rng.integers(0, 3))):
        a, b = _sample(rng, ingredients, 2)
        steps.append(("combine", {"V": _pick(rng, mix), "A": a, "B": b, "P": _pick(rng, how)}))
    rest = rng.random() < 0.4
    for _ in range(int(rng.integers(0, min(2, 6 - len(steps) - rest) + 1))):
        steps.append(("add", {"A": _pick(rng, ingredients), "V": _pick(rng, mix), "P": _pick(rng, how)}))
    minutes = (5, 10, 15, 20, 25, 30, 40, 45)
    steps.append(("cook", {"V": lex["verb_index"][dish["cook"]], "N": _pick(rng, minutes),
                           "P": _pick(rng, how)}))
    if rest:
        steps.append(("rest", {"D": dish_index, "N": _pick(rng, (5, 10, 15))}))
    steps.append(("serve", {"D": dish_index, "S": _pick(rng, serve)}))
    return steps


def make_recipe(seed: int, index: int, max_images: int = 5) -> dict:
    """The structure of recipe ``index`` (language-free; :class:`Renderer` writes its texts).

    Returns:
        ``{"index", "dish", "adjective", "featured", "ingredients" (drawn ingredient indices),
        "lines" (("ing" | "pantry", index, unit, quantity) or ("empty",)), "steps"
        ((template, slots) or ("empty",)), "partition", "n_images", "cls" (None: left out of
        classes1M)}``. Ids are given by :func:`generate`.
    """
    lex = lexicon()
    rare = _rare_features(seed, index // BLOCK)
    pos = index % BLOCK
    rng = np.random.default_rng([seed, 1, index])
    d = int(rng.integers(len(lex["dishes"])))
    dish = lex["dishes"][d]
    core = [c for c in dish["core"] if rng.random() < 0.85] or [dish["core"][0]]
    extras = _sample(rng, dish["extras"], int(rng.integers(2, 6)))
    ingredients = core + extras
    featured = _pick(rng, extras) if rng.random() < 0.7 else _pick(rng, ingredients)

    lines: list[tuple] = []
    for j in rng.permutation(len(ingredients)):
        ing = ingredients[int(j)]
        unit = _pick(rng, UNIT_KINDS[lex["ingredients"][ing]["kind"]])
        lines.append(("ing", ing, unit, _pick(rng, lex["units"][unit]["quantities"])))
    for p in _sample(rng, range(len(lex["pantry"])), int(rng.integers(0, 3))):
        kinds = UNIT_KINDS[lex["pantry"][p]["kind"]]
        unit = _pick(rng, kinds) if kinds else "taste"
        qty = _pick(rng, lex["units"][unit]["quantities"]) if kinds else ""
        lines.insert(int(rng.integers(len(lines) + 1)), ("pantry", p, unit, qty))
    if pos in rare["empty_ingredient"]:
        lines.insert(int(rng.integers(len(lines) + 1)), ("empty",))
    steps = _make_steps(rng, d, ingredients)
    if pos in rare["empty_instruction"]:
        steps.insert(int(rng.integers(1, len(steps) + 1)), ("empty",))

    u = rng.random()
    partition = "train" if u < 0.7 else "val" if u < 0.85 else "test"
    cls = None if pos in rare["no_class"] else 0 if rng.random() < BACKGROUND_CLASS_P else d + 1
    cumulative = np.cumsum(IMAGE_COUNT_P[:max_images])
    draw = rng.random() * cumulative[-1]
    n_images = 0 if pos in rare["no_image"] else 1 + int(np.searchsorted(cumulative, draw, side="right"))
    return {"index": index, "dish": d, "adjective": int(rng.integers(len(lex["adjectives"]))),
            "featured": featured, "ingredients": ingredients, "lines": lines, "steps": steps,
            "partition": partition, "n_images": n_images, "cls": cls}


# --- texts ---------------------------------------------------------------------------------------

def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class Renderer:
    """Writes a recipe structure in one language of ``LANGS_OUT``.

    ``de-en`` / ``ru-en`` imitate back-translations: English where each word (and each sentence's
    wording) is swapped for its synonym with probability ``BACK_SYNONYM_P``, ``ru-en`` sometimes
    drops articles, both sometimes drop "of" in ingredient lines. ``rng`` is used (and needed)
    only by these.

    Raises:
        ValueError: an unknown language, or a back-translation without ``rng``.
    """

    def __init__(self, lang: str, rng: np.random.Generator | None = None):
        if lang not in LANGS_OUT:
            raise ValueError(f"unknown language {lang!r}; expected one of {', '.join(LANGS_OUT)}")
        if lang in BACK_SYNONYM_P and rng is None:
            raise ValueError(f"language {lang!r} draws its wording: pass an rng")
        self.lang, self.rng = lang, rng
        self.p = BACK_SYNONYM_P.get(lang, 0.0)
        self.english = lang in ("en", "de-en", "ru-en")
        self.lex = lexicon()

    def _swap(self) -> bool:
        return self.p > 0 and self.rng.random() < self.p

    def word(self, entry: dict, plural: bool = False) -> str:
        """``entry`` in this language (English: singular or plural, maybe its synonym)."""
        if not self.english:
            return entry[self.lang]
        return entry["syn" if self._swap() else "en"][int(plural)]

    def title(self, r: dict) -> str:
        adj = self.word(self.lex["adjectives"][r["adjective"]])
        ing = self.word(self.lex["ingredients"][r["featured"]])
        dish = self.word(self.lex["dishes"][r["dish"]])
        if self.english:
            return " ".join(_cap(w) for w in f"{adj} {ing} {dish}".split(" "))
        pattern = {"de": "{a} {d} mit {i}", "ru": "{a} {d} с {i}", "fr": "{d} {a} avec {i}"}[self.lang]
        return _cap(pattern.format(a=adj, d=dish, i=ing))

    def line(self, item: tuple) -> str:
        """One ingredient line ("2 cups of flour"), ``""`` for an empty one."""
        if item[0] == "empty":
            return ""
        kind, idx, unit, qty = item
        entry = self.lex["ingredients" if kind == "ing" else "pantry"][idx]
        plural = qty not in ("1", "1/2")
        lang = "en" if self.english else self.lang
        if unit == "taste":
            name = self.word(entry)
            return {"en": f"{name} to taste", "de": f"{name} nach Geschmack", "ru": f"{name} по вкусу",
                    "fr": f"{name} selon le goût"}[lang]
        if unit == "count":
            name = self.word(entry, plural)
            return f"{name} — {qty} шт." if lang == "ru" else f"{qty} {name}"
        unit_word, name = self.word(self.lex["units"][unit], plural), self.word(entry)
        if lang == "en":
            return f"{qty} {unit_word} {name}" if self._swap() else f"{qty} {unit_word} of {name}"
        if lang == "fr":  # "de farine", "d'huile"
            return f"{qty} {unit_word} " + ("d'" if name[0] in "aeiouyéèhœ" else "de ") + name
        return f"{name} — {qty} {unit_word}" if lang == "ru" else f"{qty} {unit_word} {name}"

    def step(self, item: tuple) -> str:
        """One instruction sentence, ``""`` for an empty one."""
        if item[0] == "empty":
            return ""
        key, slots = item
        forms = self.lex["templates"][key]
        template = forms["alt" if self._swap() else "en"] if self.english else forms[self.lang]
        words = {}
        for name, value in slots.items():
            table = {"V": "verbs", "A": "ingredients", "B": "ingredients", "P": "phrases", "S": "phrases",
                     "D": "dishes"}.get(name)
            words[name] = self.word(self.lex[table][value]) if table else str(value)
        text = template.format(**words)
        if self.lang == "ru-en" and self.rng.random() < 0.5:
            text = text.replace(" the ", " ")  # Russian has no articles
        return _cap(" ".join(text.split()))

    def render(self, r: dict) -> tuple[str, list[str], list[str]]:
        """``(title, ingredient lines, instruction sentences)``; empty entries stay ``""``."""
        return self.title(r), [self.line(x) for x in r["lines"]], [self.step(x) for x in r["steps"]]


# --- writing images ------------------------------------------------------------------------------

def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (no reader sees half a file).

    Unlike ``utils.io.atomic_write`` there is no fsync, no ``mkstemp`` and no folder check up
    front: images are many, small and regenerable, and those system calls would dominate the run
    time. The temporary name holds the process id (one writer per name); the file gets the
    umask's permissions.
    """
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}.tmp"
    try:
        try:
            handle = open(tmp, "wb")
        except FileNotFoundError:  # first image in this folder
            os.makedirs(path.parent, exist_ok=True)
            handle = open(tmp, "wb")
        with handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _draw_jobs(args: tuple) -> int:
    """Worker: draw and write the images of a few recipes; returns how many were written."""
    seed, size, img_root, jobs = args
    written = 0
    for recipe, partition, image_ids in jobs:
        for k, image_id in enumerate(image_ids):
            buffer = io.BytesIO()
            draw_image(seed, recipe["index"], k, recipe, size).save(buffer, "JPEG", quality=JPEG_QUALITY)
            _write_bytes(image_path(img_root, partition, image_id), buffer.getvalue())
            written += 1
    return written


# --- the data set --------------------------------------------------------------------------------

def _chunks(items: list, n: int) -> list[list]:
    return [items[k:k + n] for k in range(0, len(items), n)]


class SyntheticOutError(InputError):
    """``--out`` names a file, or a folder that is not empty (without ``--force``)."""


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``force`` and it holds a synthetic set.

    ``force`` replaces only a folder this module wrote (it has ``synthetic.json``): a mistyped
    ``--out`` never deletes someone's files.

    Raises:
        SyntheticOutError: naming the folder and the fix.
    """
    if out.exists() and not out.is_dir():
        raise SyntheticOutError(f"--out {out}: a file, not a folder; give a new folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise SyntheticOutError(f"--out {out}: the folder is not empty; give a new folder, or --force to "
                                f"replace the synthetic data set there")
    if not (out / "synthetic.json").is_file():
        raise SyntheticOutError(f"--out {out}: the folder holds no synthetic data set (no synthetic.json); "
                                f"--force replaces only a folder written by data.synthetic")


def _swap_in(build: Path, out: Path) -> None:
    """Put the finished folder ``build`` at ``out``, replacing ``out`` whole (old images included)."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.is_dir():
        out.rename(old)
    build.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _check_params(recipes: int, seed: int, max_images: int, image_size: int, workers: int) -> None:
    """Raise ``ValueError`` naming the first parameter of :func:`generate` out of range."""
    for name, value, low, high in (("recipes", recipes, 1, None), ("seed", seed, 0, None),
                                   ("max_images", max_images, 1, len(IMAGE_COUNT_P)),
                                   ("image_size", image_size, 32, None), ("workers", workers, 0, None)):
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


Item = tuple[str, dict, list[str]]  # (recipe id, make_recipe's structure, image file names)


def _make_items(seed: int, recipes: int, max_images: int) -> list[Item]:
    """Every recipe's structure, id and image names, in recipe order.

    Ids (recipes' and images') come from one stream ``[seed, 0]`` in this order, so they are unique
    and do not depend on anything drawn elsewhere.
    """
    id_rng, seen = np.random.default_rng([seed, 0]), set()

    def new_id() -> str:
        while True:
            value = f"{int(id_rng.integers(0, 1 << 40)):010x}"
            if value not in seen:
                seen.add(value)
                return value

    items = []
    for i in range(recipes):
        r = make_recipe(seed, i, max_images)
        rid = new_id()
        items.append((rid, r, [f"{new_id()}.jpg" for _ in range(r["n_images"])]))
    return items


def _draw_images(items: list[Item], img_root: Path, seed: int, image_size: int, workers: int,
                 progress: bool) -> int:
    """Draw every image under ``img_root`` (in ``workers`` processes, or here); returns the count."""
    jobs = [(r, r["partition"], images) for _, r, images in items if images]
    tasks = [(seed, image_size, str(img_root), chunk) for chunk in _chunks(jobs, 8)]
    total = sum(len(images) for _, _, images in items)
    with tqdm(total=total, desc="drawing images", unit="img", disable=not progress) as bar:
        if workers == 0:
            for task in tasks:
                bar.update(_draw_jobs(task))
        else:
            # spawn: safe even when the caller has threads (torch); the output is the same.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for written in pool.imap_unordered(_draw_jobs, tasks):
                    bar.update(written)
    return total


def _layer1_entry(rid: str, r: dict, lang: str, rng: np.random.Generator | None) -> dict:
    """Recipe ``r``'s entry of ``layer1.json`` (``lang`` "en") or of ``layer1_<lang>.json``."""
    url = f"https://recipes.synthetic-recipe1m.invalid/{rid}"
    title, ingrs, insts = Renderer(lang, rng).render(r)
    if lang == "en":
        return {"id": rid, "title": title, "ingredients": [{"text": t} for t in ingrs],
                "instructions": [{"text": t} for t in insts], "partition": r["partition"], "url": url}
    return {"id": rid, f"title_{lang}": title, f"ingredients_{lang}": [{"text": t} for t in ingrs],
            f"instructions_{lang}": [{"text": t} for t in insts], "partition": r["partition"], "url": url}


def _texts(items: list[Item], seed: int, lex: dict) -> tuple[dict[str, list[dict]], list[dict], dict[str, int]]:
    """The texts of every recipe: ``({"en" | lang: layer1 entries}, det_ingrs entries, id2class)``."""
    layer1: dict[str, list[dict]] = {lang: [] for lang in ("en", *TRANSLATIONS)}
    det_ingrs, id2class = [], {}
    for rid, r, _ in items:
        layer1["en"].append(_layer1_entry(rid, r, "en", None))
        for lang in TRANSLATIONS:  # only the back-translations draw (their wording)
            rng = (np.random.default_rng([seed, 4, r["index"], LANGS_OUT.index(lang)])
                   if lang in BACK_SYNONYM_P else None)
            layer1[lang].append(_layer1_entry(rid, r, lang, rng))
        names = [("", False) if x[0] == "empty" else
                 (lex["ingredients" if x[0] == "ing" else "pantry"][x[1]]["en"][0], x[0] == "ing")
                 for x in r["lines"]]
        det_ingrs.append({"id": rid, "valid": [ok for _, ok in names],
                          "ingredients": [{"text": name} for name, _ in names]})
        if r["cls"] is not None:
            id2class[rid] = r["cls"]
    return layer1, det_ingrs, id2class


def _write_recipe_files(out: Path, items: list[Item], seed: int, lex: dict) -> tuple[dict[str, int], dict]:
    """Write every Recipe1M file but the images into ``out``; returns ``(id2class, class2name)``.

    ``layer2.json`` lists the recipes with images in a permutation (stream ``[seed, 5]``), so that
    readers must keep its order for the keys files.
    """
    layer1, det_ingrs, id2class = _texts(items, seed, lex)
    with_images = [k for k, (_, _, images) in enumerate(items) if images]
    order = [with_images[int(k)] for k in np.random.default_rng([seed, 5]).permutation(len(with_images))]
    layer2 = [{"id": items[k][0], "images": [
        {"id": image, "url": f"https://images.synthetic-recipe1m.invalid/{image}"} for image in items[k][2]]}
        for k in order]

    atomic_write_json(out / "layer1.json", layer1["en"])
    for lang in TRANSLATIONS:
        atomic_write_json(out / f"layer1_{lang}.json", layer1[lang])
    atomic_write_json(out / "layer2.json", layer2)
    atomic_write_json(out / "det_ingrs.json", det_ingrs)
    class2name = {0: "background", **{d + 1: dish["en"][0] for d, dish in enumerate(lex["dishes"])}}
    write_classes(out / "classes1M.pkl", id2class, class2name)
    for partition in PARTITIONS:  # recipes with images, in layer2.json order (docs/data.md#the-lmdb-records)
        write_keys(out / f"{partition}_keys.pkl",
                   [items[k][0] for k in order if items[k][1]["partition"] == partition])
    return id2class, class2name


def _summary(items: list[Item], lex: dict, id2class: dict[str, int], class2name: dict, params: dict) -> dict:
    """What ``synthetic.json`` records: counts per partition and in total, and the parameters."""
    parts = {p: {"recipes": 0, "with_images": 0, "images": 0} for p in PARTITIONS}
    for _, r, images in items:
        counts = parts[r["partition"]]
        counts["recipes"] += 1
        counts["with_images"] += bool(images)
        counts["images"] += len(images)
    return {
        "format_version": 1, "recipes": len(items), "with_images": sum(bool(images) for _, _, images in items),
        "images": sum(len(images) for _, _, images in items),
        "partitions": parts, "dish_types": len(lex["dishes"]), "ingredients": len(lex["ingredients"]),
        "classes": len(class2name), "in_classes1M": len(id2class),
        "background_class": sum(1 for c in id2class.values() if c == 0),
        "empty_ingredient_lines": sum(x == ("empty",) for _, r, _ in items for x in r["lines"]),
        "empty_instruction_lines": sum(x == ("empty",) for _, r, _ in items for x in r["steps"]),
        "params": params,
        "languages": ["en", *TRANSLATIONS],
    }


def generate(out_dir: str | os.PathLike, recipes: int = 5000, seed: int = 0, max_images: int = 5,
             image_size: int = 256, workers: int = 0, *, progress: bool = True, force: bool = False) -> dict:
    """Write a synthetic Recipe1M (docs/data.md#recipe1m-on-disk) into ``out_dir``, images under ``out_dir/images``.

    The set is written into a hidden sibling folder and renamed into place when complete.

    Args:
        out_dir: the folder (created): new or empty, or with ``force`` an earlier synthetic set,
            replaced whole.
        recipes: number of recipes in ``layer1.json``.
        seed: the seed (>= 0); the same arguments give byte-identical files.
        max_images: at most this many images per recipe (1-5).
        image_size: side of the JPEG images in pixels (>= 32).
        workers: processes drawing images (0: in this process); the output does not depend on it.
        progress: show a tqdm bar while drawing.
        force: replace the synthetic set already in ``out_dir``.

    Returns:
        The summary also written to ``synthetic.json``: counts per partition (recipes, with
        images, images), totals, dish types, ingredients, classes, empty lines, parameters.

    Raises:
        ValueError: a parameter out of range.
        SyntheticOutError: ``out_dir`` is a file, or not empty (see :func:`check_out_dir`).
    """
    _check_params(recipes, seed, max_images, image_size, workers)
    check_out_dir(Path(out_dir), force)
    final = Path(out_dir).resolve()
    out = final.parent / f".{final.name}.partial"  # a killed run leaves only this, removed by the next
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lex = lexicon()
    items = _make_items(seed, recipes, max_images)
    # Images first: the JSON files then describe a set whose images all exist.
    _draw_images(items, out / "images", seed, image_size, workers, progress)
    id2class, class2name = _write_recipe_files(out, items, seed, lex)
    params = {"recipes": recipes, "seed": seed, "max_images": max_images, "image_size": image_size}
    summary = _summary(items, lex, id2class, class2name, params)
    atomic_write_json(out / "synthetic.json", summary, indent=1)
    _swap_in(out, final)
    return summary


def get_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m data.synthetic``."""
    from utils.cli import HelpFormatter  # here, not at the top: spawned image workers need no torch

    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Write a learnable synthetic Recipe1M (all Recipe1M files, five translations, JPEG\n"
                    "images under OUT/images); use it with --r1m_path OUT --img_path OUT/images.",
        formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, default=argparse.SUPPRESS,  # no "(default: None)"
                        help="folder to write the data set into (created)")
    parser.add_argument("--recipes", type=int, default=5000, help="number of recipes")
    parser.add_argument("--seed", type=int, default=0, help="random seed >= 0; same seed, same files")
    parser.add_argument("--max_images", type=int, default=5, help="at most this many images per recipe, 1-5")
    parser.add_argument("--image_size", type=int, default=256, help="side of the JPEG images in pixels")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes drawing images, 0 = none; does not change the output; "
                             "min(4, CPU count) unless given")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--force", action="store_true",
                        help="replace the synthetic data set already in --out (a non-empty --out is refused)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Generate the data set and print a one-line summary; bad arguments exit with a message."""
    from utils.cli import run_main

    return run_main(lambda: _main(argv))


def _main(argv: list[str] | None) -> dict:
    parser = get_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = generate(args.out, recipes=args.recipes, seed=args.seed, max_images=args.max_images,
                           image_size=args.image_size, workers=args.workers, progress=not args.no_progress,
                           force=args.force)
    except InputError:
        raise  # one line through run_main
    except ValueError as err:
        parser.error(str(err))
    parts = summary["partitions"]
    split = ", ".join(f"{p} {parts[p]['recipes']}/{parts[p]['with_images']}/{parts[p]['images']}"
                      for p in PARTITIONS)
    print(f"synthetic Recipe1M in {args.out}: {summary['recipes']} recipes, {summary['with_images']} with "
          f"images, {summary['images']} images (recipes/with images/images: {split}), "
          f"{time.perf_counter() - start:.1f} s", file=sys.stdout)
    return summary


if __name__ == "__main__":
    main()

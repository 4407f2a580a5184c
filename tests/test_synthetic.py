"""The synthetic Recipe1M (data/synthetic*.py): formats, consistency, determinism, learnability."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.recipe1m import (
    PARTITIONS,
    image_path,
    iter_layer1,
    load_classes,
    load_det_ingrs,
    load_keys,
    load_layer2,
)
from data.synthetic import TRANSLATIONS, Renderer, generate, main, make_recipe

N, SIZE = 60, 64
HEX10 = re.compile(r"^[0-9a-f]{10}$")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """The same set drawn in-process and by 2 workers, and a set of another seed."""
    root = tmp_path_factory.mktemp("synthetic")
    out = {"a": root / "a", "workers": root / "workers", "seed1": root / "seed1"}
    summary = generate(out["a"], recipes=N, seed=0, image_size=SIZE, workers=0, progress=False)
    generate(out["workers"], recipes=N, seed=0, image_size=SIZE, workers=2, progress=False)
    generate(out["seed1"], recipes=N, seed=1, image_size=SIZE, workers=0, progress=False)
    out["summary"] = summary
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _layer1(root: Path, lang: str = "en"):
    name = "layer1.json" if lang == "en" else f"layer1_{lang}.json"
    return list(iter_layer1(root / name, lang))


def test_layer1_layer2_keys(sets):
    root = sets["a"]
    recipes = _layer1(root)
    ids = [r.id for r in recipes]
    assert len(ids) == N == len(set(ids))
    assert all(HEX10.match(i) for i in ids)
    partition = {r.id: r.partition for r in recipes}
    assert set(partition.values()) == set(PARTITIONS)
    assert sum(p == "train" for p in partition.values()) > N / 2  # ~70/15/15

    layer2 = load_layer2(root / "layer2.json")
    assert set(layer2) < set(ids), "a few recipes must have no image"
    assert list(layer2) != [i for i in ids if i in layer2], "layer2 order differs from layer1 on purpose"
    image_ids = [img for imgs in layer2.values() for img in imgs]
    assert len(image_ids) == len(set(image_ids)) and not set(i[:10] for i in image_ids) & set(ids)
    assert all(img.endswith(".jpg") and HEX10.match(img[:-4]) for img in image_ids)
    assert all(1 <= len(imgs) <= 5 for imgs in layer2.values())
    assert max(len(imgs) for imgs in layer2.values()) > 1

    for part in PARTITIONS:  # recipes with images of that partition, in layer2.json order
        expected = [rid for rid in layer2 if partition[rid] == part]
        assert load_keys(root / f"{part}_keys.pkl") == expected and expected

    summary = sets["summary"]
    assert summary["recipes"] == N and summary["with_images"] == len(layer2)
    assert summary["images"] == len(image_ids)
    assert sum(p["with_images"] for p in summary["partitions"].values()) == len(layer2)
    assert json.loads((root / "synthetic.json").read_text())["images"] == len(image_ids)


def test_images_exist_and_decode(sets):
    root = sets["a"]
    partition = {r.id: r.partition for r in _layer1(root)}
    layer2 = load_layer2(root / "layer2.json")
    files = set()
    for rid, imgs in layer2.items():
        for img in imgs:
            path = image_path(root / "images", partition[rid], img)
            assert path.parts[-5:-1] == tuple(img[:4])
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
                im.load()
            files.add(path)
    on_disk = {p for p in (root / "images").rglob("*") if p.is_file()}
    assert on_disk == files, "no stray or temporary files"


def test_texts_empties_and_det_ingrs(sets):
    root = sets["a"]
    recipes = _layer1(root)
    assert any("" in r.ingredients for r in recipes) and any("" in r.instructions for r in recipes)
    assert all(r.title for r in recipes)
    assert all(3 <= len([t for t in r.instructions if t]) <= 8 for r in recipes)
    assert any(re.match(r"^\d+ cups? of \w", t) for r in recipes for t in r.ingredients)

    raw = {e["id"]: e for e in json.loads((root / "det_ingrs.json").read_text())}
    valid = load_det_ingrs(root / "det_ingrs.json")
    assert set(raw) == set(valid) == {r.id for r in recipes}
    flags = [v for e in raw.values() for v in e["valid"]]
    assert any(flags) and not all(flags)
    for r in recipes:
        entry = raw[r.id]
        assert len(entry["valid"]) == len(entry["ingredients"]) == len(r.ingredients)
        for line, det, ok in zip(r.ingredients, entry["ingredients"], entry["valid"]):
            if not line:
                assert det["text"] == "" and not ok
            elif ok:  # a valid cleaned name is the ingredient the line mentions
                assert det["text"] and det["text"] in line
        assert valid[r.id] and all(valid[r.id])


def test_classes_follow_dish_type(sets):
    root = sets["a"]
    recipes = _layer1(root)
    id2class, class2name = load_classes(root / "classes1M.pkl")
    assert class2name[0] == "background" and 15 <= len(class2name) - 1 <= 25
    assert set(id2class) < {r.id for r in recipes}, "a few recipes are left out"
    assert 0 in id2class.values()
    for r in recipes:
        cls = id2class.get(r.id, 0)
        if cls:
            assert class2name[cls] in r.title.lower()
    # The same dish type, the same class: recipes with class c all name dish c in their titles.
    named = [(class2name[c], r.title.lower()) for r in recipes if (c := id2class.get(r.id, 0))]
    assert len({name for name, _ in named}) > 5


@pytest.mark.parametrize("lang", TRANSLATIONS)
def test_translations_align(sets, lang):
    root = sets["a"]
    english = _layer1(root)
    other = _layer1(root, lang)
    assert [r.id for r in other] == [r.id for r in english]
    assert [r.partition for r in other] == [r.partition for r in english]
    for en, tr in zip(english, other):
        assert len(tr.ingredients) == len(en.ingredients) and len(tr.instructions) == len(en.instructions)
        assert [t == "" for t in tr.ingredients] == [t == "" for t in en.ingredients]
        assert [t == "" for t in tr.instructions] == [t == "" for t in en.instructions]
        assert tr.title
    changed = np.mean([tr.title != en.title for en, tr in zip(english, other)])
    if lang in ("de", "ru", "fr"):
        assert changed > 0.9
    else:  # back-translations: English, slightly reworded
        assert 0.1 < changed < 0.95
        lines = [(a, b) for en, tr in zip(english, other) for a, b in zip(en.instructions, tr.instructions)]
        assert 0.05 < np.mean([a != b for a, b in lines]) < 0.95
    if lang == "ru":
        assert all(re.search("[а-яё]", r.title.lower()) for r in other)


def test_renderer_languages():
    recipe = make_recipe(0, 3)
    titles = {lang: Renderer(lang, np.random.default_rng(0)).title(recipe) for lang in
              ("en", "de", "ru", "fr")}
    assert len(set(titles.values())) == 4
    with pytest.raises(ValueError, match="unknown language"):
        Renderer("xx")
    with pytest.raises(ValueError, match="pass an rng"):
        Renderer("de-en")
    # A back-translation is reproducible from its rng and rewords the English.
    english = Renderer("en").render(recipe)
    back = [Renderer("ru-en", np.random.default_rng(k)).render(recipe) for k in (5, 5, 6)]
    assert back[0] == back[1] != english and back[0] != back[2]


def test_deterministic_and_workers_independent(sets):
    a, workers, seed1 = _tree(sets["a"]), _tree(sets["workers"]), _tree(sets["seed1"])
    assert len(a) > 60
    assert a.keys() == workers.keys()
    assert [k for k in a if a[k] != workers[k]] == []
    assert a["layer1.json"] != seed1["layer1.json"]
    assert not {r.id for r in _layer1(sets["a"])} & {r.id for r in _layer1(sets["seed1"])}


def test_images_reflect_recipes(sets):
    """Colour histograms: images of one recipe, or of recipes sharing most ingredients, are
    closer than images of unrelated recipes (the signal a model can learn)."""
    root = sets["a"]
    partition = {r.id: r.partition for r in _layer1(root)}
    det = {e["id"]: {t["text"] for t, ok in zip(e["ingredients"], e["valid"]) if ok}
           for e in json.loads((root / "det_ingrs.json").read_text())}
    hists = {}
    for rid, imgs in load_layer2(root / "layer2.json").items():
        for k, img in enumerate(imgs):
            with Image.open(image_path(root / "images", partition[rid], img)) as im:
                q = np.asarray(im.convert("RGB")) // 64  # (S, S, 3) in 4 levels
            h = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64)
            hists[rid, k] = h / h.sum()
    same, shared, other = [], [], []
    for x, y in itertools.combinations(hists, 2):
        dist = np.abs(hists[x] - hists[y]).sum()
        if x[0] == y[0]:
            same.append(dist)
        elif len(det[x[0]] & det[y[0]]) >= 0.5 * len(det[x[0]] | det[y[0]]):
            shared.append(dist)
        else:
            other.append(dist)
    assert same and shared and other
    assert np.mean(same) < 0.85 * np.mean(other)
    assert np.mean(shared) < 0.85 * np.mean(other)
    # ...yet images of one recipe are not copies of each other.
    assert min(same) > 0.02


def test_main_cli(tmp_path, capsys):
    summary = main(["--out", str(tmp_path / "s"), "--recipes", "6", "--image_size", "32",
                    "--max_images", "1", "--workers", "0", "--seed", "3", "--no_progress"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("synthetic Recipe1M in ") and f"{summary['images']} images" in line
    layer2 = load_layer2(tmp_path / "s" / "layer2.json")
    assert all(len(imgs) == 1 for imgs in layer2.values()) and summary["images"] == len(layer2)
    assert summary["params"] == {"recipes": 6, "seed": 3, "max_images": 1, "image_size": 32}


@pytest.mark.parametrize("flag, value", [("--recipes", "0"), ("--max_images", "6"), ("--seed", "-1"),
                                         ("--image_size", "8"), ("--workers", "-2")])
def test_main_rejects_bad_arguments(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), flag, value, "--no_progress"])
    assert flag.lstrip("-") in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_out_is_refused_unless_new_or_forced(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    args = ["--recipes", "6", "--image_size", "32", "--max_images", "1", "--workers", "0", "--no_progress"]
    with pytest.raises(SystemExit) as excinfo:
        main(["--out", str(a_file), *args])
    assert str(excinfo.value.code) == f"error: --out {a_file}: a file, not a folder; give a new folder"
    out = tmp_path / "s"
    main(["--out", str(out), *args])
    stale = out / "images" / "old.jpg"
    stale.write_bytes(b"an image of an earlier set")
    before = (out / "layer1.json").read_bytes()
    with pytest.raises(SystemExit) as excinfo:  # an existing set: refused, untouched
        main(["--out", str(out), *args, "--seed", "1"])
    assert str(excinfo.value.code).startswith(f"error: --out {out}: the folder is not empty")
    assert "--force" in str(excinfo.value.code) and (out / "layer1.json").read_bytes() == before
    main(["--out", str(out), *args, "--seed", "1", "--force"])  # replaced whole: the old image is gone
    assert not stale.exists() and (out / "layer1.json").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "s"]  # no staging folder left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit) as excinfo:  # --force never deletes a folder it did not write
        main(["--out", str(other), *args, "--force"])
    assert "no synthetic.json" in str(excinfo.value.code) and (other / "mine.txt").read_text() == "keep me"

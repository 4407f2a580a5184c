"""search.py, data/query.py and GAN_test.py --recipe on a tiny trained run (README: "Use a trained model").

One train.py + test.py run (and one tiny GAN_train.py run on it) is shared by the module; the
queries are the run's own test photos and recipes, so every answer can be checked against the
embedding files test.py wrote.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_MODEL
from PIL import Image

import create_lmdb
import demo
import GAN_test
import GAN_train
import search
import train
import translate_text
from data.langs import parse_language
from data.lmdb_format import RecordReader, lmdb_dir
from data.query import (
    QueryRecipe,
    RecipeTokenizer,
    load_query_image,
    load_query_photo,
    read_recipe_json,
    recipe_from_text,
)
from data.recipe1m import image_path, iter_layer1, layer1_path, load_keys
from pipeline.search import RunSearch
from utils import search_index
from utils.embeddings import load_embeddings
from utils.runs import ENCODER_SUFFIX, ckpt_name, search_index_name

_spec = importlib.util.spec_from_file_location("xmrs_test_script_search", ROOT / "test.py")  # "test" is the stdlib's
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

GAN_TINY = ["--Z_DIM", "8", "--GF_DIM", "4", "--DF_DIM", "4", "--EMBEDDING_DIM", "8", "--R_NUM", "1",
            "--embDim", "32", "--batch_size", "8", "--max_iters", "1", "--workers", "0", "--no_cuda",
            "--grid_n", "0", "--medr", "1000", "--epochs", "1"]


def _test_script():
    # "test" is also Python's regression-test package: load the script by path.
    import importlib.util

    spec = importlib.util.spec_from_file_location("xmrs_test_script_search", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(indexed_set, tmp_path_factory):
    """A train.py run with test.py's embeddings of test, val and train (English)."""
    runs = tmp_path_factory.mktemp("search_runs")
    run_dir = train.main([*TINY_MODEL, "--data_path", str(indexed_set["data"]), "--img_path", str(indexed_set["img"]),
                          "--runs_dir", str(runs), "--batch_size", "8", "--workers", "0", "--epochs", "1",
                          "--max_iters", "2", "--medr", "20", "--projector_every", "0"])
    best = next(p for p in (run_dir / "models").glob("model_BEST_REC_*.pth.tar")
                if not p.name.endswith(ENCODER_SUFFIX))
    _test_script().main(["--model_init_path", str(best), "--partitions", "test,val,train", "--workers", "0",
                         "--medr", "20", "--no_cuda"])
    return run_dir


def _npz(run_dir, partition):
    return load_embeddings(next(run_dir.glob(f"foodSpace_vectors_*_{partition}_en.npz")))


def _reference_topk(query, matrix, k):
    """Brute force: cosine against every row, a stable sort."""
    sims = _cosines(query, matrix)
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def _cosines(query, matrix):
    m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return m @ (query / np.linalg.norm(query))


def _assert_same_topk(hits, query, matrix, ids, k, tol=1e-5):
    """The hits are the brute-force top-k of ``query``: the same scores to ``tol`` and the same ids.

    The tiny model trained for two steps gives nearly equal recipe embeddings (gaps of 1e-6 between
    neighbours), below what two float32 computations can order alike: there, and only there, ids
    whose reference scores are within ``tol`` of each other may trade places.
    """
    sims = _cosines(query, matrix)
    order = np.argsort(-sims, kind="stable")[:k]
    assert len(hits) == k
    np.testing.assert_allclose([h["score"] for h in hits], sims[order], atol=tol)
    for hit, j in zip(hits, order):
        if hit["recipe_id"] != ids[j]:
            assert abs(sims[ids.index(hit["recipe_id"])] - sims[j]) < tol, (hit, ids[j])


def _layer1(indexed_set):
    return {r.id: r for r in iter_layer1(layer1_path(indexed_set["r1m"], "en"))}


def _error_line(excinfo) -> str:
    message = str(excinfo.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# --------------------------------------------------------------------------- queries against test.py


def test_photo_query_ranks_as_the_test_embeddings(run, indexed_set, capsys):
    emb = _npz(run, "test")
    ids = [str(i) for i in emb["rec_ids"]]
    reader = RecordReader(lmdb_dir(indexed_set["data"], "test"))
    photos = [image_path(indexed_set["img"], "test", reader.get(ids[i]).images[0]) for i in (0, 3)]
    out = search.main(["--run", str(run), "--image", *map(str, photos), "--k", "5", "--index_parts", "test",
                       "--no_cuda", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(out))  # --json prints what main returns
    assert out["target"] == "recipes" and out["method"] == "exact"
    for q, i in enumerate((0, 3)):
        hits = out["results"][q]["results"]
        _assert_same_topk(hits, emb["img_embeds"][i], emb["rec_embeds"], ids, 5)
        assert all(h["title"] and h["ingredients"] and h["partition"] == "test" for h in hits)
    # The photo itself embeds to test.py's vector.
    searcher = RunSearch(run, parts=["test"], log=lambda m: None)
    np.testing.assert_allclose(searcher.embed_images(photos), emb["img_embeds"][[0, 3]], atol=1e-5)
    index_path = search_index_name(run, ckpt_name(out["checkpoint"]), ["test"], "en")
    assert out["index"] == str(index_path) and index_path.is_file()
    # The saved index is reused while the embedding files are unchanged.
    search.main(["--run", str(run), "--image", str(photos[0]), "--index_parts", "test", "--no_cuda"])
    text = capsys.readouterr().out
    assert "built" not in text and f"index: {index_path.name} (" in text
    assert f"query 1: photo {photos[0]} -> top 5 recipes" in text
    # ... and rebuilt when one of them changes.
    npz = next(run.glob("foodSpace_vectors_*_test_en.npz"))
    os.utime(npz, ns=(npz.stat().st_atime_ns, npz.stat().st_mtime_ns + 1_000_000))
    search.main(["--run", str(run), "--image", str(photos[0]), "--index_parts", "test", "--no_cuda"])
    assert f"index: {index_path.name} is out of date" in capsys.readouterr().out


def test_recipe_json_embeds_to_its_lmdb_row(run, indexed_set, tmp_path):
    emb = _npz(run, "test")
    ids = [str(i) for i in emb["rec_ids"]]
    layer1 = _layer1(indexed_set)
    rid = ids[1]
    recipe = layer1[rid]
    entry = {"id": rid, "title": recipe.title, "ingredients": [{"text": t} for t in recipe.ingredients],
             "instructions": [{"text": t} for t in recipe.instructions]}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(entry))
    searcher = RunSearch(run, lang="en", parts=["test"], log=lambda m: None)
    # The token row is the LMDB's, and so is the embedding.
    queries = read_recipe_json(path)
    stored = RecordReader(lmdb_dir(indexed_set["data"], "test")).get(rid)
    ids_row, parts_row = searcher.recipes.stored_row(queries[0])
    assert np.array_equal(ids_row, stored.ids[0]) and np.array_equal(parts_row, stored.parts[0])
    vec = searcher.embed_recipes(queries)
    np.testing.assert_allclose(vec[0], emb["rec_embeds"][1], atol=1e-5)
    # The same recipe from the command line: the same vector.
    typed = recipe_from_text(recipe.title, "\n".join(recipe.ingredients), ";".join(recipe.instructions))
    np.testing.assert_allclose(searcher.embed_recipes([typed])[0], vec[0], atol=1e-6)
    # search.py --recipe ranks images as the test embeddings do.
    out = search.main(["--run", str(run), "--recipe", str(path), "--k", "4", "--index_parts", "test", "--no_cuda"])
    hits = out["results"][0]["results"]
    assert out["results"][0]["query"]["recipe_id"] == rid
    _assert_same_topk(hits, emb["rec_embeds"][1], emb["img_embeds"], ids, 4)
    reader = RecordReader(lmdb_dir(indexed_set["data"], "test"))
    for h in hits:
        assert h["image_id"] == reader.get(h["recipe_id"]).images[0]
        assert h["path"] == str(image_path(indexed_set["img"], "test", h["image_id"]))


def test_default_index_is_every_partition_and_the_figure(run, indexed_set, tmp_path):
    emb = {p: _npz(run, p) for p in ("test", "val", "train")}
    rid = str(emb["val"]["rec_ids"][0])
    reader = RecordReader(lmdb_dir(indexed_set["data"], "val"))
    photo = image_path(indexed_set["img"], "val", reader.get(rid).images[0])
    figure = tmp_path / "fig.png"
    out = search.main(["--run", str(run), "--image", str(photo), "--k", "3", "--no_cuda", "--figure", str(figure)])
    rec = np.concatenate([emb[p]["rec_embeds"] for p in ("test", "val", "train")])
    ids = [str(i) for p in ("test", "val", "train") for i in emb[p]["rec_ids"]]
    _assert_same_topk(out["results"][0]["results"], emb["val"]["img_embeds"][0], rec, ids, 3)
    assert out["index"].endswith("_test-val-train_en.npz")
    with Image.open(figure) as img:  # the photo, then 3 x (recipe text, its photo)
        assert img.size == (160 + 3 * (220 + 160) + 6 * 6, 160)
    text_fig = tmp_path / "text.png"
    search.main(["--run", str(run), "--text", "Tomato soup", "--ingredients", "2 tomatoes;1 onion", "--k", "2",
                 "--no_cuda", "--figure", str(text_fig)])
    with Image.open(text_fig) as img:  # the recipe's text, then 2 photos
        assert img.size == (220 + 2 * 160 + 2 * 6, 160)


@pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed (pip install faiss-cpu)")
def test_faiss_agrees_with_exact_search(run, indexed_set, tmp_path, capsys):
    emb = _npz(run, "test")
    ids = [str(i) for i in emb["rec_ids"][:3]]
    layer1 = _layer1(indexed_set)
    recipes = [{"id": i, "title": layer1[i].title, "ingredients": [{"text": t} for t in layer1[i].ingredients],
                "instructions": [{"text": t} for t in layer1[i].instructions]} for i in ids]
    (tmp_path / "three.json").write_text(json.dumps(recipes))
    reader = RecordReader(lmdb_dir(indexed_set["data"], "test"))
    photos = [str(image_path(indexed_set["img"], "test", reader.get(i).images[0])) for i in ids]
    for query, target in ((["--recipe", str(tmp_path / "three.json")], "images"), (["--image", *photos], "recipes")):
        args = ["--run", str(run), *query, "--k", "5", "--no_cuda", "--json"]
        exact = search.main(args)
        capsys.readouterr()
        approx = search.main([*args, "--faiss", "--nprobe", "1000"])  # every list: the exact answer
        recall = float(re.search(r"recall@5 ([0-9.]+) vs exact search", capsys.readouterr().err).group(1))
        # every list searched: the exact answer, up to the near-ties of the recipes (see _assert_same_topk)
        assert recall == 1.0 if target == "images" else recall > 0.95
        assert approx["method"].startswith("faiss")
        for a, e in zip(approx["results"], exact["results"]):
            np.testing.assert_allclose([h["score"] for h in a["results"]], [h["score"] for h in e["results"]],
                                       atol=1e-5)
            if target == "images":  # the photos' scores are well apart: the same order
                assert [h["recipe_id"] for h in a["results"]] == [h["recipe_id"] for h in e["results"]]
        assert search_index_name(run, ckpt_name(exact["checkpoint"]), ["test", "val", "train"], "en",
                                 target=target).is_file()
        search.main([*args, "--faiss"])  # reused, not rebuilt
        assert "faiss: built" not in capsys.readouterr().err


def test_exact_search_chunks_and_faiss_units():
    rng = np.random.default_rng(0)
    matrix = search_index.normalize_rows(rng.standard_normal((103, 8)))
    queries = rng.standard_normal((11, 8)).astype(np.float32)
    scores, idx = search_index.exact_search(matrix, queries, 6, query_batch=4, chunk=7)
    for q in range(11):
        order, sims = _reference_topk(queries[q], matrix, 6)
        assert idx[q].tolist() == order.tolist()
        np.testing.assert_allclose(scores[q], sims, atol=1e-6)
    assert search_index.exact_search(matrix, queries, 500)[1].shape == (11, 103)  # k clipped to N
    assert search_index.default_nlist(20) == 1 and search_index.default_nlist(50_000) == 224
    assert search_index.default_nlist(1_000_000) == 1000
    assert search_index.recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75


# --------------------------------------------------------------------------- data/query.py


def test_stored_row_is_create_lmdbs_row_in_every_language(synthetic_set, tmp_path):
    """Rows cut at a short max_len: truncation, parts and every language as create_lmdb.py stores them."""
    data = tmp_path / "short"
    create_lmdb.main(["--r1m_path", str(synthetic_set), "--data_path", str(data), "--tokenizer", "train",
                      "--vocab_size", "300", "--workers", "1", "--max_len", "24"])
    tokenizer = RecipeTokenizer(data)
    manifest = json.loads((data / "manifest.json").read_text())
    reader = RecordReader(lmdb_dir(data, "val"))
    keys = set(load_keys(data / "val_keys.pkl"))
    checked = 0
    for lang in manifest["languages"][:3]:
        for recipe in iter_layer1(layer1_path(synthetic_set, lang), lang):
            if recipe.id not in keys:
                continue
            record = reader.get(recipe.id)
            row = record.langs.index(parse_language(lang))
            ids, parts = tokenizer.stored_row(QueryRecipe(recipe.id, recipe.title, recipe.ingredients,
                                                          recipe.instructions))
            assert np.array_equal(ids, record.ids[row]) and np.array_equal(parts, record.parts[row]), recipe.id
            checked += 1
    assert checked >= 20
    tokens = tokenizer.tokens([QueryRecipe("a", "Pie", ["1 egg"], ["Bake."]), QueryRecipe("b", "T", [], [])])
    special = manifest["special_ids"]
    assert tokens.dtype == torch.int64 and tokens.shape[1] == int((tokens[0] != 0).sum())  # trimmed
    assert tokens[0, 0] == special["cls"] and tokens[1, int((tokens[1] != 0).sum()) - 1] == special["sep"]


def test_recipe_json_forms(tmp_path):
    one = {"title": "Pie", "ingredients": [{"text": "1 egg"}], "instructions": [{"text": "Bake."}]}
    (tmp_path / "pie.json").write_text(json.dumps(one))
    assert read_recipe_json(tmp_path / "pie.json") == [QueryRecipe("pie", "Pie", ["1 egg"], ["Bake."])]
    many = [one, {**one, "id": "x1", "title_de": "Kuchen"}]
    (tmp_path / "many.json").write_text(json.dumps(many))
    got = read_recipe_json(tmp_path / "many.json", "de")
    assert [r.id for r in got] == ["many_1", "x1"] and [r.title for r in got] == ["Pie", "Kuchen"]
    assert recipe_from_text(" Soup ", "a; b\n\nc", None) == QueryRecipe("query", "Soup", ["a", "b", "c"], [])


def test_photo_exif_orientation(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    upright = Image.fromarray(pixels)
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    upright.rotate(90, expand=True).save(tmp_path / "turned.png", exif=exif)
    assert torch.equal(load_query_image(tmp_path / "turned.png", 32), load_query_image(tmp_path / "upright.png", 32))


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_error_line(run, tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        search.main(["--run", str(run), "--image", str(tmp_path / "nope.jpg"), "--no_cuda"])
    assert str(tmp_path / "nope.jpg") in _error_line(excinfo)
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not a photo")
    with pytest.raises(SystemExit) as excinfo:
        search.main(["--run", str(run), "--image", str(text_file), "--no_cuda"])
    assert "unreadable image file" in _error_line(excinfo) and str(text_file) in _error_line(excinfo)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"title": "Pie", "ingredients": [{"text": "egg"}]}]))
    with pytest.raises(SystemExit) as excinfo:
        search.main(["--run", str(run), "--recipe", str(bad), "--no_cuda"])
    assert f"{bad}: entry 0: 'instructions' must be a list" in _error_line(excinfo)
    empty = tmp_path / "empty_run"
    (empty / "models").mkdir(parents=True)
    for ckpt in (run / "models").glob("model_BEST_REC_*.pth.tar"):
        (empty / "models" / ckpt.name).symlink_to(ckpt)
    with pytest.raises(SystemExit) as excinfo:
        search.main(["--run", str(empty), "--text", "Pie", "--no_cuda"])
    assert f"{empty}: no embedding file foodSpace_vectors_" in _error_line(excinfo)
    assert "python test.py --model_init_path" in _error_line(excinfo)
    with pytest.raises(SystemExit) as excinfo:  # no German embeddings: the default checkpoint has none
        search.main(["--run", str(run), "--text", "Pie", "--language", "de", "--no_cuda"])
    assert "_*_de.npz; make them with: python test.py" in _error_line(excinfo)
    name = next((run / "models").glob("model_BEST_REC_*[0-9].pth.tar")).name
    with pytest.raises(SystemExit) as excinfo:  # a checkpoint by name, a partition without embeddings
        search.main(["--run", str(run), "--text", "Pie", "--checkpoint", name, "--index_parts", "val",
                     "--language", "de", "--no_cuda"])
    assert f"{name[:-8]}_val_de.npz; make it with" in _error_line(excinfo)
    with pytest.raises(SystemExit) as excinfo:
        search.main(["--run", str(run), "--text", "Pie", "--checkpoint", "nope.pth.tar", "--no_cuda"])
    assert "--checkpoint nope.pth.tar: no such file" in _error_line(excinfo)
    with pytest.raises(SystemExit) as excinfo, pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
        search.main(["--run", str(run), "--text", "Pie", "--faiss", "--no_cuda"])
    assert _error_line(excinfo) == "error: --faiss needs the faiss library: pip install faiss-cpu"
    # Through a real process: exit status 1, one line on stderr, no traceback.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "search.py"), "--run", str(run), "--image",
                           str(tmp_path / "missing.jpg")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: missing image file {tmp_path / 'missing.jpg'}"]


@pytest.mark.parametrize("script, doc", [(search, "docs/search.md"), (GAN_test, "docs/synthesis.md"),
                                         (train, "docs/model.md"), (GAN_train, "docs/synthesis.md"),
                                         (test_script, "docs/evaluation.md"), (demo, "docs/pipeline.md"),
                                         (translate_text, "docs/data.md"), (create_lmdb, "docs/data.md")])
def test_help_opens_with_the_usage_and_one_sentence(script, doc):
    """``--help`` starts with at most 5 lines (a short usage, one sentence naming the page); the rest is in docs/."""
    text = script.get_parser().format_help()
    head = re.split(r"\n(?:positional arguments|options|optional arguments):", text)[0].rstrip("\n").splitlines()
    assert len(head) <= 5 and head[0].startswith("usage: ") and doc in " ".join(head[-2:]), head
    assert (ROOT / doc).is_file()


# --------------------------------------------------------------------------- GAN_test.py --recipe


def test_gan_test_recipe_writes_images_and_the_figure(run, tmp_path):
    gan_run = GAN_train.main([*GAN_TINY, "--encoder_dir", str(run)])
    recipes = [{"id": "my pie", "title": "Apple pie", "ingredients": [{"text": "3 apples"}, {"text": "flour"}],
                "instructions": [{"text": "Bake 40 minutes."}]},
               {"title": "Tomato soup", "ingredients": [{"text": "4 tomatoes"}], "instructions": []}]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(recipes))
    out_dir = tmp_path / "gen"
    out = GAN_test.main(["--trained_G_model_path", str(gan_run / "G_last.pth.tar"), "--recipe", str(path),
                         "--num_images", "3", "--nearest", "2", "--noise_mode", "BATCH_RANDOM", "--no_cuda",
                         "--out_dir", str(out_dir)])
    assert [r["id"] for r in out["recipes"]] == ["my pie", "mine_2"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["mine_2", "my_pie", "recipes.png"]
    for entry in out["recipes"]:
        folder = out_dir / entry["folder"]
        arrays = []
        for k in range(3):
            with Image.open(folder / f"generated_{k}.png") as img:
                assert img.size == (128, 128)
                arrays.append(np.asarray(img))
        assert not np.array_equal(arrays[0], arrays[1])  # a noise per image
        assert len(entry["nearest"]) == 2 and entry["nearest"][0]["score"] >= entry["nearest"][1]["score"]
        assert len((folder / "nearest.txt").read_text().splitlines()) == 3
    assert (out_dir / "my_pie" / "recipe.txt").read_text().splitlines()[0] == "Apple pie"
    with Image.open(out_dir / "recipes.png") as fig:  # text, 3 generated, 2 nearest; header + 2 rows
        assert fig.size == (200 + 4 + 5 * (128 + 4), 20 + 2 * (128 + 4))
    # The recipes go through the encoder G was trained with, as search.py embeds them.
    ckpt = torch.load(gan_run / "G_last.pth.tar", weights_only=True)
    assert out["checkpoint"] == str(run / "models" / f"{ckpt['encoder']['ckpt_name']}.pth.tar")
    searcher = RunSearch(run, checkpoint=out["checkpoint"], log=lambda m: None)
    scores, rows = searcher.search(searcher.embed_recipes(read_recipe_json(path)), "images", 2)
    for r, entry in enumerate(out["recipes"]):
        assert [n["recipe_id"] for n in entry["nearest"]] == [str(searcher.index.ids[j]) for j in rows[r]]


@pytest.mark.parametrize("script, flags", [(search, ["--run", "no_such_run", "--text", "Pie"]),
                                           (GAN_test, ["--trained_G_model_path", "no_such_G.pth.tar"])])
def test_batch_size_zero_is_one_error_line(script, flags):
    with pytest.raises(SystemExit) as excinfo:  # checked before any file is read
        script.main([*flags, "--batch_size", "0", "--no_cuda"])
    assert _error_line(excinfo) == "error: --batch_size 0: give at least 1"


def test_an_empty_recipe_is_refused_as_an_empty_text(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps([{"title": "Pie", "ingredients": [], "instructions": []},
                                {"title": " ", "ingredients": [{"text": ""}], "instructions": [{"text": " "}]}]))
    with pytest.raises(SystemExit) as excinfo:  # refused before the run folder is read
        search.main(["--run", str(tmp_path / "no_run"), "--recipe", str(path), "--no_cuda"])
    assert _error_line(excinfo) == (f"error: {path}: entry 1: an empty recipe (no title, ingredient or "
                                    "instruction text); nothing to search with")
    with pytest.raises(SystemExit) as excinfo:
        search.main(["--run", str(tmp_path / "no_run"), "--text", "", "--no_cuda"])
    assert _error_line(excinfo).startswith("error: --text: give the recipe's title")
    path.write_text(json.dumps({"title": "", "ingredients": [{"text": "2 eggs"}], "instructions": []}))
    assert read_recipe_json(path)[0].ingredients == ["2 eggs"]  # any text is enough


def test_a_large_photo_is_checked_once_and_shrunk_while_decoding(run, tmp_path, monkeypatch):
    import warnings

    from PIL import ImageFile

    import data.query

    ramp = np.linspace(0, 255, 1200, dtype=np.uint8)
    big = tmp_path / "big.jpg"
    Image.fromarray(np.stack([np.tile(ramp, (800, 1))] * 3, axis=-1)).save(big, quality=90)  # 1200 x 800
    # Scaled down: Pillow's bomb limit and "large" sit below this photo, as 89 MP does for a 12000 x 12000 one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700 * 700)
    monkeypatch.setattr(data.query, "LARGE_PHOTO_PIXELS", 500 * 500)
    monkeypatch.setattr(data.query, "DRAFT_SIDE", 256)
    decoded, load = [], ImageFile.ImageFile.load

    def counting_load(self):
        if getattr(self, "filename", None) == str(big) and self.tile:  # pixels not decoded yet
            decoded.append(self.size)
        return load(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = search.main(["--run", str(run), "--image", str(big), "--k", "2", "--no_cuda", "--json",
                           "--figure", str(tmp_path / "fig.png")])
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert decoded == [(600, 400)]  # once, at 1/2 scale: both sides still >= DRAFT_SIDE
    photo = load_query_photo(big)
    assert photo.size == (600, 400) and photo.mode == "RGB"
    searcher = RunSearch(run, checkpoint=out["checkpoint"], log=lambda m: None)
    scores, _ = searcher.search(searcher.embed_images([photo]), "recipes", 2)
    np.testing.assert_allclose([h["score"] for h in out["results"][0]["results"]], scores[0], atol=1e-5)


def test_a_closed_pipe_ends_quietly(run):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "search.py"), "--run", str(run), "--text", "Pie",
                             "--k", "20", "--json", "--no_cuda"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    proc.stdout.close()  # as `| head` does once it has read its lines
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_paths_under_the_current_folder_are_printed_relative(run, tmp_path, monkeypatch, capsys):
    from utils.runs import shown

    monkeypatch.chdir(tmp_path)
    assert shown(tmp_path / "a" / "b.png") == os.path.join("a", "b.png")
    assert shown("/elsewhere/x.png") == "/elsewhere/x.png" and shown("rel/x.png") == "rel/x.png"
    assert shown(tmp_path) == str(tmp_path) and shown(str(tmp_path) + "x/y") == str(tmp_path) + "x/y"
    monkeypatch.chdir(run.parent)  # the run folder (recorded with absolute paths) under the current one
    search.main(["--run", str(run), "--text", "Pie", "--k", "2", "--no_cuda", "--figure", str(run / "fig.png")])
    out = capsys.readouterr().out
    model = next(line for line in out.splitlines() if line.startswith("model: "))
    assert model.startswith(f"model: {run.name}/models/model_BEST_REC_"), model
    assert f"figure -> {run.name}/fig.png" in out
    assert str(run.parent) not in out  # the data and the images lie elsewhere: printed as recorded

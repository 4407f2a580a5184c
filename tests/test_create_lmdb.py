"""End-to-end tests of create_lmdb.py on a small synthetic Recipe1M (docs/data.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import create_lmdb
from data import lmdb_build
from data.langs import LANGS
from data.lmdb_format import decode_record, keys_file, lmdb_dir, open_lmdb_readonly
from data.recipe1m import PARTITIONS, load_classes, load_keys, write_keys
from data.synthetic import generate
from data.tokenizer import ChunkEncoder, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MAX_LEN = 48  # short rows: most recipes are truncated
BASE_ARGS = ["--max_len", str(MAX_LEN), "--maxImgs", "2", "--workers", "1"]
DROPPED: dict[str, str] = {}  # reason -> the recipe id dropped for it (filled by the fixture)
BLANKS: dict[str, str] = {}  # "id" -> the recipe given empty and whitespace-only lines (by the fixture)
BLANK_INGRS = [" ", "", "\t \n"]  # put before its ingredients: "" is skipped, the two others kept
BLANK_INSTS = ["", "  "]  # put before its instructions


def _read_lmdb(path: Path) -> dict[bytes, bytes]:
    env = open_lmdb_readonly(path)
    try:
        with env.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def _snapshot(data_path: Path) -> dict:
    """Every output's content: records of the three LMDBs and the bytes of the other files."""
    snap = {f"{p}_lmdb": _read_lmdb(lmdb_dir(data_path, p)) for p in PARTITIONS}
    for path in sorted(data_path.rglob("*")):
        if path.is_file() and "_lmdb" not in path.parent.name and not path.name.startswith("."):
            snap[str(path.relative_to(data_path))] = path.read_bytes()
    return snap


@pytest.fixture(scope="module")
def r1m(tmp_path_factory) -> Path:
    """A synthetic Recipe1M (no images needed here), its train keys extended with recipes to drop."""
    full = tmp_path_factory.mktemp("synthetic")
    generate(full, recipes=70, seed=3, image_size=32, progress=False)
    out = tmp_path_factory.mktemp("r1m")
    for path in full.iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    layer1 = json.loads((out / "layer1.json").read_text(encoding="utf-8"))
    with_images = {e["id"] for e in json.loads((out / "layer2.json").read_text(encoding="utf-8"))}
    train = load_keys(out / "train_keys.pkl")
    # One recipe without an image, one missing from layer1.json (not from the translations), one
    # listed twice.
    DROPPED["no_image"] = next(e["id"] for e in layer1 if e["id"] not in with_images)
    DROPPED["not_in_layer1"] = train[2]
    BLANKS["id"] = train[0]
    entry = next(e for e in layer1 if e["id"] == train[0])
    entry["ingredients"] = [{"text": t} for t in BLANK_INGRS] + entry["ingredients"]
    entry["instructions"] = [{"text": t} for t in BLANK_INSTS] + entry["instructions"]
    (out / "layer1.json").write_text(json.dumps([e for e in layer1 if e["id"] != train[2]]), encoding="utf-8")
    write_keys(out / "train_keys.pkl", [train[0], DROPPED["no_image"], *train[1:], train[3]])
    return out


@pytest.fixture(scope="module")
def built(r1m, tmp_path_factory) -> tuple[Path, dict]:
    data_path = tmp_path_factory.mktemp("built") / "loader_data"
    manifest = create_lmdb.main(["--r1m_path", str(r1m), "--data_path", str(data_path), "--tokenizer", "train",
                                 "--vocab_size", "300", *BASE_ARGS])
    return data_path, manifest


def _reference_texts(title: str, ingredients: list[str], instructions: list[str]) -> list[str]:
    """The reference's three texts, with its own joiners: lines kept when truthy (not stripped)."""
    return [title + ". \n\n ", ". \n ".join(t for t in ingredients if t) + ". \n\n ",
            ". \n ".join(t for t in instructions if t)]


def _expected_rows(tokenizer, entry: dict, lang: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: the reference's row of one recipe, one text at a time."""
    suffix = "" if lang == "en" else f"_{lang}"
    texts = _reference_texts(entry[f"title{suffix}"], [i["text"] for i in entry[f"ingredients{suffix}"]],
                             [i["text"] for i in entry[f"instructions{suffix}"]])
    ids, parts = [tokenizer.cls_token_id], [-1]
    for code, text in zip((1, 2, 3), texts):
        tokens = tokenizer.backend_tokenizer.encode(text.replace("..", "."), add_special_tokens=False).ids
        ids += tokens
        parts += [code] * len(tokens)
    ids, parts = ids[:MAX_LEN], parts[:MAX_LEN]
    pad = MAX_LEN - len(ids)
    return np.array(ids + [0] * pad, dtype=np.int32), np.array(parts + [0] * pad, dtype=np.int8)


def test_part_texts_rules():
    title, ingr, inst = create_lmdb.part_texts("Pie.", ["1 egg.", "", "  ", "flour"], ["Mix..", "", "Bake"])
    # "" skipped, "  " kept; str.replace, as the reference: "1 egg..   . flour" -> "1 egg.   . flour"
    assert (title, ingr, inst) == ("Pie. ", "1 egg.   . flour. ", "Mix.. Bake")
    assert create_lmdb.part_texts("", [], []) == (". ", ". ", "")
    assert create_lmdb.part_texts("T", ["", ""], [" "]) == ("T. ", ". ", " ")


def test_whitespace_only_lines_give_the_reference_tokens():
    from data.tokenizer import SPECIAL_TOKENS, build_tokenizer

    tokenizer = build_tokenizer([*SPECIAL_TOKENS, "Pie", "1", "egg", "flour", "Mix", "Bake", "."])
    encoder = ChunkEncoder(tokenizer)
    title, ingrs, insts = "Pie", ["1 egg", " ", "", "\t", "flour"], ["", "Mix", "\u3000", "Bake."]
    ours = [tokenizer.convert_ids_to_tokens(np.frombuffer(b, dtype=np.int32).tolist())
            for b in encoder(list(create_lmdb.part_texts(title, ingrs, insts)))]
    # Each whitespace-only line adds a "." token; the empty lines add nothing.
    assert ours == [["Pie", "."], ["1", "egg", ".", ".", ".", "flour", "."], ["Mix", ".", ".", "Bake", "."]]
    reference = [tokenizer.convert_ids_to_tokens(tokenizer.backend_tokenizer.encode(
        t.replace("..", "."), add_special_tokens=False).ids) for t in _reference_texts(title, ingrs, insts)]
    assert ours == reference


TRICKY = ["Crème  brûlée.. ", "  lead and trail  ", "tab\tand\nnewline", "a\u00a0b c\x00d e\x1cf",
          "中文混合 text", "[SEP] inside [CLS]x", "x" * 150 + " long", "emoji 🍰, ok...", "", " ", "1/2 cup (sifted)"]


def test_chunk_encoder_equals_whole_text_tokenisation(built):
    from tokenizers import pre_tokenizers

    tokenizer = load_tokenizer(built[0] / "tokenizer")
    expected = [tokenizer.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in TRICKY]
    encoder = ChunkEncoder(tokenizer, max_entries=6)  # a tiny cache: emptied repeatedly
    assert encoder.chunked
    for _ in range(2):  # cold, then warm cache
        got = [np.frombuffer(b, dtype=np.int32).tolist() for b in encoder(TRICKY)]
        assert got == expected
    other = load_tokenizer(built[0] / "tokenizer")
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()  # spaces no longer split alone
    fallback = ChunkEncoder(other)
    assert not fallback.chunked
    assert [np.frombuffer(b, dtype=np.int32).tolist() for b in fallback(TRICKY)] == [
        other.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in TRICKY]


def test_counts_keys_and_dropped(built, r1m):
    data_path, manifest = built
    original = {p: load_keys(r1m / f"{p}_keys.pkl") for p in PARTITIONS}
    layer2_order = [e["id"] for e in json.loads((r1m / "layer2.json").read_text(encoding="utf-8"))]
    listed = set(original["train"]) - set(DROPPED.values())
    expected_train = [rid for rid in layer2_order if rid in listed]
    assert load_keys(keys_file(data_path, "train")) == expected_train
    assert len(expected_train) == len(original["train"]) - 3  # 3 drops, each listed once
    for p in ("val", "test"):  # the synthetic keys are already in layer2.json order
        assert load_keys(keys_file(data_path, p)) == original[p]
    assert manifest["counts"] == {p: len(load_keys(keys_file(data_path, p))) for p in PARTITIONS}
    assert manifest["dropped"] == {"train": {"duplicate": 1, "no_image": 1, "not_in_layer1": 1},
                                   "val": {}, "test": {}}
    assert manifest["empty_partitions"] == {}
    assert manifest["languages"] == list(LANGS)
    assert manifest["special_ids"]["pad"] == 0 and manifest["vocab_size"] == 300
    assert (manifest["max_len"], manifest["max_imgs"], manifest["format_version"]) == (MAX_LEN, 2, 1)
    assert json.loads((data_path / "manifest.json").read_text(encoding="utf-8")) == manifest
    for p in PARTITIONS:
        records = _read_lmdb(lmdb_dir(data_path, p))
        assert sorted(records) == sorted(k.encode() for k in load_keys(keys_file(data_path, p)))
    leftovers = [x.name for x in data_path.iterdir() if x.name.startswith((".tmp_build_", ".old_", ".swap"))]
    assert leftovers == []


def test_records_match_brute_force(built, r1m):
    data_path, _ = built
    tokenizer = load_tokenizer(data_path / "tokenizer")
    files = {lang: {e["id"]: e for e in json.loads((r1m / (
        "layer1.json" if lang == "en" else f"layer1_{lang}.json")).read_text(encoding="utf-8"))} for lang in LANGS}
    layer2 = {e["id"]: [i["id"] for i in e["images"]]
              for e in json.loads((r1m / "layer2.json").read_text(encoding="utf-8"))}
    id2class, _ = load_classes(r1m / "classes1M.pkl")
    truncated = 0
    for p in PARTITIONS:
        for key, value in _read_lmdb(lmdb_dir(data_path, p)).items():
            rid = key.decode()
            record = decode_record(value)
            assert record.langs == list(LANGS)
            assert record.ids.dtype == np.int32 and record.ids.shape == (len(LANGS), MAX_LEN)
            assert record.cls == id2class.get(rid, 0) + 1
            assert record.images == layer2[rid][:2]
            for row, lang in enumerate(LANGS):
                ids, parts = _expected_rows(tokenizer, files[lang][rid], lang)
                np.testing.assert_array_equal(record.ids[row], ids, err_msg=f"{rid} {lang}")
                np.testing.assert_array_equal(record.parts[row], parts, err_msg=f"{rid} {lang}")
                assert tokenizer.unk_token_id not in record.ids[row]
                truncated += bool(ids[-1])
    assert truncated > 0  # the truncation path was exercised
    # The recipe with blank lines: its 2 whitespace-only ingredient lines each added a "." right
    # after the title, where a row built from stripped lines goes on with the first ingredient.
    rid, dot = BLANKS["id"], tokenizer.convert_tokens_to_ids(".")
    p = PARTITIONS[next(i for i, q in enumerate(PARTITIONS) if rid in load_keys(keys_file(data_path, q)))]
    row = decode_record(_read_lmdb(lmdb_dir(data_path, p))[rid.encode()]).ids[0]
    entry = files["en"][rid]
    stripped = {**entry, "ingredients": [i for i in entry["ingredients"] if i["text"].strip()]}
    ids, _ = _expected_rows(tokenizer, stripped, "en")
    title_len = len(tokenizer.backend_tokenizer.encode(entry["title"] + ". ", add_special_tokens=False).ids)
    assert row[1 + title_len:3 + title_len].tolist() == [dot, dot]
    assert row[:3 + title_len].tolist() == [*ids[:1 + title_len].tolist(), dot, dot]
    assert row[3 + title_len:].tolist() == ids[1 + title_len:MAX_LEN - 2].tolist()
    assert any(rid not in id2class for rid in files["en"])  # some recipes take the background class


def test_rerun_is_byte_identical(built, r1m, tmp_path):
    data_path, manifest = built
    again = create_lmdb.main(["--r1m_path", str(r1m), "--data_path", str(tmp_path / "again"),
                              "--tokenizer", "train", "--vocab_size", "300", *BASE_ARGS])
    assert again == manifest
    assert _snapshot(tmp_path / "again") == _snapshot(data_path)


def test_given_tokenizer_and_languages(built, r1m, tmp_path):
    data_path, _ = built
    manifest = create_lmdb.main(["--r1m_path", str(r1m), "--data_path", str(tmp_path / "enfr"), "--tokenizer",
                                 str(data_path / "tokenizer"), "--languages", "fr,0", *BASE_ARGS])
    assert manifest["languages"] == ["en", "fr"]
    assert manifest["tokenizer"] == str(data_path / "tokenizer")
    for p in PARTITIONS:
        full = _read_lmdb(lmdb_dir(data_path, p))
        part = _read_lmdb(lmdb_dir(tmp_path / "enfr", p))
        assert sorted(part) == sorted(full)
        for key, value in part.items():
            a, b = decode_record(value), decode_record(full[key])
            rows = [LANGS.index("en"), LANGS.index("fr")]
            np.testing.assert_array_equal(a.ids, b.ids[rows])
            np.testing.assert_array_equal(a.parts, b.parts[rows])
            assert (a.cls, a.images) == (b.cls, b.images)


def test_incomplete_language_is_skipped_or_refused(r1m, built, tmp_path, capsys):
    data_path, _ = built
    broken = tmp_path / "r1m"
    shutil.copytree(r1m, broken)
    val = load_keys(broken / "val_keys.pkl")
    entries = json.loads((broken / "layer1_de.json").read_text(encoding="utf-8"))
    (broken / "layer1_de.json").write_text(json.dumps([e for e in entries if e["id"] != val[0]]), encoding="utf-8")
    args = ["--r1m_path", str(broken), "--tokenizer", str(data_path / "tokenizer"), *BASE_ARGS]
    manifest = create_lmdb.main([*args, "--data_path", str(tmp_path / "auto")])
    assert manifest["languages"] == [lang for lang in LANGS if lang != "de"]
    assert "layer1_de.json lacks 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        create_lmdb.main([*args, "--data_path", str(tmp_path / "asked"), "--languages", "en,de"])
    assert "layer1_de.json" in str(err.value) and val[0] in str(err.value)
    assert not (tmp_path / "asked" / "manifest.json").exists()


def test_bad_input_stops_with_a_message(r1m, tmp_path):
    broken = tmp_path / "r1m"
    shutil.copytree(r1m, broken)
    (broken / "layer2.json").unlink()
    with pytest.raises(SystemExit, match="^error: .*layer2.json not found"):
        create_lmdb.main(["--r1m_path", str(broken), "--data_path", str(tmp_path / "out"), *BASE_ARGS])
    with pytest.raises(SystemExit, match="--tokenizer train"):
        create_lmdb.main(["--r1m_path", str(r1m), "--data_path", str(tmp_path / "out"),
                          "--tokenizer", "xmrs-tests/no-such-tokenizer", *BASE_ARGS])
    assert not (tmp_path / "out").exists()  # a failed run leaves no folder it made, nor a lock file
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'typo'}.*layer1.json not found"):
        create_lmdb.main(["--r1m_path", str(tmp_path / "typo"), "--data_path", str(tmp_path / "out"), *BASE_ARGS])
    assert not (tmp_path / "out").exists()
    kept = tmp_path / "kept"
    (kept / "mine").mkdir(parents=True)  # a folder that was there stays, with its files
    with pytest.raises(SystemExit, match="layer2.json not found"):
        create_lmdb.main(["--r1m_path", str(broken), "--data_path", str(kept), *BASE_ARGS])
    assert (kept / "mine").is_dir()


def _args(r1m: Path, data_path: Path, tokenizer: Path) -> list[str]:
    return ["--r1m_path", str(r1m), "--data_path", str(data_path), "--tokenizer", str(tokenizer),
            "--max_len", "40", "--maxImgs", "2", "--workers", "1"]


def _crash(r1m: Path, data_path: Path, tokenizer: Path, crash: str) -> None:
    """Run create_lmdb.py in a subprocess that exits abruptly at the point ``crash``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), XMRS_TEST_CRASH=crash)
    cmd = [sys.executable, str(ROOT / "create_lmdb.py"), *_args(r1m, data_path, tokenizer)]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr


def test_killed_run_keeps_previous_output(built, r1m, tmp_path, capsys):
    source, _ = built
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(source / "tokenizer", tokenizer)
    data_path = tmp_path / "loader_data"
    shutil.copytree(source, data_path)  # the previous output (max_len 48)
    before = _snapshot(data_path)

    # Killed while writing records: the build folder is left behind, the output is untouched.
    _crash(r1m, data_path, tokenizer, "records:5")
    assert _snapshot(data_path) == before
    assert any(x.name.startswith(".tmp_build_") for x in data_path.iterdir())

    # Killed in the middle of the swap (after the old outputs moved aside, during the move-in).
    _crash(r1m, data_path, tokenizer, f"swap:{len(lmdb_build.output_names()) + 3}")
    assert (data_path / lmdb_build.JOURNAL).exists() and not (data_path / "manifest.json").exists()
    assert lmdb_build.recover(data_path) is True  # what the next start does first
    assert _snapshot(data_path) == before
    assert not any(x.name.startswith((".tmp_build_", ".old_")) for x in data_path.iterdir())

    # Killed while moving the old outputs aside; the next run recovers, then completes.
    _crash(r1m, data_path, tokenizer, "swap:2")
    capsys.readouterr()
    create_lmdb.main(_args(r1m, data_path, tokenizer))
    assert "rolled back" in capsys.readouterr().err
    create_lmdb.main(_args(r1m, tmp_path / "clean", tokenizer))
    after = _snapshot(data_path)
    assert after == _snapshot(tmp_path / "clean") and after != before
    assert json.loads(after["manifest.json"])["max_len"] == 40
    assert sorted(x.name for x in data_path.iterdir() if x.name.startswith(".")) == [".create_lmdb.lock"]


# --------------------------------------------------------------------------- inputs checked first

def _copy_r1m(r1m: Path, tmp_path: Path) -> Path:
    out = tmp_path / "r1m"
    shutil.copytree(r1m, out)
    return out


def _corrupt(r1m: Path, name: str) -> str:
    """Spoil one input file of ``r1m``; returns the file name the error must name."""
    if name == "classes1M.pkl":
        (r1m / name).write_bytes((r1m / name).read_bytes()[:-7])  # a truncated pickle
    elif name == "val_keys.pkl":
        (r1m / name).write_bytes((r1m / "classes1M.pkl").read_bytes())  # two dicts, not one list
    elif name == "layer2.json":
        text = (r1m / name).read_text(encoding="utf-8")
        (r1m / name).write_text(text[: len(text) // 2], encoding="utf-8")  # cut short mid-file
    elif name == "layer1_fr.json":
        (r1m / name).write_text('[{"id": "x", "title": 3}]', encoding="utf-8")  # not a translated file
    return name


@pytest.mark.parametrize("name", ["classes1M.pkl", "val_keys.pkl", "layer2.json", "layer1_fr.json"])
def test_bad_input_file_stops_before_the_layer1_scan(r1m, built, tmp_path, monkeypatch, name):
    broken = _copy_r1m(r1m, tmp_path)
    spoiled = _corrupt(broken, name)

    def no_scan(*args, **kwargs):
        raise AssertionError("layer1.json was scanned before every input was checked")

    monkeypatch.setattr(create_lmdb, "scan_english", no_scan)
    monkeypatch.setattr(create_lmdb, "scan_language", no_scan)
    with pytest.raises(SystemExit) as err:
        create_lmdb.main(["--r1m_path", str(broken), "--data_path", str(tmp_path / "out"),
                          "--tokenizer", str(built[0] / "tokenizer"), *BASE_ARGS])
    message = str(err.value)
    assert message.startswith("error: ") and "\n" not in message  # one line, through run_main
    assert str(broken / spoiled) in message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_classes_pickle_is_one_line_on_the_command_line(r1m, built, tmp_path):
    broken = _copy_r1m(r1m, tmp_path)
    _corrupt(broken, "classes1M.pkl")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "create_lmdb.py"), "--r1m_path", str(broken), "--data_path",
           str(tmp_path / "out"), "--tokenizer", str(built[0] / "tokenizer"), *BASE_ARGS]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {broken / 'classes1M.pkl'}: object ")
    assert lines[0].endswith("is not a readable pickle (UnpicklingError: pickle data was truncated)")
    assert "layer1.json" not in result.stderr  # no progress bar: the scan never started


# --------------------------------------------------------------------------- refused image ids

def test_image_ids_outside_the_image_folder_are_dropped_when_indexing(r1m, built, tmp_path, capsys):
    broken = _copy_r1m(r1m, tmp_path)
    entries = json.loads((broken / "layer2.json").read_text(encoding="utf-8"))
    val = load_keys(broken / "val_keys.pkl")
    train = [rid for rid in load_keys(broken / "train_keys.pkl")
             if rid not in DROPPED.values() and any(e["id"] == rid for e in entries)]
    by_id = {e["id"]: e for e in entries}
    by_id[val[0]]["images"][0]["id"] = "../../etc/passwd"
    by_id[train[1]]["images"].append({"id": "/etc/passwd", "url": "x"})  # not even one stored
    by_id[train[2]]["images"][0]["id"] = "..\\..\\x.jpg"
    (broken / "layer2.json").write_text(json.dumps(entries), encoding="utf-8")
    write_keys(broken / "val_keys.pkl", [val[0]])  # the val split's only recipe is refused
    capsys.readouterr()
    manifest = create_lmdb.main(["--r1m_path", str(broken), "--data_path", str(tmp_path / "out"),
                                 "--tokenizer", str(built[0] / "tokenizer"), *BASE_ARGS])
    err = capsys.readouterr()
    assert manifest["dropped"]["train"]["bad_image_id"] == 2
    assert manifest["dropped"]["val"] == {"bad_image_id": 1}
    indexed = {rid for p in PARTITIONS for rid in load_keys(keys_file(tmp_path / "out", p))}
    assert indexed.isdisjoint({val[0], train[1], train[2]})
    assert manifest["counts"]["train"] == built[1]["counts"]["train"] - 2
    warning = [line for line in err.err.splitlines() if line.startswith(f"warning: {broken / 'layer2.json'}: ")]
    assert len(warning) == 1 and "3 recipe(s)" in warning[0] and "first 3: " in warning[0]
    for rid, image_id in ((val[0], "'../../etc/passwd'"), (train[1], "'/etc/passwd'"), (train[2], "x.jpg")):
        assert repr(rid) in warning[0] and image_id in warning[0]  # each dropped recipe is named
    # The split left without a recipe is named, with its file, and recorded.
    assert manifest["counts"]["val"] == 0
    assert str(broken / "val_keys.pkl") in manifest["empty_partitions"]["val"]
    assert "bad_image_id 1" in manifest["empty_partitions"]["val"]
    assert any(line.startswith("warning: the val split is empty: ") and "val_keys.pkl" in line
               for line in err.err.splitlines())
    assert "empty splits: val" in err.out


# --------------------------------------------------------------------------- empty splits

def test_empty_splits_are_warned_about_and_recorded(r1m, built, tmp_path, capsys):
    broken = _copy_r1m(r1m, tmp_path)
    write_keys(broken / "val_keys.pkl", [])
    # No test keys file, and no test recipe with an image: the fallback finds nothing.
    test_ids = set(load_keys(broken / "test_keys.pkl"))
    (broken / "test_keys.pkl").unlink()
    layer1 = json.loads((broken / "layer1.json").read_text(encoding="utf-8"))
    test_ids |= {e["id"] for e in layer1 if e["partition"] == "test"}
    entries = json.loads((broken / "layer2.json").read_text(encoding="utf-8"))
    (broken / "layer2.json").write_text(json.dumps([e for e in entries if e["id"] not in test_ids]),
                                        encoding="utf-8")
    capsys.readouterr()
    manifest = create_lmdb.main(["--r1m_path", str(broken), "--data_path", str(tmp_path / "out"),
                                 "--tokenizer", str(built[0] / "tokenizer"), *BASE_ARGS])
    out, err = capsys.readouterr()
    assert manifest["counts"]["val"] == manifest["counts"]["test"] == 0 and manifest["counts"]["train"] > 0
    assert manifest["empty_partitions"] == {
        "val": f"{broken / 'val_keys.pkl'} lists no recipe",
        "test": f"{broken / 'layer1.json'} has no test recipe with an image in {broken / 'layer2.json'} "
                f"(dropped: no_image {manifest['dropped']['test']['no_image']})",
    }
    lines = err.splitlines()
    assert f"warning: the val split will be empty: {broken / 'val_keys.pkl'} lists no recipe" in lines
    assert f"warning: the test split is empty: {manifest['empty_partitions']['test']}" in lines
    assert sum(line.startswith("warning: the ") for line in lines) == 2, err  # one line each, once
    assert "empty splits: val, test" in out
    for p in ("val", "test"):  # written, and empty
        assert _read_lmdb(lmdb_dir(tmp_path / "out", p)) == {} and load_keys(keys_file(tmp_path / "out", p)) == []
    assert json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8")) == manifest


def test_help_opens_with_usage_and_one_sentence(monkeypatch):
    """``--help`` starts with at most 5 lines (usage, one sentence) before the options; the rest is in docs/."""
    monkeypatch.setenv("COLUMNS", "80")
    head = create_lmdb.get_parser().format_help().split("\n\noptions:")[0]
    assert len(head.splitlines()) <= 5, head

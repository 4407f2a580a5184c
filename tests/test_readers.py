"""Tests of the Recipe1M readers (data/recipe1m.py) and the restricted unpickler (data/safe_pickle.py)."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
from pathlib import Path, PurePosixPath

import pytest

from data import recipe1m as r1m
from data.safe_pickle import PickleFormatError, UnsafePickleError, load_all, loads_all

# --------------------------------------------------------------------------- helpers


def _recipe(rid: str, partition: str | None = "train", suffix: str = "", n: int = 2) -> dict:
    entry = {
        "id": rid,
        f"title{suffix}": f"Crème brûlée {rid}",
        f"ingredients{suffix}": [{"text": f"{k} egg yolks"} for k in range(n)] + [{"text": ""}],
        f"instructions{suffix}": [{"text": "Whisk."}, {"text": ""}, {"text": "Bake at 150°C."}],
    }
    if partition is not None:
        entry["partition"] = partition
        entry["url"] = f"http://example.com/{rid}"
    return entry


def _write_json(path: Path, obj, **kwargs) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False, **kwargs), encoding="utf-8")
    return path


def _py2_str(text: bytes) -> bytes:
    """SHORT_BINSTRING, as Python 2 pickles a (byte) str at protocol 2, then a memo put."""
    return b"U" + bytes([len(text)]) + text


def _py2_proto2_dict(items: list[tuple[bytes | int, bytes | int]]) -> bytes:
    """A Python 2 protocol-2 pickle of a plain dict (opcodes as cPickle wrote them)."""
    out = b"\x80\x02}q\x00("
    for key, value in items:
        for part in (key, value):
            out += b"K" + bytes([part]) if isinstance(part, int) else _py2_str(part)
    return out + b"u."


class _Exploit:
    """Pickles to a call of os.system (what a hostile .pkl could contain)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CountingReader:
    """A binary file wrapper that records every read."""

    def __init__(self, handle) -> None:
        self.handle, self.name, self.sizes = handle, handle.name, []

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.sizes.append(size)
        self.bytes_read = getattr(self, "bytes_read", 0) + len(data)
        return data


# --------------------------------------------------------------------------- iter_json_array


@pytest.mark.parametrize("indent", [None, 4])
@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
def test_iter_json_array_indented_and_compact(tmp_path, indent, chunk_size):
    items = [{"id": f"{i:010x}", "text": "é" * (i % 5) + "x" * i, "nums": [i, 0.5, None, True]}
             for i in range(60)]
    path = _write_json(tmp_path / "a.json", items, indent=indent,
                       separators=(",", ":") if indent is None else None)
    out = list(r1m.iter_json_array(path, chunk_size=chunk_size))
    assert len(out) == 60 and out == items  # count, order and values


def test_iter_json_array_accepts_bom_and_empty_array(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf  [ {\"a\": 1} ]\n")
    assert list(r1m.iter_json_array(path)) == [{"a": 1}]
    for chunk_size in (1, 2, 1 << 20):
        path.write_bytes(b"\xef\xbb\xbf[{\"a\": 1}, x]")  # offsets count the BOM's 3 bytes
        with pytest.raises(r1m.Recipe1MError, match="element 1 at byte 14"):
            list(r1m.iter_json_array(path, chunk_size=chunk_size))
    path.write_text(" [ ] ")
    assert list(r1m.iter_json_array(path)) == []


def test_iter_json_array_streams(tmp_path):
    items = [{"id": f"{i:010x}", "pad": "p" * 200} for i in range(20000)]
    path = _write_json(tmp_path / "big.json", items, indent=1)
    size = path.stat().st_size
    assert size > 4_000_000
    with open(path, "rb") as raw:
        reader = _CountingReader(raw)
        stream = r1m.iter_json_array(reader, chunk_size=4096)
        assert next(stream) == items[0]
        # Only the first chunk (plus possibly one more) was read, never the whole file.
        assert reader.bytes_read <= 2 * 4096
        assert all(size_asked == 4096 for size_asked in reader.sizes)
        assert sum(1 for _ in stream) == len(items) - 1
        assert reader.bytes_read == size


@pytest.mark.parametrize("text, index, offset, words", [
    (b'[{"a": 1}, {"a": 2,}, {"a": 3}]', 1, 19, "Expecting property name"),
    (b'[{"a": 1} {"a": 2}]', 1, 10, "expected ','"),
    (b'[{"a": 1}, {"a": "\xc3\xa9\xc3\xa9" x}]', 1, 24, "Expecting ','"),
    (b'[{"a": 1}, {"a": 2}', 2, 19, "ends inside the array"),
    (b'[{"a": 1}, ', 1, 11, "ends inside the array"),
])
@pytest.mark.parametrize("chunk_size", [3, 1 << 20])
def test_iter_json_array_invalid_json_names_element_and_byte(tmp_path, text, index, offset, words, chunk_size):
    path = tmp_path / "bad.json"
    path.write_bytes(text)
    assert text[offset:offset + 1] in (b"}", b"{", b"x", b"")  # the offsets point at the culprit
    with pytest.raises(r1m.Recipe1MError) as err:
        list(r1m.iter_json_array(path, chunk_size=chunk_size))
    message = str(err.value)
    assert str(path) in message and f"element {index}" in message
    assert f"at byte {offset}" in message and words in message


@pytest.mark.parametrize("text, words", [
    (b'{"a": 1}', "top-level JSON array"),
    (b"", "top-level JSON array"),
    (b'[{"a": 1}, 5]', "element 1 at byte 11 is not an object"),
    (b'[{"a": 1}] [', "after the array"),
    (b'[{"a": "\xff"}]', "not UTF-8 at byte 8"),
])
def test_iter_json_array_rejects_non_arrays(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_bytes(text)
    with pytest.raises(r1m.Recipe1MError, match=words) as err:
        list(r1m.iter_json_array(path, chunk_size=4))
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- layer1


def test_iter_layer1_round_trip(tmp_path):
    entries = [_recipe("0000a1b2c3", "train"), _recipe("ef3dc0de11", "val", n=0),
               _recipe("ffff000011", "test")]
    path = _write_json(tmp_path / "layer1.json", entries, indent=2)
    recipes = list(r1m.iter_layer1(path))
    assert [r.id for r in recipes] == ["0000a1b2c3", "ef3dc0de11", "ffff000011"]
    first = recipes[0]
    assert isinstance(first, r1m.Recipe)
    assert first.partition == "train" and first.url == "http://example.com/0000a1b2c3"
    assert first.title == "Crème brûlée 0000a1b2c3"
    assert first.ingredients == ["0 egg yolks", "1 egg yolks", ""]  # empty text kept
    assert first.instructions == ["Whisk.", "", "Bake at 150°C."]
    assert recipes[1].ingredients == [""] and recipes[1].partition == "val"


def test_iter_layer1_translated_file(tmp_path):
    entries = [_recipe("0000a1b2c3", None, suffix="_de"), _recipe("ef3dc0de11", "val", suffix="_de")]
    entries[1]["title"] = "English title, ignored"
    path = _write_json(tmp_path / "layer1_de.json", entries)
    for lang in ("de", 3, "3"):
        recipes = list(r1m.iter_layer1(path, lang=lang))
        assert [(r.id, r.partition, r.url) for r in recipes] == [
            ("0000a1b2c3", None, None), ("ef3dc0de11", "val", "http://example.com/ef3dc0de11")]
        assert recipes[1].title == "Crème brûlée ef3dc0de11"
        assert recipes[0].ingredients == ["0 egg yolks", "1 egg yolks", ""]
    # The English reader refuses it: its fields are missing.
    with pytest.raises(r1m.Recipe1MError, match="'title' must be a string"):
        list(r1m.iter_layer1(path))


def test_layer1_path():
    assert r1m.layer1_path("data/Recipe1M", "en") == Path("data/Recipe1M/layer1.json")
    assert r1m.layer1_path("/r1m", "ru-en") == Path("/r1m/layer1_ru-en.json")
    assert r1m.layer1_path("/r1m", 5) == Path("/r1m/layer1_fr.json")


def _no_id(e):
    del e["id"]


@pytest.mark.parametrize("mutate, words, names_id", [
    (_no_id, "'id' must be a non-empty string", False),
    (lambda e: e.update(id=12), "'id' must be a non-empty string", False),
    (lambda e: e.update(title=["a"]), "'title' must be a string", True),
    (lambda e: e.update(ingredients=["flour"]), r"'ingredients'\[0\] must be", True),
    (lambda e: e.update(ingredients={"text": "x"}), "'ingredients' must be a list", True),
    (lambda e: e.update(instructions=[{"text": "ok"}, {"text": 3}]), r"'instructions'\[1\] must be", True),
    (lambda e: e.update(partition="dev"), "'partition' must be one of train, val, test", True),
    (lambda e: e.pop("partition"), "'partition' is missing", True),
    (lambda e: e.update(url=5), "'url' must be a string", True),
])
def test_iter_layer1_malformed_entry(tmp_path, mutate, words, names_id):
    entries = [_recipe("0000a1b2c3"), _recipe("ef3dc0de11"), _recipe("ffff000011")]
    mutate(entries[1])
    path = _write_json(tmp_path / "layer1.json", entries)
    stream = r1m.iter_layer1(path)
    assert next(stream).id == "0000a1b2c3"  # entries before the bad one are fine
    with pytest.raises(r1m.Recipe1MError, match=words) as err:
        next(stream)
    message = str(err.value)
    assert message.startswith(f"{path}: entry 1")
    assert ("'ef3dc0de11'" in message) == names_id


def test_iter_layer1_invalid_json(tmp_path):
    path = tmp_path / "layer1.json"
    good = json.dumps(_recipe("0000a1b2c3"))
    path.write_text(f"[{good}, {good[:-1]}, ]")
    with pytest.raises(r1m.Recipe1MError) as err:
        list(r1m.iter_layer1(path))
    assert f"{path}: invalid JSON in element 1 at byte" in str(err.value)


# --------------------------------------------------------------------------- layer2, det_ingrs


def test_load_layer2_round_trip(tmp_path):
    entries = [{"id": "ffff000011", "images": [{"id": "ab12cd34ef.jpg", "url": "u1"},
                                               {"id": "0123456789.jpg", "url": "u2"}]},
               {"id": "0000a1b2c3", "images": [{"id": "ef3dc0de11.jpg", "url": "u3"}]},
               {"id": "aaaa000011", "images": []}]
    path = _write_json(tmp_path / "layer2.json", entries, indent=1)
    layer2 = r1m.load_layer2(path)
    assert list(layer2) == ["ffff000011", "0000a1b2c3", "aaaa000011"]  # file order
    assert layer2["ffff000011"] == ["ab12cd34ef.jpg", "0123456789.jpg"]
    assert layer2["0000a1b2c3"] == ["ef3dc0de11.jpg"] and layer2["aaaa000011"] == []


@pytest.mark.parametrize("bad, words", [
    ({"id": "0000a1b2c3", "images": [{"url": "u"}]}, r"'images'\[0\] must be"),
    ({"id": "0000a1b2c3", "images": "x.jpg"}, "'images' must be a list"),
    ({"images": []}, "'id' must be"),
    ({"id": "ffff000011", "images": []}, "duplicate recipe id"),
])
def test_load_layer2_malformed(tmp_path, bad, words):
    path = _write_json(tmp_path / "layer2.json", [{"id": "ffff000011", "images": []}, bad])
    with pytest.raises(r1m.Recipe1MError, match=words) as err:
        r1m.load_layer2(path)
    assert str(err.value).startswith(f"{path}: entry 1")


def test_load_det_ingrs_keeps_valid_only(tmp_path):
    entries = [{"id": "0000a1b2c3", "valid": [True, False, True],
                "ingredients": [{"text": "flour"}, {"text": "1 cup"}, {"text": "sugar"}]},
               {"id": "ef3dc0de11", "valid": [False], "ingredients": [{"text": "x"}]}]
    path = _write_json(tmp_path / "det_ingrs.json", entries)
    assert r1m.load_det_ingrs(path) == {"0000a1b2c3": ["flour", "sugar"], "ef3dc0de11": []}


@pytest.mark.parametrize("bad, words", [
    ({"id": "ef3dc0de11", "valid": [True], "ingredients": [{"text": "a"}, {"text": "b"}]}, "'valid' must be"),
    ({"id": "ef3dc0de11", "valid": [1], "ingredients": [{"text": "a"}]}, "'valid' must be"),
    ({"id": "ef3dc0de11", "valid": [True], "ingredients": ["a"]}, r"'ingredients'\[0\]"),
])
def test_load_det_ingrs_malformed(tmp_path, bad, words):
    path = _write_json(tmp_path / "det_ingrs.json", [bad])
    with pytest.raises(r1m.Recipe1MError, match=words) as err:
        r1m.load_det_ingrs(path)
    assert str(err.value).startswith(f"{path}: entry 0 (id 'ef3dc0de11')")


# --------------------------------------------------------------------------- pickles


def test_classes_round_trip(tmp_path):
    id2class = {"0000a1b2c3": 0, "ef3dc0de11": 1047, "ffff000011": 5}
    class2name = {0: "background", 5: "crème brûlée", 1047: "apple pie"}
    path = tmp_path / "sub" / "classes1M.pkl"
    r1m.write_classes(path, id2class, class2name)
    assert len(load_all(path)) == 2  # two objects, one after the other
    loaded = r1m.load_classes(path)
    assert loaded == (id2class, class2name)
    assert list(loaded[0]) == list(id2class)
    assert [p.name for p in path.parent.iterdir()] == ["classes1M.pkl"]  # no temporary left


def test_classes_python2_protocol2(tmp_path):
    path = tmp_path / "classes1M.pkl"
    path.write_bytes(_py2_proto2_dict([(b"0000a1b2c3", 3), (b"ef3dc0de11", 0)])
                     + _py2_proto2_dict([(0, b"background"), (3, b"caf\xe9 au lait")]))
    id2class, class2name = r1m.load_classes(path)
    assert id2class == {"0000a1b2c3": 3, "ef3dc0de11": 0}
    assert all(type(k) is str for k in id2class)
    assert class2name == {0: "background", 3: "café au lait"}  # latin1 semantics


def test_classes_bytes_keys_are_decoded(tmp_path):
    path = tmp_path / "classes1M.pkl"
    with open(path, "wb") as handle:  # Python 3 protocol 2: bytes go through _codecs.encode
        pickle.dump({b"0000a1b2c3": 2}, handle, protocol=2)
        pickle.dump({2: b"pie"}, handle, protocol=2)
    assert r1m.load_classes(path) == ({"0000a1b2c3": 2}, {2: "pie"})


@pytest.mark.parametrize("objects, words", [
    ([["0000a1b2c3"]], "expected two pickled dicts .* found 1 object\\(s\\): list"),
    ([{"a": 1}, {1: "x"}, {}], "found 3 object"),
    ([{"0000a1b2c3": "3"}, {3: "x"}], "first dict, entry 0 \\(id '0000a1b2c3'\\)"),
    ([{"0000a1b2c3": -1}, {3: "x"}], "first dict, entry 0"),
    ([{"0000a1b2c3": 3}, {"3": "x"}], "second dict, entry 0"),
    ([{"0000a1b2c3": 3}, {3: 7}], "second dict, entry 0"),
])
def test_load_classes_wrong_file(tmp_path, objects, words):
    path = tmp_path / "classes1M.pkl"
    with open(path, "wb") as handle:
        for obj in objects:
            pickle.dump(obj, handle, protocol=4)
    with pytest.raises(r1m.Recipe1MError, match=words) as err:
        r1m.load_classes(path)
    assert str(err.value).startswith(str(path))


def test_write_classes_refuses_non_plain(tmp_path):
    path = tmp_path / "classes1M.pkl"
    with pytest.raises(TypeError, match="class name"):
        r1m.write_classes(path, {"a": 1}, {1: b"x"})
    with pytest.raises(TypeError):
        r1m.write_classes(path, {"a": 1.5}, {1: "x"})
    assert not path.exists()


def test_keys_round_trip_and_atomic_failure(tmp_path):
    path = tmp_path / "test_keys.pkl"
    ids = ["ffff000011", "0000a1b2c3", "ef3dc0de11"]
    r1m.write_keys(path, iter(ids))
    assert r1m.load_keys(path) == ids
    with pytest.raises(TypeError, match="entry 1"):
        r1m.write_keys(path, ["a", 2])
    assert r1m.load_keys(path) == ids  # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_keys.pkl"]


def test_keys_python2_and_bytes(tmp_path):
    path = tmp_path / "train_keys.pkl"
    path.write_bytes(b"(lp0\nS'0000a1b2c3'\np1\naS'ef3dc0de11'\np2\na.")  # Python 2, protocol 0
    assert r1m.load_keys(path) == ["0000a1b2c3", "ef3dc0de11"]
    for protocol in (0, 2, 5):
        path.write_bytes(pickle.dumps([b"0000a1b2c3", "ef3dc0de11"], protocol=protocol))
        assert r1m.load_keys(path) == ["0000a1b2c3", "ef3dc0de11"]


@pytest.mark.parametrize("objects, words", [
    ([{"a": 1}], "one pickled list of recipe ids, found 1 object\\(s\\): dict"),
    ([["a"], ["b"]], "found 2 object"),
    ([], "found 0 object"),
    ([["a", 3]], "entry 1: recipe id must be a string"),
])
def test_load_keys_wrong_file(tmp_path, objects, words):
    path = tmp_path / "val_keys.pkl"
    path.write_bytes(b"".join(pickle.dumps(obj, protocol=4) for obj in objects))
    with pytest.raises(r1m.Recipe1MError, match=words) as err:
        r1m.load_keys(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_pickle_calling_os_system_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(f"touch {marker}"), protocol=protocol)
    path = tmp_path / "test_keys.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError) as err:
        load_all(path)
    assert str(path) in str(err.value) and f"{os.system.__module__}.system" in str(err.value)
    with pytest.raises(r1m.Recipe1MError, match="system"):
        r1m.load_keys(path)
    # After a harmless first object too (load_all reads on past the first pickle).
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2) + payload)
    with pytest.raises(r1m.Recipe1MError, match="system"):
        r1m.load_classes(path)
    assert not marker.exists()


def test_exploit_payload_is_live(tmp_path):
    # The payload used above really runs a command under the standard unpickler, so the
    # refusal test above would fail if the restricted unpickler let it through.
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Exploit(f"touch {marker}"), protocol=2))  # noqa: S301 - our own data
    assert marker.exists()


def test_safe_pickle_allows_plain_data_only():
    plain = [{"k": (1, 2.5, None, True)}, {1, 2}, frozenset({"a"}), complex(1, -2), b"\x00\xff",
             bytearray(b"ab"), "é"]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert loads_all(pickle.dumps(plain, protocol=protocol)) == [plain]
    refused = [collections.OrderedDict(a=1), PurePosixPath("a"), os.getcwd, io.BytesIO]
    for obj in refused:
        with pytest.raises(UnsafePickleError, match="refusing to load global"):
            loads_all(pickle.dumps(obj, protocol=2), source="x.pkl")
    # _codecs.encode is admitted only as pickle uses it for bytes (str + latin1).
    sneaky = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x06\x00\x00\x00base64\x86R."
    with pytest.raises(UnsafePickleError, match="x.pkl: refusing _codecs.encode"):
        loads_all(sneaky, source="x.pkl")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        loads_all(b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.")


def test_load_all_several_objects_empty_and_truncated(tmp_path):
    path = tmp_path / "many.pkl"
    objects = [{"a": 1}, [1, 2], "three", {4: "four"}]
    path.write_bytes(b"".join(pickle.dumps(o, protocol=p) for o, p in zip(objects, (0, 2, 4, 5))))
    assert load_all(path) == objects
    path.write_bytes(b"")
    assert load_all(path) == []
    path.write_bytes(pickle.dumps({"a": 1}) + pickle.dumps(list(range(100)))[:-20])
    with pytest.raises(PickleFormatError, match=f"{path}: object 1 is not a readable pickle"):
        load_all(path)
    path.write_text('{"json": "not a pickle"}')
    with pytest.raises(PickleFormatError, match="object 0"):
        load_all(path)


# --------------------------------------------------------------------------- image_path


def test_image_path():
    assert r1m.image_path("/imgs", "val", "ef3dc0de11.jpg") == Path("/imgs/val/e/f/3/d/ef3dc0de11.jpg")
    assert r1m.image_path(Path("x"), "train", "0123ab.jpg") == Path("x/train/0/1/2/3/0123ab.jpg")
    for partition, image_id in [("dev", "ef3dc0de11.jpg"), ("val", "../../etc.jpg"),
                                ("val", "ab/cd.jpg"), ("val", "ab")]:
        with pytest.raises(ValueError):
            r1m.image_path("/imgs", partition, image_id)


@pytest.mark.parametrize("image_id, words", [
    ("../../etc/passwd", "path separator"), ("/etc/passwd", "path separator"), ("..\\..\\x.jpg", "path separator"),
    ("ab/cd.jpg", "path separator"), ("..abcdef.jpg", "starts with '.'"), (".hidden.jpg", "starts with '.'"),
    ("abc", "shorter than 4"), ("", "shorter than 4"), (None, "not a string"),
])
def test_image_id_problem_refuses_what_could_leave_the_image_root(image_id, words):
    assert words in r1m.image_id_problem(image_id)
    with pytest.raises(ValueError, match="invalid image id"):
        r1m.image_path("/imgs", "val", image_id)


def test_image_id_problem_accepts_recipe1m_ids():
    for image_id in ("ef3dc0de11.jpg", "0123ab.jpg", "abcd"):
        assert r1m.image_id_problem(image_id) is None
        path = r1m.image_path("/imgs", "test", image_id)
        assert path.parent.parent.parent.parent.parent == Path("/imgs/test") and path.name == image_id
    # ".." inside a file name is no path component: the file stays under the root.
    path = r1m.image_path("/imgs", "test", "ab..cd.jpg")
    assert os.path.normpath(path) == str(path) and path.is_relative_to("/imgs/test") and path.name == "ab..cd.jpg"


def test_reader_errors_are_input_errors():
    from utils.errors import InputError

    assert issubclass(r1m.Recipe1MError, InputError) and issubclass(r1m.Recipe1MError, ValueError)

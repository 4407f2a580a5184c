"""Readers and writers for the Recipe1M files (docs/data.md#recipe1m-on-disk).

Every reader stops with :class:`Recipe1MError` naming the file and the entry (index, and the
recipe id when known) on malformed input. The JSON files are streamed element by element
(:func:`iter_json_array`), so the 1.3 GB ``layer1.json`` is never held whole in memory; the
dict-returning loaders keep only the few strings callers need per recipe.
"""

from __future__ import annotations

import codecs
import json
import operator
import os
import pickle
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from data import safe_pickle
from data.langs import layer1_name, parse_language
from utils.errors import InputError
from utils.io import atomic_write

__all__ = [
    "PARTITIONS", "Recipe1MError", "Recipe", "iter_json_array", "iter_layer1", "layer1_path",
    "load_layer2", "load_det_ingrs", "load_classes", "load_keys", "write_keys", "write_classes",
    "image_id_problem", "image_path",
]

PARTITIONS: tuple[str, ...] = ("train", "val", "test")
_CHUNK = 1 << 20  # bytes read at a time by iter_json_array
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace
# A decode error this far before the end of the buffer cannot be caused by the buffer ending
# mid-element (the decoder looks at most a few characters past the failing position).
_TAIL_MARGIN = 64


class Recipe1MError(InputError):
    """Malformed Recipe1M input; the message names the file and the entry."""


class Recipe(NamedTuple):
    """One entry of ``layer1.json`` (or ``layer1_<lang>.json``), texts as in the file."""

    id: str
    partition: str | None  # train / val / test; None when a translated file omits it
    title: str
    ingredients: list[str]  # raw texts, empty ones kept (callers skip them consistently)
    instructions: list[str]
    url: str | None


def _entry(path: Any, index: int, rid: Any = None) -> str:
    """``<file>: entry <index> (id <rid>)`` for messages."""
    where = f"{path}: entry {index}"
    return f"{where} (id {rid!r})" if isinstance(rid, str) else where


def iter_json_array(path: str | os.PathLike | IO[bytes], chunk_size: int = _CHUNK) -> Iterator[dict]:
    """Stream the objects of a top-level JSON array, one at a time.

    The file is read in chunks of ``chunk_size`` bytes and each element is parsed with
    ``json.JSONDecoder.raw_decode``; memory stays at about one chunk plus the largest element,
    whatever the file size. Works on indented and compact files alike (UTF-8, optional BOM).

    Args:
        path: a file path, or a binary file object (read from its current position).
        chunk_size: bytes read at a time.

    Yields:
        Each element, in file order.

    Raises:
        Recipe1MError: invalid JSON (with the element index and byte offset), a top level that
            is not an array, an element that is not an object, or data after the array.
    """
    if hasattr(path, "read"):
        yield from _iter_array(path, getattr(path, "name", repr(path)), chunk_size)
        return
    with open(path, "rb") as handle:
        yield from _iter_array(handle, os.fspath(path), chunk_size)


def _iter_array(handle: IO[bytes], name: str, chunk_size: int) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, base, eof = "", 0, 0, False  # base: byte offset of buf[0] in the file
    read_total = 0  # bytes read so far

    def byte_offset(char_pos: int) -> int:
        head = buf[:char_pos]
        return base + (len(head) if head.isascii() else len(head.encode("utf-8")))

    def fill() -> None:
        # Drop the consumed prefix, then append one decoded chunk.
        nonlocal buf, pos, base, eof, read_total
        base = byte_offset(pos)
        pending = len(utf8.getstate()[0])  # bytes of a character split across chunks
        data = handle.read(chunk_size)
        eof = not data
        try:
            text = utf8.decode(data, final=eof)
        except UnicodeDecodeError as err:
            raise Recipe1MError(f"{name}: not UTF-8 at byte {read_total - pending + err.start}: "
                                f"{err.reason}") from None
        read_total += len(data)
        buf, pos = buf[pos:] + text, 0

    def skip_ws() -> str:
        # Returns the next non-space character ("" at end of file), leaving pos on it.
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()
            if pos < len(buf) or eof:
                return buf[pos] if pos < len(buf) else ""
            fill()

    def fail(index: int, char_pos: int, msg: str) -> Recipe1MError:
        return Recipe1MError(f"{name}: invalid JSON in element {index} at byte {byte_offset(char_pos)}: {msg}")

    while not buf and not eof:
        fill()
    if buf.startswith("\ufeff"):
        pos = 1  # skip a UTF-8 byte order mark (it still counts 3 bytes in offsets)
    if skip_ws() != "[":
        raise Recipe1MError(f"{name}: expected a top-level JSON array ('[') at byte {byte_offset(pos)}")
    pos += 1
    index = 0
    while True:
        char = skip_ws()
        if char == "]":
            pos += 1
            if skip_ws():
                raise Recipe1MError(f"{name}: unexpected data after the array at byte {byte_offset(pos)}")
            return
        if index:
            if char != ",":
                raise fail(index, pos, "expected ',' or ']' between elements"
                           if char else "file ends inside the array")
            pos += 1
            char = skip_ws()
        if not char:
            raise fail(index, pos, "file ends inside the array")
        while True:
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:
                near_end = err.pos >= len(buf) - _TAIL_MARGIN or err.msg.startswith("Unterminated string")
                if eof or not near_end:
                    raise fail(index, err.pos, err.msg) from None
                fill()
                continue
            if end == len(buf) and not eof:
                fill()  # a number or literal might continue in the next chunk
                continue
            break
        if not isinstance(obj, dict):
            raise Recipe1MError(f"{name}: element {index} at byte {byte_offset(pos)} is not an object "
                                f"(got {type(obj).__name__})")
        pos = end
        yield obj
        index += 1


def text_list(entry: dict, field: str, where: str, error: type[Exception] | None = None) -> list[str]:
    """``entry[field]`` as a list of texts; it must be a list of ``{"text": str}``.

    Args:
        where: the start of the message (file and entry); error: the class raised (Recipe1MError).
    """
    error = error or Recipe1MError
    items = entry.get(field)
    if not isinstance(items, list):
        raise error(f"{where}: '{field}' must be a list of {{\"text\": str}}, "
                    f"got {'nothing' if items is None else type(items).__name__}")
    texts = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise error(f"{where}: '{field}'[{k}] must be {{\"text\": str}}, got {item!r:.80}")
        texts.append(item["text"])
    return texts


def _text_list(path: Any, index: int, rid: str, entry: dict, field: str) -> list[str]:
    return text_list(entry, field, _entry(path, index, rid))


def _recipe_id(path: Any, index: int, entry: dict) -> str:
    rid = entry.get("id")
    if not isinstance(rid, str) or not rid:
        raise Recipe1MError(f"{_entry(path, index)}: 'id' must be a non-empty string, got {rid!r:.80}")
    return rid


def iter_layer1(path: str | os.PathLike, lang: str = "en") -> Iterator[Recipe]:
    """Stream the recipes of ``layer1.json`` or a translated ``layer1_<lang>.json``.

    For ``lang != "en"`` the texts come from ``title_<lang>``, ``ingredients_<lang>`` and
    ``instructions_<lang>``, and ``partition`` / ``url`` may be missing (then ``None``). Texts
    are returned as in the file, empty ones included. Memory: one recipe at a time (plus the
    reader's chunk).

    Args:
        path: the layer1 file.
        lang: a language code or number (``data.langs.parse_language``).

    Yields:
        One :class:`Recipe` per entry, in file order.

    Raises:
        Recipe1MError: an entry without a string id, a field of the wrong type, a partition
            other than train/val/test, or invalid JSON.
    """
    lang = parse_language(lang)
    suffix = "" if lang == "en" else f"_{lang}"
    title_key, ingr_key, inst_key = (f"{f}{suffix}" for f in ("title", "ingredients", "instructions"))
    for index, entry in enumerate(iter_json_array(path)):
        rid = _recipe_id(path, index, entry)
        title = entry.get(title_key)
        if not isinstance(title, str):
            raise Recipe1MError(f"{_entry(path, index, rid)}: '{title_key}' must be a string, "
                                f"got {type(title).__name__}")
        partition = entry.get("partition")
        if partition is None and lang == "en":
            raise Recipe1MError(f"{_entry(path, index, rid)}: 'partition' is missing")
        if partition is not None and partition not in PARTITIONS:
            raise Recipe1MError(f"{_entry(path, index, rid)}: 'partition' must be one of "
                                f"{', '.join(PARTITIONS)}, got {partition!r:.80}")
        url = entry.get("url")
        if url is not None and not isinstance(url, str):
            raise Recipe1MError(f"{_entry(path, index, rid)}: 'url' must be a string, got {type(url).__name__}")
        yield Recipe(rid, partition, title, _text_list(path, index, rid, entry, ingr_key),
                     _text_list(path, index, rid, entry, inst_key), url)


def layer1_path(r1m_path: str | os.PathLike, lang: str = "en") -> Path:
    """``<r1m_path>/layer1.json`` for English, ``<r1m_path>/layer1_<lang>.json`` otherwise."""
    return Path(r1m_path) / layer1_name(lang)


def _load_id_map(path: str | os.PathLike, values) -> dict[str, list[str]]:
    """Stream ``path`` into ``{id: values(index, rid, entry)}``, refusing duplicate ids."""
    out: dict[str, list[str]] = {}
    for index, entry in enumerate(iter_json_array(path)):
        rid = _recipe_id(path, index, entry)
        if rid in out:
            raise Recipe1MError(f"{_entry(path, index, rid)}: duplicate recipe id")
        out[rid] = values(index, rid, entry)
    return out


def load_layer2(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read ``layer2.json``: recipe id -> its image ids (``'<10hex>.jpg'``), both in file order.

    Memory: the ids only (urls are dropped), about 100 MB for the full 402k-recipe file.

    Raises:
        Recipe1MError: an entry without a string id, ``images`` not a list of ``{"id": str}``,
            a duplicate recipe id, or invalid JSON.
    """
    def images(index: int, rid: str, entry: dict) -> list[str]:
        items = entry.get("images")
        if not isinstance(items, list):
            raise Recipe1MError(f"{_entry(path, index, rid)}: 'images' must be a list, got {type(items).__name__}")
        ids = []
        for k, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
                raise Recipe1MError(f"{_entry(path, index, rid)}: 'images'[{k}] must be "
                                    f"{{\"id\": str, ...}}, got {item!r:.80}")
            ids.append(item["id"])
        return ids

    return _load_id_map(path, images)


def load_det_ingrs(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read ``det_ingrs.json``: recipe id -> cleaned ingredient names whose ``valid`` is true.

    Memory: the kept names only, a few hundred MB for the full 1M-recipe file.

    Raises:
        Recipe1MError: an entry without a string id, ``valid`` not a list of booleans as long as
            ``ingredients``, an ingredient not ``{"text": str}``, a duplicate id, or invalid JSON.
    """
    def valid_names(index: int, rid: str, entry: dict) -> list[str]:
        names = _text_list(path, index, rid, entry, "ingredients")
        valid = entry.get("valid")
        if (not isinstance(valid, list) or len(valid) != len(names)
                or not all(isinstance(v, bool) for v in valid)):
            raise Recipe1MError(f"{_entry(path, index, rid)}: 'valid' must be a list of {len(names)} "
                                f"booleans (one per ingredient), got {valid!r:.80}")
        return [name for name, ok in zip(names, valid) if ok]

    return _load_id_map(path, valid_names)


def _as_str(value: Any) -> Any:
    """Decode bytes (Python 3 pickles of Python 2 data); leave everything else as is."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    return value


def _load_pickles(path: str | os.PathLike) -> list:
    try:
        return safe_pickle.load_all(path)
    except (safe_pickle.UnsafePickleError, safe_pickle.PickleFormatError) as err:
        raise Recipe1MError(str(err)) from None


def load_classes(path: str | os.PathLike) -> tuple[dict[str, int], dict[int, str]]:
    """Read ``classes1M.pkl`` with the restricted unpickler.

    The file holds two pickled dicts: recipe id -> class index (0 = background) and class
    index -> class name. Memory: the two dicts (about 150 MB for the full file).

    Returns:
        ``(id2class, class2name)``; bytes keys or names are decoded to ``str``.

    Raises:
        Recipe1MError: not two dicts of those types (e.g. a keys file given by mistake), a
            negative class, a pickle referencing code, or a corrupt file.
    """
    objects = _load_pickles(path)
    kinds = ", ".join(type(o).__name__ for o in objects) or "nothing"
    if len(objects) != 2 or not all(isinstance(o, dict) for o in objects):
        raise Recipe1MError(f"{path}: expected two pickled dicts (recipe id -> class, class -> name) "
                            f"as in classes1M.pkl, found {len(objects)} object(s): {kinds}")
    id2class: dict[str, int] = {}
    for index, (rid, cls) in enumerate(objects[0].items()):
        rid = _as_str(rid)
        if not isinstance(rid, str) or type(cls) is not int or cls < 0:
            raise Recipe1MError(f"{path}: first dict, entry {index} (id {rid!r:.40}): expected "
                                f"recipe id str -> class int >= 0, got class {cls!r:.40}")
        id2class[rid] = cls
    class2name: dict[int, str] = {}
    for index, (cls, name) in enumerate(objects[1].items()):
        name = _as_str(name)
        if type(cls) is not int or cls < 0 or not isinstance(name, str):
            raise Recipe1MError(f"{path}: second dict, entry {index} (class {cls!r:.40}): expected "
                                f"class int >= 0 -> name str, got {name!r:.40}")
        class2name[cls] = name
    return id2class, class2name


def load_keys(path: str | os.PathLike) -> list[str]:
    """Read a ``{split}_keys.pkl``: one pickled list of recipe ids (bytes are decoded).

    Raises:
        Recipe1MError: not exactly one list (or tuple) of strings, or an unsafe/corrupt pickle.
    """
    objects = _load_pickles(path)
    if len(objects) != 1 or not isinstance(objects[0], (list, tuple)):
        kinds = ", ".join(type(o).__name__ for o in objects) or "nothing"
        raise Recipe1MError(f"{path}: expected one pickled list of recipe ids, found "
                            f"{len(objects)} object(s): {kinds}")
    keys = [_as_str(k) for k in objects[0]]
    for index, key in enumerate(keys):
        if not isinstance(key, str):
            raise Recipe1MError(f"{path}: entry {index}: recipe id must be a string, got {key!r:.80}")
    return keys


def write_keys(path: str | os.PathLike, ids: Iterable[str]) -> None:
    """Write ``ids`` as one plain pickle (protocol 4) of a list of str, atomically."""
    ids = list(ids)
    for index, rid in enumerate(ids):
        if not isinstance(rid, str):
            raise TypeError(f"write_keys({path}): entry {index} is {type(rid).__name__}, expected str")
    with atomic_write(path, "wb") as handle:
        pickle.dump(ids, handle, protocol=4)


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} {value!r:.40} is {type(value).__name__}, expected str")
    return value


def write_classes(path: str | os.PathLike, id2class: dict[str, int], class2name: dict[int, str]) -> None:
    """Write ``classes1M.pkl``: two plain pickles (protocol 4), one after the other, atomically."""
    # Plain types only (numpy ints become int), so that the safe unpickler can read the file back.
    try:
        id2class = {_check_str(k, "recipe id"): operator.index(v) for k, v in id2class.items()}
        class2name = {operator.index(k): _check_str(v, "class name") for k, v in class2name.items()}
    except TypeError as err:
        raise TypeError(f"write_classes({path}): {err}") from None
    with atomic_write(path, "wb") as handle:
        pickle.dump(id2class, handle, protocol=4)
        pickle.dump(class2name, handle, protocol=4)


def image_id_problem(image_id: Any) -> str | None:
    """Why ``image_id`` cannot name an image file under the image root, or None when it can.

    The rule of :func:`image_path`: a string of at least 4 characters (its first four are the
    four nested folders) that is a plain file name: no path separator (``/`` or ``\\``) and not
    starting with ``.`` (so neither ``..`` nor a hidden name). Such an id always resolves inside
    ``<img_root>/<partition>/``. create_lmdb.py refuses recipes whose ids break it when indexing.
    """
    if not isinstance(image_id, str):
        return f"not a string ({type(image_id).__name__})"
    if len(image_id) < 4:
        return "shorter than 4 characters"
    if "/" in image_id or "\\" in image_id:
        return "holds a path separator"
    if image_id.startswith("."):
        return "starts with '.'"
    return None


def image_path(img_root: str | os.PathLike, partition: str, image_id: str) -> Path:
    """``<img_root>/<partition>/<c1>/<c2>/<c3>/<c4>/<image_id>`` (c1..c4: the id's first characters).

    Raises:
        ValueError: an unknown partition, or an image id that :func:`image_id_problem` refuses
            (too short, holding a path separator, starting with ``.``: it could escape ``img_root``).
    """
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; expected one of {', '.join(PARTITIONS)}")
    if image_id_problem(image_id) is not None:
        raise ValueError(f"invalid image id {image_id!r}: expected a file name like 'ef3dc0de11.jpg'")
    return Path(img_root, partition, *image_id[:4], image_id)

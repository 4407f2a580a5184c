"""A restricted unpickler for Recipe1M's ``.pkl`` files (docs/data.md#recipe1m-on-disk).

``classes1M.pkl`` and ``{train,val,test}_keys.pkl`` come from the dataset's distributors, so
reading them must never execute code. Plain containers (dict, list, tuple), strings, bytes,
numbers, booleans and ``None`` have their own pickle opcodes and need no globals; a pickle may
reach anything else only through ``find_class`` (GLOBAL / STACK_GLOBAL / EXT opcodes), which here
admits a tiny explicit allow-list and refuses everything else with :class:`UnsafePickleError`.

Allowed globals (in every spelling the pickle protocols use):

* ``builtins.set``, ``builtins.frozenset``, ``builtins.complex``, ``builtins.bytearray``:
  protocols 0-2 rebuild these by calling the type on plain data, which has no side effect.
* ``_codecs.encode``: protocols 0-2 written by Python 3 store ``bytes`` as
  ``_codecs.encode(text, "latin1")``; it is replaced by a function that only accepts a ``str``
  and the ``latin1`` codec, so no other codec can be reached through it.

Python 2 pickles (Recipe1M's originals) are read with ``encoding="latin1"``, so Python 2 ``str``
objects come out as ``str`` (byte values 0-255 map one to one to code points).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

__all__ = ["UnsafePickleError", "PickleFormatError", "SafeUnpickler", "load_all", "loads_all"]


class UnsafePickleError(ValueError):
    """A pickle references a global outside the allow-list (it could run code)."""


class PickleFormatError(ValueError):
    """A file that is not a readable pickle (truncated, corrupt, or another format)."""


def _latin1_encode(obj: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only performs what pickle needs for ``bytes``."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise UnsafePickleError(f"refusing _codecs.encode on {type(obj).__name__} with codec "
                                f"{encoding!r} (only str with latin1 is allowed)")
    return obj.encode("latin1", "strict")


# (module, name) -> object. Python 2 and protocol 0-2 pickles spell the builtins module
# "__builtin__"; the default find_class maps it via _compat_pickle, which an override bypasses,
# so both spellings are listed explicitly.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _module in ("builtins", "__builtin__"):
    for _name, _obj in (("set", set), ("frozenset", frozenset), ("complex", complex),
                        ("bytearray", bytearray)):
        _ALLOWED[(_module, _name)] = _obj
_ALLOWED[("_codecs", "encode")] = _latin1_encode
del _module, _name, _obj


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`_ALLOWED`.

    Args:
        file: a binary file object positioned at the start of a pickle.
        source: the name used in error messages (usually the file path).
    """

    def __init__(self, file: Any, source: str) -> None:
        # latin1: Python 2 str -> str without decoding errors (Recipe1M's pickles come from Python 2).
        super().__init__(file, encoding="latin1", errors="strict")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name} from the pickle "
                f"(only plain containers, strings and numbers are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing a persistent id in the pickle")


def _load_stream(handle: io.BufferedIOBase, source: str) -> list:
    """Read every pickle in ``handle`` one after another until end of file."""
    objects: list = []
    while True:
        # peek() does not consume; the C unpickler only consumes the bytes of one pickle, so
        # after load() the file sits right after its STOP opcode.
        if not handle.peek(1)[:1]:
            break
        try:
            objects.append(SafeUnpickler(handle, source).load())
        except UnsafePickleError as err:
            if str(err).startswith(f"{source}: "):
                raise
            raise UnsafePickleError(f"{source}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, OverflowError, RecursionError) as err:
            raise PickleFormatError(
                f"{source}: object {len(objects)} is not a readable pickle "
                f"({type(err).__name__}: {err})"
            ) from None
    return objects


def load_all(path: str | os.PathLike) -> list:
    """Load every object pickled one after another in ``path`` with :class:`SafeUnpickler`.

    ``classes1M.pkl`` holds two objects; a keys file holds one. Memory: the loaded objects
    only (the file is read through a buffered stream, never whole).

    Args:
        path: the pickle file.

    Returns:
        The objects in file order (empty for an empty file).

    Raises:
        UnsafePickleError: the pickle references a global outside the allow-list; the message
            names the file and the global (e.g. ``posix.system``). Nothing has been executed.
        PickleFormatError: the file is truncated or not a pickle.
        FileNotFoundError: ``path`` does not exist.
    """
    with open(path, "rb") as handle:
        return _load_stream(handle, os.fspath(path))


def loads_all(data: bytes, source: str = "<bytes>") -> list:
    """Like :func:`load_all` for pickles held in memory; ``source`` names them in messages."""
    return _load_stream(io.BufferedReader(io.BytesIO(data)), source)

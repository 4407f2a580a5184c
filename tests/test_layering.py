"""Each package imports only downward: ``utils`` <- ``models``, ``utils`` <- ``data``; scripts compose them.

``utils/`` imports neither ``models`` nor ``data``; ``models/`` imports no ``data``; ``data/`` imports
no ``models``. Only the top-level scripts and ``bench/`` import both. Every import counts, also one
inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"utils": {"models", "data"}, "models": {"data"}, "data": {"models"}}


def imported_packages(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every import in ``source``, a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # relative, within this package
                found.append((node.lineno, package))
            elif node.level > 1:  # relative, above it: the module (or the imported names) is a package
                found += [(node.lineno, top.split(".")[0]) for top in
                          ([node.module] if node.module else [alias.name for alias in node.names])]
            else:
                found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(source: str, package: str, name: str) -> list[str]:
    """``name:line: <package> imports <other>`` for each import the layering rule forbids."""
    return [f"{name}:{line}: {package} imports {top}" for line, top in imported_packages(source, package)
            if top in FORBIDDEN.get(package, ())]


def test_packages_import_only_downward():
    found = []
    for package in FORBIDDEN:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += violations(path.read_text(encoding="utf-8"), package, str(path.relative_to(ROOT)))
    assert not found, "layering violated (utils <- models, utils <- data; scripts compose):\n" + "\n".join(found)


@pytest.mark.parametrize("package, source, expected", [
    ("utils", "import os\nfrom utils.io import atomic_write\n", []),
    ("utils", "import models.gan\n", ["x.py:1: utils imports models"]),
    ("utils", "def f():\n    from data.recipe1m import load_keys\n", ["x.py:2: utils imports data"]),
    ("models", "from data import lmdb_format\nfrom utils.checkpoint import PlainConfig\n",
     ["x.py:1: models imports data"]),
    ("data", "import numpy as np\nif True:\n    import models\n", ["x.py:3: data imports models"]),
    ("data", "from models.gan import Generator as G, to_imagenet\n", ["x.py:1: data imports models"]),
    ("models", "from . import gan\nfrom .gan import Generator\n", []),
    ("models", "from .. import data\n", ["x.py:1: models imports data"]),
    ("data", "import dataclasses\nfrom dataclasses import dataclass\n", []),
])
def test_the_checker_catches_violations(package, source, expected):
    assert violations(source, package, "x.py") == expected

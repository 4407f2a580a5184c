"""Each package imports only downward: ``utils`` <- ``models``, ``data`` <- ``pipeline``; scripts are leaves.

``utils/`` imports neither ``models`` nor ``data``; ``models/`` imports no ``data``; ``data/`` imports
no ``models``; ``pipeline/`` (code several scripts share that needs models and data together) may
import all three, and none of them imports ``pipeline``. No package imports a top-level script, and
no top-level script imports another (what two scripts share lives in a package; demo.py runs the
scripts as subprocesses, which is no import). The top-level scripts, ``pipeline/`` and ``bench/``
compose the packages. Every import counts, also one inside a function (a lazy import is still a
dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = frozenset(path.stem for path in ROOT.glob("*.py"))  # translate_text, create_lmdb, train, test, ...
FORBIDDEN = {package: others | SCRIPTS for package, others in {
    "utils": {"models", "data", "pipeline"},
    "models": {"data", "pipeline"},
    "data": {"models", "pipeline"},
    "pipeline": set(),
}.items()}


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


def script_violations(source: str, script: str) -> list[str]:
    """``<script>.py:line: imports the script <other>.py`` for each import of another top-level script."""
    return [f"{script}.py:{line}: imports the script {top}.py" for line, top in imported_packages(source, "")
            if top in SCRIPTS and top != script]


def test_packages_import_only_downward():
    found = []
    for package in FORBIDDEN:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += violations(path.read_text(encoding="utf-8"), package, str(path.relative_to(ROOT)))
    assert not found, ("layering violated (utils <- models, utils <- data, all three <- pipeline; no package "
                       "imports a script):\n" + "\n".join(found))


def test_scripts_are_leaves():
    assert {"translate_text", "create_lmdb", "train", "test", "GAN_train", "GAN_test", "search", "demo"} <= SCRIPTS
    found = []
    for script in sorted(SCRIPTS):
        found += script_violations((ROOT / f"{script}.py").read_text(encoding="utf-8"), script)
    assert not found, "a script imports a script (move what they share into a package):\n" + "\n".join(found)


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
    ("utils", "from pipeline.search import RunSearch\n", ["x.py:1: utils imports pipeline"]),
    ("models", "from pipeline import search\n", ["x.py:1: models imports pipeline"]),
    ("data", "def f():\n    import pipeline.search\n", ["x.py:2: data imports pipeline"]),
    ("pipeline", "from models.foodspace import load_foodspace\nfrom data.query import RecipeTokenizer\n"
                 "from utils import lineage\nfrom . import search\n", []),
    ("pipeline", "from search import read_queries\n", ["x.py:1: pipeline imports search"]),
    ("utils", "import numpy\ndef f():\n    import train\n", ["x.py:3: utils imports train"]),
])
def test_the_checker_catches_violations(package, source, expected):
    assert violations(source, package, "x.py") == expected


@pytest.mark.parametrize("script, source, expected", [
    ("GAN_test", "from search import RunSearch, parse_parts\n", ["GAN_test.py:1: imports the script search.py"]),
    ("demo", "import sys\ndef f():\n    import train as t\n", ["demo.py:3: imports the script train.py"]),
    ("search", "import GAN_test, os\n", ["search.py:1: imports the script GAN_test.py"]),
    ("GAN_test", "from pipeline.search import RunSearch\nfrom utils.search_index import parse_parts\n", []),
    ("demo", "import subprocess, sys\nsubprocess.run([sys.executable, 'train.py'])\n", []),  # runs, not imports
    ("search", "import search_tools\nfrom testing import x\n", []),  # names that only start like a script's
])
def test_the_script_checker_catches_imports_of_scripts(script, source, expected):
    assert script_violations(source, script) == expected

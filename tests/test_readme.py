"""The README's command lines against the scripts' parsers, so that the README cannot drift.

Every command quoted in README.md (fenced ``bash`` / ``sh`` / plain blocks, and inline code that
starts with ``python`` or ``torchrun``) is extracted; for ``python X.py ...``, ``python -m mod ...``
and ``torchrun ... X.py ...`` each flag it writes must be an option string of that script's
``get_parser()``. A script or module that is not in the checkout (another engineer's, not written
yet; or a tool such as ``pytest``) is skipped; one that exists but lacks a flag is a failure.
Placeholders (``<run>``), positional arguments and values are not checked.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3"}
FENCE = re.compile(r"^\s*```(\S*)")
INLINE = re.compile(r"`([^`\n]+)`")


@dataclass
class Command:
    line: int  # 1-based line of the README where the command starts
    text: str  # as written, continuation lines joined
    tokens: list[str]


def readme_commands(text: str) -> list[Command]:
    """The command lines of a README: fenced shell blocks, and inline ``python`` / ``torchrun`` code."""
    out: list[Command] = []
    lines = text.splitlines()
    in_block, shell, pending, start = False, False, "", 0
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence:
            if in_block:
                in_block, pending = False, ""
            else:
                in_block, shell = True, fence.group(1).lower() in SHELL_BLOCKS
            continue
        if in_block:
            if not shell:
                continue
            stripped = line.strip()
            if not pending:
                start = number
                stripped = stripped[2:] if stripped.startswith("$ ") else stripped
            if stripped.endswith("\\"):  # a continuation: join with the next line
                pending += stripped[:-1].rstrip() + " "
                continue
            command, pending = pending + stripped, ""
            _add(out, start, command, inline=False)
        else:
            for span in INLINE.findall(line):
                _add(out, number, span.strip(), inline=True)
    return out


def _add(out: list[Command], line: int, command: str, inline: bool) -> None:
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:  # unbalanced quotes: not a command line
        return
    if not tokens:
        return
    first = tokens[0]
    if first in PYTHONS or first == "torchrun" or (first == "bash" and not inline):
        out.append(Command(line, command, tokens))


def target(command: Command) -> tuple[str, str, list[str]] | None:
    """``(kind, name, args)``: kind ``script`` (a path) or ``module``; None when there is nothing to check."""
    tokens = command.tokens
    if tokens[0] in PYTHONS:
        if len(tokens) >= 3 and tokens[1] == "-m":
            return "module", tokens[2], tokens[3:]
        if len(tokens) >= 2 and tokens[1].endswith(".py"):
            return "script", tokens[1], tokens[2:]
        return None
    if tokens[0] == "torchrun":
        for k, token in enumerate(tokens[1:], 1):  # torchrun's own options come before the script
            if token.endswith(".py") and not token.startswith("-"):
                return "script", token, tokens[k + 1:]
        return None
    return None  # bash: no flags to check


def _module_file(name: str, root: Path) -> Path | None:
    base = root / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__main__.py"):
        if path.is_file():
            return path
    return None


def option_strings(kind: str, name: str, root: Path = ROOT) -> set[str] | None:
    """The option strings of that script's ``get_parser()``; None when it is not in the checkout.

    Raises:
        AttributeError: the script exists but has no ``get_parser``.
    """
    if kind == "module":
        if _module_file(name, root) is None:
            return None
        module = importlib.import_module(name)
    else:
        path = (root / name).resolve()
        if not path.is_file():
            return None
        # Loaded from its file under its own name (``test.py`` is not the standard library's ``test``).
        name = f"readme_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    if not callable(getattr(module, "get_parser", None)):
        raise AttributeError(f"{name} has no get_parser()")
    parser = module.get_parser()
    return {option for action in parser._actions for option in action.option_strings}


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def check_commands(text: str, root: Path = ROOT) -> list[str]:
    """One line per flag of a README command that its script's parser does not define."""
    problems: list[str] = []
    cache: dict[tuple[str, str], set[str] | None] = {}
    for command in readme_commands(text):
        found = target(command)
        if found is None:
            continue
        kind, name, args = found
        if (kind, name) not in cache:
            try:
                cache[kind, name] = option_strings(kind, name, root)
            except AttributeError:
                problems.append(f"line {command.line}: {name} has no get_parser(): {command.text}")
                cache[kind, name] = None
                continue
        options = cache[kind, name]
        if options is None:
            continue  # not in this checkout
        for token in args:
            if token == "--":
                break
            if token.startswith("-") and len(token) > 1 and not _is_number(token):
                flag = token.split("=", 1)[0]
                if flag not in options:
                    problems.append(f"line {command.line}: {name} has no flag {flag}: {command.text}")
    return problems


# --------------------------------------------------------------------------- tests

def test_readme_commands_use_flags_the_scripts_have():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert check_commands(text) == []
    # The checker did look at the pipeline's commands.
    names = {found[1] for found in map(target, readme_commands(text)) if found}
    assert {"create_lmdb.py", "train.py", "test.py", "GAN_train.py", "GAN_test.py", "translate_text.py",
            "data.synthetic"} <= names


@pytest.mark.parametrize("page", ["docs/search.md", "docs/translation.md", "docs/pipeline.md", "docs/synthesis.md",
                                  "bench/README.md"])
def test_docs_commands_use_flags_the_scripts_have(page):
    """The commands moved out of the README into docs/ and bench/ cannot drift either."""
    assert check_commands((ROOT / page).read_text(encoding="utf-8")) == []


SNIPPET = r"""
Some text with `python create_lmdb.py --r1m_path data/Recipe1M --inline_bogus 1` inline.

```bash
python create_lmdb.py --r1m_path data/Recipe1M \
    --data_path data/loader_data --made_up_flag 3   # a comment --not_a_flag
$ python test.py --model_init_path 'runs/<run>/models/model_BEST_REC_*.pth.tar' --medr=1000
torchrun --nproc_per_node 4 --standalone train.py --data_path <data> --bogus_train
python -m data.synthetic --out DIR --recipes 10 --no_such_option
python -m pytest -q --whatever
python no_such_script_here.py --anything
python bench/eval.py --memory --memory_n 1000 --medr -1
bash .ci/run --flags-are-not-checked
```

```python
python create_lmdb.py --ignored_in_a_python_block
```
"""


def test_checker_finds_made_up_flags():
    commands = readme_commands(SNIPPET)
    assert [c.line for c in commands] == [2, 5, 7, 8, 9, 10, 11, 12, 13]
    assert commands[1].tokens[-2:] == ["--made_up_flag", "3"]  # continuation joined, comment dropped
    assert commands[2].tokens[0] == "python" and "runs/<run>/models/model_BEST_REC_*.pth.tar" in commands[2].tokens
    assert check_commands(SNIPPET) == [
        "line 2: create_lmdb.py has no flag --inline_bogus: "
        "python create_lmdb.py --r1m_path data/Recipe1M --inline_bogus 1",
        "line 5: create_lmdb.py has no flag --made_up_flag: python create_lmdb.py --r1m_path data/Recipe1M "
        "--data_path data/loader_data --made_up_flag 3   # a comment --not_a_flag",
        "line 8: train.py has no flag --bogus_train: "
        "torchrun --nproc_per_node 4 --standalone train.py --data_path <data> --bogus_train",
        "line 9: data.synthetic has no flag --no_such_option: "
        "python -m data.synthetic --out DIR --recipes 10 --no_such_option",
    ]


def test_a_script_without_get_parser_is_reported(tmp_path):
    (tmp_path / "tool.py").write_text("def main():\n    pass\n", encoding="utf-8")
    problems = check_commands("```bash\npython tool.py --x\n```\n", root=tmp_path)
    assert problems == ["line 2: tool.py has no get_parser(): python tool.py --x"]

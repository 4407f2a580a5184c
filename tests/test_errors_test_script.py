"""test.py answers every bad input with one line ``error: ...`` naming the file, before any work.

The checkpoint and ``--embeddings`` cases run test.py as a command (``sys.executable test.py``) and
check the exit status (1), that stderr is exactly one line starting with ``error:`` and naming the
file, and that no traceback is printed. Those commands are started together when the module
starts (a few at a time) and run while the in-process cases (``test_script.main``, whose
``SystemExit`` carries the line) train and embed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_MODEL

import train
from data.lmdb_format import keys_file
from data.recipe1m import write_keys
from utils.checkpoint import checkpoint_state, save_checkpoint
from utils.embeddings import EmbeddingsError, load_embeddings, save_embeddings

# "test" is also the name of Python's own regression-test package: load the script by path.
_spec = importlib.util.spec_from_file_location("xmrs_test_script_errors", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
ROWS, DIM = 8, 4
EMB_COMMANDS = ["folder", "text", "npy", "missing_keys", "shape", "dtype", "count", "duplicates", "pickled"]
EMB_IN_PROCESS = ["missing", "shape_pair", "ids_dtype"]  # the same checks, without a process each


class Evil:
    """Pickles as ``os.system(<command>)``: a checkpoint that would run a command when unpickled."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "test.py", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *names) -> str:
    """Exit status 1, one ``error:`` line on stderr naming each of ``names``, no traceback."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for name in names:
        assert str(name) in lines[0]
    return lines[0]


def assert_exit_line(err: pytest.ExceptionInfo, *names) -> str:
    """The in-process form: ``SystemExit("error: ...")`` (status 1, the line on stderr), one line."""
    line = str(err.value.code)
    assert line.startswith("error: ") and "\n" not in line, line
    for name in names:
        assert str(name) in line
    return line


# --------------------------------------------------------------------------- inputs


def good_arrays(rows: int = ROWS) -> dict:
    rng = np.random.default_rng(0)
    return {"img_embeds": rng.standard_normal((rows, DIM)).astype(np.float32),
            "rec_embeds": rng.standard_normal((rows, DIM)).astype(np.float32),
            "rec_ids": np.asarray([f"{i:010x}" for i in range(rows)], dtype="<U10")}


def embedding_inputs(root: Path) -> dict[str, tuple[Path, str]]:
    """``{case: (file, words the error line must hold)}``: one malformed --embeddings file each."""
    root.mkdir()
    good = good_arrays()
    cases = {"missing": (root / "absent.npz", "no such file"),
             "folder": (root / "folder.npz", "not a file"),
             "text": (root / "text.npz", "a text file"),
             "npy": (root / "single.npy", "a single .npy array"),
             "missing_keys": (root / "keys.npz", "array(s) rec_ids missing"),
             "shape": (root / "shape.npz", "img_embeds has shape (8,), expected (recipes, dim)"),
             "shape_pair": (root / "pair.npz", "img_embeds (8, 4) and rec_embeds (8, 3) differ in shape"),
             "dtype": (root / "dtype.npz", "rec_embeds has dtype int64, expected float32"),
             "ids_dtype": (root / "ids_dtype.npz", "rec_ids has dtype int64, expected strings"),
             "count": (root / "count.npz", "5 rec_ids for 8 embedding rows"),
             "duplicates": (root / "dup.npz", "rec_ids lists 1 recipe id(s) more than once, e.g. '0000000003' 2 times"),
             "pickled": (root / "pickled.npz", "array rec_ids holds pickled Python objects")}
    cases["folder"][0].mkdir()
    cases["text"][0].write_text("img_embeds,rec_embeds,rec_ids\n0.1,0.2,abc\n")
    np.save(cases["npy"][0], good["img_embeds"])
    np.savez(cases["missing_keys"][0], img_embeds=good["img_embeds"], rec_embeds=good["rec_embeds"])
    np.savez(cases["shape"][0], **{**good, "img_embeds": good["img_embeds"][:, 0]})
    np.savez(cases["shape_pair"][0], **{**good, "rec_embeds": good["rec_embeds"][:, :3]})
    np.savez(cases["dtype"][0], **{**good, "rec_embeds": np.ones((ROWS, DIM), np.int64)})
    np.savez(cases["ids_dtype"][0], **{**good, "rec_ids": np.arange(ROWS)})
    np.savez(cases["count"][0], **{**good, "rec_ids": good["rec_ids"][:5]})
    dup = good["rec_ids"].copy()
    dup[5] = dup[3]
    np.savez(cases["duplicates"][0], **{**good, "rec_ids": dup})
    np.savez(cases["pickled"][0], **{**good, "rec_ids": np.asarray([{"id": str(i)} for i in range(ROWS)], object)})
    return cases


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The command-line cases that need no trained run, started at once (4 at a time)."""
    root = tmp_path_factory.mktemp("cli")
    marker = root / "PWNED"
    evil = root / "evil" / "models" / "model.pth.tar"
    evil.parent.mkdir(parents=True)
    torch.save({"format": 1, "kind": "foodspace", "opts": Evil(f"touch {marker}")}, evil)
    assert not marker.exists()
    commands: dict[str, tuple] = {
        "ckpt_missing": (("--model_init_path", root / "nowhere" / "model.pth.tar"), root / "nowhere"),
        "ckpt_malicious": (("--model_init_path", evil), evil)}
    expected = {"ckpt_missing": "checkpoint not found",
                "ckpt_malicious": "refused by torch.load(weights_only=True): it holds posix.system"}
    for case, (path, words) in embedding_inputs(root / "emb").items():
        if case in EMB_IN_PROCESS:
            continue
        commands[f"emb_{case}"] = (("--embeddings", path), path)
        expected[f"emb_{case}"] = words
    pool = ThreadPoolExecutor(max_workers=4)
    futures: dict[str, Future] = {case: pool.submit(run_cli, *args) for case, (args, _) in commands.items()}
    yield {case: (futures[case], commands[case][1], expected[case]) for case in commands}, marker
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def trained_run(indexed_set, tmp_path_factory, launched):
    runs = tmp_path_factory.mktemp("runs")
    return train.main([*TINY_MODEL, "--data_path", str(indexed_set["data"]), "--img_path", str(indexed_set["img"]),
                       "--runs_dir", str(runs), "--batch_size", "8", "--workers", "0", "--epochs", "1",
                       "--max_iters", "1", "--medr", "20", "--projector_every", "0"])


@pytest.fixture
def fresh_run(trained_run, tmp_path) -> Path:
    """A copy of the run's latest checkpoint in a run folder of its own (to see what test.py writes)."""
    ckpt = tmp_path / "20240101-000000__train" / "models" / "model.pth.tar"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(trained_run / "models" / "model.pth.tar", ckpt)
    return ckpt


def written(ckpt: Path) -> list[str]:
    """What test.py has written into the run folder of ``ckpt`` (nothing, when it stopped in time)."""
    run = ckpt.parent.parent
    return sorted(p.name for p in run.rglob("*") if p.is_file() and p != ckpt)


def result(launched, case: str):
    cases, _ = launched
    future, path, words = cases[case]
    return future.result(timeout=600), path, words


# --------------------------------------------------------------------------- in process: kind, data, flags


def test_not_a_foodspace_checkpoint(fresh_run):
    save_checkpoint(checkpoint_state("image_encoder", arch={}, model={}), fresh_run)
    with pytest.raises(SystemExit) as err:
        test_script.main(["--model_init_path", str(fresh_run)])
    assert_exit_line(err, fresh_run, "is not a FoodSpaceNet training checkpoint (kind='image_encoder')")
    with pytest.raises(SystemExit) as err:
        test_script.main(["--model_init_path", str(fresh_run.parent)])
    assert_exit_line(err, fresh_run.parent, "a folder, not a checkpoint")


def test_missing_image_folder_named_before_any_work(fresh_run, tmp_path):
    with pytest.raises(SystemExit) as err:
        test_script.main(["--model_init_path", str(fresh_run), "--img_path", str(tmp_path / "no_images")])
    line = assert_exit_line(err, tmp_path / "no_images", "no such folder")
    assert "unreadable" not in line
    (tmp_path / "bare").mkdir()
    with pytest.raises(SystemExit) as err:
        test_script.main(["--model_init_path", str(fresh_run), "--img_path", str(tmp_path / "bare")])
    assert_exit_line(err, tmp_path / "bare", "it has no test/ folder")
    assert written(fresh_run) == []  # no image encoder exported, no embeddings


def test_empty_partition_named_with_the_data_path(fresh_run, indexed_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(indexed_set["data"], data)
    write_keys(keys_file(data, "val"), [])
    with pytest.raises(SystemExit) as err:
        test_script.main(["--model_init_path", str(fresh_run), "--data_path", str(data), "--partitions", "test,val"])
    assert_exit_line(err, f"partition val of {data} holds 0 recipes", "create_lmdb.py")
    assert written(fresh_run) == []


def test_bad_images_limit_counts_recipes_and_names_the_root(fresh_run, indexed_set, tmp_path, caplog):
    images = tmp_path / "images"
    (images / "test").mkdir(parents=True)  # the folder is there, its images are not
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as err:
        test_script.main(["--model_init_path", str(fresh_run), "--img_path", str(images), "--partitions", "test",
                          "--workers", "0", "--batch_size", "8"])
    line = assert_exit_line(err, f"8 of {count_test_recipes(indexed_set)} recipes of test have no readable image "
                                 f"under {images}, above --max_bad_images 0.01", "check --img_path")
    assert "missing image file" in line and "images of test" not in line
    assert not [r for r in caplog.records if "skipping recipe" in r.getMessage()]  # the one line says it all


def test_bad_images_summary_line(fresh_run, indexed_set, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(indexed_set["img"] / "test", images / "test")
    min((images / "test").rglob("*.jpg")).write_bytes(b"not a jpeg")  # the first image of one recipe
    results = test_script.main(["--model_init_path", str(fresh_run), "--img_path", str(images),
                                "--partitions", "test", "--workers", "0", "--batch_size", "32",
                                "--max_bad_images", "0.5", "--medr", "5"])
    n = count_test_recipes(indexed_set)
    assert "test" in results
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"1 of {n} recipes of test had no readable image (skipped)", out[-3:]
    assert f"test/en: {n - 1} recipes -> " in "\n".join(out)


def count_test_recipes(indexed_set) -> int:
    return json.loads((indexed_set["data"] / "manifest.json").read_text())["counts"]["test"]


@pytest.mark.parametrize("args, words", [
    (["--partitions", "test,dev"], "--partitions 'test,dev': give a comma-separated subset of train, val, test"),
    (["--medr", "-1"], "--medr -1: must be >= 0"),
    (["--max_bad_images", "2"], "--max_bad_images 2.0: must be a fraction in [0, 1]"),
    (["--language", "xx"], "--language: unknown language 'xx'"),
])
def test_bad_flags(fresh_run, args, words):
    with pytest.raises(SystemExit) as err:
        test_script.main(["--model_init_path", str(fresh_run), *args])
    assert_exit_line(err, words)
    assert written(fresh_run) == []


# --------------------------------------------------------------------------- checkpoints (commands)


def test_cut_short_checkpoint(fresh_run):
    data = fresh_run.read_bytes()
    fresh_run.write_bytes(data[: len(data) // 2])
    proc = run_cli("--model_init_path", fresh_run, "--workers", "0")
    assert_one_line_error(proc, fresh_run, "not a readable checkpoint (cut short or corrupt)")
    assert written(fresh_run) == []


def test_missing_checkpoint(launched):
    proc, path, words = result(launched, "ckpt_missing")
    line = assert_one_line_error(proc, path, words)
    assert line.startswith("error: checkpoint not found: ")


def test_malicious_checkpoint_is_refused_and_never_run(launched):
    proc, path, words = result(launched, "ckpt_malicious")
    assert_one_line_error(proc, path, words)
    assert not launched[1].exists()  # os.system never ran


# --------------------------------------------------------------------------- --embeddings (commands)


@pytest.mark.parametrize("case", EMB_COMMANDS)
def test_malformed_embeddings_file(launched, case):
    proc, path, words = result(launched, f"emb_{case}")
    line = assert_one_line_error(proc, path, words)
    assert "pickled (object) data" not in line
    assert proc.stdout == ""  # nothing evaluated


@pytest.mark.parametrize("case", EMB_IN_PROCESS)
def test_malformed_embeddings_file_in_process(tmp_path, case):
    path, words = embedding_inputs(tmp_path / "emb")[case]
    with pytest.raises(SystemExit) as err:
        test_script.main(["--embeddings", str(path)])
    assert_exit_line(err, path, words)


def test_embeddings_loader_other_faults(tmp_path):
    """What the commands above do not show: cut short, a pickle, NaN, float64 taken as float32."""
    good = good_arrays()
    path = tmp_path / "good.npz"
    save_embeddings(path, **good)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(EmbeddingsError, match=r"cut\.npz: not a readable \.npz archive \(cut short or corrupt"):
        load_embeddings(tmp_path / "cut.npz")
    (tmp_path / "p.npz").write_bytes(pickle.dumps(good))
    with pytest.raises(EmbeddingsError, match=r"p\.npz: not an \.npz archive .*a Python pickle \(never loaded\)"):
        load_embeddings(tmp_path / "p.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(EmbeddingsError, match="it is an empty file"):
        load_embeddings(tmp_path / "empty.npz")
    nan = good["rec_embeds"].copy()
    nan[6, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **{**good, "rec_embeds": nan})
    with pytest.raises(EmbeddingsError, match="rec_embeds row 6 holds NaN or infinite values"):
        load_embeddings(tmp_path / "nan.npz")
    np.savez(tmp_path / "f64.npz", **{**good, "img_embeds": good["img_embeds"].astype(np.float64)})
    emb = load_embeddings(tmp_path / "f64.npz")
    assert emb["img_embeds"].dtype == np.float32 and emb["rec_ids"].tolist() == good["rec_ids"].tolist()
    np.savez(tmp_path / "none.npz", **good_arrays(0))
    with pytest.raises(SystemExit) as err:
        test_script.main(["--embeddings", str(tmp_path / "none.npz")])
    assert_exit_line(err, tmp_path / "none.npz", "holds no recipes")

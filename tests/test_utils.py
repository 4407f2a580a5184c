"""Shared helpers: atomic writes, checkpoints, RNG state, flags, run folders."""

import argparse
import glob
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.checkpoint import CHECKPOINT_FORMAT, checkpoint_state, load_checkpoint, save_checkpoint, to_plain
from utils.cli import explicit_flags, int_list, str2bool
from utils.errors import CheckpointError, InputError, RunFolderError
from utils.io import atomic_write, atomic_write_json
from utils.runs import (
    OLD_OPTS_NAME,
    OPTS_NAME,
    best_glob,
    best_name,
    encoder_run_opts,
    find_encoder_files,
    image_encoder_path,
    is_image_encoder_file,
    new_gan_run_dir,
    new_run_dir,
    read_opts,
    run_dir_glob,
    vectors_glob,
    vectors_name,
    write_opts,
)
from utils.seed import get_rng_state, seed_everything, set_rng_state


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half a fi")
        raise RuntimeError("killed")
    assert target.read_text() == '{"a": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path):
    seed_everything(7)
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = tmp_path / "ck.pth.tar"
    save_checkpoint({"rng": state, "opts": to_plain(argparse.Namespace(p=Path("x"), t=(1, 2)))}, path)
    loaded = load_checkpoint(path)  # weights_only=True inside
    assert loaded["opts"] == {"p": "x", "t": [1, 2]}
    seed_everything(99)
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_load_checkpoint_refuses_foreign_pickles(tmp_path):
    path = tmp_path / "bad.pth.tar"
    torch.save({"ns": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}: refused by torch.load(weights_only=True): it holds argparse.Namespace "
                              "(not a checkpoint this project wrote; never unpickle untrusted files)")
    missing = tmp_path / "missing.pth.tar"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(missing)
    assert str(err.value) == f"checkpoint not found: {missing}" and isinstance(err.value, InputError)


def test_load_checkpoint_names_a_cut_short_file_in_one_line(tmp_path):
    path = tmp_path / "cut.pth.tar"
    save_checkpoint(checkpoint_state("foodspace", model={"w": torch.zeros(64)}), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint \(cut short or corrupt\): ") as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    (tmp_path / "empty.pth.tar").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cut short or corrupt"):
        load_checkpoint(tmp_path / "empty.pth.tar")


def test_checkpoint_state_puts_the_format_first():
    state = checkpoint_state("image_encoder", arch={"a": 1}, epoch=3)
    assert list(state) == ["format", "kind", "arch", "epoch"]
    assert state["format"] == CHECKPOINT_FORMAT and state["kind"] == "image_encoder"


def test_flags_helpers():
    assert [str2bool(v) for v in ("yes", "No", "TRUE", "f", "1")] == [True, False, True, False, True]
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")
    assert int_list("1, 5,10") == [1, 5, 10] and int_list("") == []
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no_cuda", "--no-cuda", action="store_true")
    parser.add_argument("--lr", type=float, default=0.1)
    assert explicit_flags(parser, ["--epochs", "5", "--no-cuda"]) == {"epochs", "no_cuda"}


def test_run_dir_and_opts(tmp_path):
    first = new_run_dir(tmp_path, "_x")
    second = new_run_dir(tmp_path, "_x")
    assert first.name.endswith("__train_x") and first != second and second.is_dir()
    write_opts(first / "opts.txt", {"lr": 0.1, "warmup": [1, 2], "name": "a: b"})
    assert read_opts(first / "opts.txt") == {"lr": 0.1, "warmup": [1, 2], "name": "a: b"}


def test_one_options_format_and_old_runs_still_read(tmp_path):
    """train.py and GAN_train.py write opts.json; an older train.py run's opts.txt (``key: <JSON>`` lines) still reads."""
    opts = {"lr": 0.1, "warmup": [1, 2], "name": "a: b", "data_path": "/d/ü", "gan": {"z_dim": 8}, "amp": None}
    run = tmp_path / "run"
    run.mkdir()
    write_opts(run / OPTS_NAME, opts)
    assert OPTS_NAME == "opts.json" and json.loads((run / OPTS_NAME).read_text(encoding="utf-8")) == opts
    assert read_opts(run / OPTS_NAME) == opts
    old = tmp_path / "old_run"
    old.mkdir()  # the old format exactly as train.py wrote it: sorted keys, ASCII-escaped JSON values
    (old / OLD_OPTS_NAME).write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in sorted(opts.items())))
    assert read_opts(old / OLD_OPTS_NAME) == opts
    assert encoder_run_opts(old, "model_BEST_REC_x") == opts  # what GAN_train.py and GAN_test.py read
    (old / OPTS_NAME).write_text(json.dumps({**opts, "data_path": "/new"}))  # written when the old run resumed
    assert encoder_run_opts(old, "model_BEST_REC_x")["data_path"] == "/new"
    assert encoder_run_opts(tmp_path / "none", "model_BEST_REC_x") == {}


def test_image_encoder_names_are_not_checkpoints(tmp_path):
    assert is_image_encoder_file("m/model_BEST_REC_e001_v-1.000_cr-2.0000_image_encoder.pth.tar")
    assert not is_image_encoder_file("m/model_BEST_REC_e001_v-1.000_cr-2.0000.pth.tar")
    name = best_name("REC", 1, 1.0, 2.0)
    assert name == "model_BEST_REC_e001_v-1.000_cr-2.0000.pth.tar"
    encoder = image_encoder_path(tmp_path / "models" / name)
    assert encoder.name == "model_BEST_REC_e001_v-1.000_cr-2.0000_image_encoder.pth.tar"
    for path in (encoder, tmp_path / "models" / name, tmp_path / "models" / best_name("VAL", 2, 3.0, 1.5)):
        path.parent.mkdir(exist_ok=True)
        path.touch()
    models = tmp_path / "models"
    assert sorted(p.name for p in models.glob(best_glob("REC"))) == [name]  # never the export
    assert [p.name for p in models.glob(best_glob("REC", image_encoder=True))] == [encoder.name]


def test_run_folder_names(tmp_path):
    run = new_run_dir(tmp_path / "runs", "_demo")
    assert Path(glob.glob(run_dir_glob(tmp_path / "runs", "_demo"))[0]) == run
    gan = new_gan_run_dir(run)
    assert gan.parent == run / "GAN_runs" and gan.name.startswith("GAN_") and gan.is_dir()
    vectors = vectors_name(run, "model_BEST_REC_e001", "test", "de-en")
    assert vectors.name == f"foodSpace_vectors_{run.name.split('__')[0]}_model_BEST_REC_e001_test_de-en.npz"
    vectors.touch()
    assert glob.glob(vectors_glob(run, "model_BEST_REC_e001", "test", "de-en")) == [str(vectors)]


def test_find_encoder_files_names_the_command_that_makes_them(tmp_path):
    with pytest.raises(RunFolderError, match="no such folder"):
        find_encoder_files(tmp_path / "nothing", "en")
    (tmp_path / "models").mkdir()
    with pytest.raises(RunFolderError, match=r"make it with: python test\.py .*--language en"):
        find_encoder_files(tmp_path, "en")
    ckpt = tmp_path / "models" / best_name("REC", 1, 1.0, 2.0)
    ckpt.touch()
    image_encoder_path(ckpt).touch()
    with pytest.raises(RunFolderError, match="_train_en.npz"):
        find_encoder_files(tmp_path, "en")
    vectors = {p: vectors_name(tmp_path, ckpt.name.removesuffix(".pth.tar"), p, "en") for p in ("train", "val", "test")}
    for path in vectors.values():
        path.touch()
    files = find_encoder_files(tmp_path, "en")
    assert files.encoder == image_encoder_path(ckpt) and files.embeddings == vectors


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    target = tmp_path / "perm.txt"
    with atomic_write(target, "w") as handle:
        handle.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_a_write_killed_midway_leaves_a_temp_file_the_next_write_removes(tmp_path):
    import os
    import subprocess
    import sys
    import time

    import utils.io

    target = tmp_path / "foodSpace_vectors_x_test_en.npz"
    code = ("import os, signal, sys; from utils.io import atomic_write\n"
            "writer = atomic_write(sys.argv[1]); handle = writer.__enter__(); handle.write(b'half')\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{target.name}.") and left[0].endswith(".tmp")
    old_style = tmp_path / f".{target.name}.ab12cd34.tmp"  # a temp file named by an older version
    old_style.write_bytes(b"old")
    os.utime(old_style, (time.time() - utils.io.OLD_TEMP_SECONDS - 60,) * 2)
    other = tmp_path / f".{target.name}.otherhost-{os.getpid()}.zz99yy88.tmp"  # another host's: kept
    other.write_bytes(b"theirs")
    with atomic_write(target) as handle:
        with atomic_write(target) as inner:  # a live writer's temp file (this process) survives
            inner.write(b"inner")
        handle.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name])


def test_synthesis_and_recipes_sheets_put_each_image_under_its_column():
    from PIL import Image

    from utils.vis import GAP, HEADER_H, SHEET_TILE, recipes_figure, synthesis_figure

    def solid(v: int) -> Image.Image:
        return Image.new("RGB", (SHEET_TILE, SHEET_TILE), (v, 255 - v, 7))

    rows = [(f"recipe {r}", solid(10 * r), [solid(10 * r + 1), solid(10 * r + 2)], [solid(10 * r + 3), solid(10 * r + 4)])
            for r in range(3)]
    sheet = synthesis_figure(rows, 2)
    text_w = 150  # the title column
    assert sheet.size == (text_w + 5 * (SHEET_TILE + GAP), HEADER_H + 3 * (SHEET_TILE + GAP))
    for r in range(3):
        for c in range(5):  # real, 2 from the recipe, 2 from the image
            x = text_w + GAP + c * (SHEET_TILE + GAP) + SHEET_TILE // 2
            y = HEADER_H + r * (SHEET_TILE + GAP) + SHEET_TILE // 2
            assert sheet.getpixel((x, y)) == (10 * r + c, 255 - 10 * r - c, 7)
    # --recipe: generated images, then the nearest photos, each marked with its cosine in a corner
    sheet = recipes_figure([("text", [solid(1), solid(2)], [(solid(3), 0.5)])], 2, 1)
    text_w = 200
    assert sheet.size == (text_w + 3 * (SHEET_TILE + GAP) + GAP, HEADER_H + SHEET_TILE + GAP)
    centres = [sheet.getpixel((text_w + GAP + c * (SHEET_TILE + GAP) + SHEET_TILE // 2, HEADER_H + SHEET_TILE // 2))
               for c in range(3)]
    assert centres == [(1, 254, 7), (2, 253, 7), (3, 252, 7)]
    corner = sheet.getpixel((text_w + GAP + 2 * (SHEET_TILE + GAP) + 2, HEADER_H + SHEET_TILE - 2))
    assert corner == (0, 0, 0)  # the score's black box

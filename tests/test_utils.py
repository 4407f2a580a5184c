"""Shared helpers: atomic writes, checkpoints, RNG state, flags, run folders."""

import argparse
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.checkpoint import is_image_encoder_file, load_checkpoint, save_checkpoint, to_plain
from utils.cli import explicit_flags, int_list, str2bool
from utils.io import atomic_write, atomic_write_json
from utils.runs import new_run_dir, read_opts, write_opts
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
    with pytest.raises(RuntimeError, match="weights_only"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_checkpoint(tmp_path / "missing.pth.tar")


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


def test_image_encoder_names_are_not_checkpoints():
    assert is_image_encoder_file("m/model_BEST_REC_e001_v-1.000_cr-2.0000_image_encoder.pth.tar")
    assert not is_image_encoder_file("m/model_BEST_REC_e001_v-1.000_cr-2.0000.pth.tar")


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    target = tmp_path / "perm.txt"
    with atomic_write(target, "w") as handle:
        handle.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)

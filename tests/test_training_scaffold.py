"""utils.training: the scaffolding train.py and GAN_train.py share."""

import argparse
import re

import pytest
from conftest import ROOT

import GAN_train
import train
from utils.distributed import DistInfo
from utils.training import apply_resume_opts, epoch_steps, every_rank_has_a_batch, flag_kind


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("script", [train, GAN_train])
def test_every_runtime_flag_exists_and_the_architecture_is_fixed(script):
    dests = _dests(script.get_parser())
    assert script.RUNTIME_FLAGS & dests, "the table tags this script's runtime flags"
    for arch in ("embDim", "image_backbone", "BERT_layers", "Z_DIM", "GF_DIM", "lr", "batch_size", "seed"):
        if arch in dests:
            assert flag_kind(arch, script.RUNTIME_FLAGS) == "fixed", arch
    assert flag_kind("epochs", script.RUNTIME_FLAGS) == flag_kind("workers", script.RUNTIME_FLAGS) == "runtime"
    # every runtime flag of the script's table is one of its flags
    assert script.RUNTIME_FLAGS <= dests


def _documented_runtime_flags() -> dict[str, set[str]]:
    """docs/run_folders.md's table of run-time flags (``| script | run-time flags |``): ``{script: flags}``."""
    text = (ROOT / "docs" / "run_folders.md").read_text(encoding="utf-8")
    lines = text[text.index("| script | run-time flags |"):].splitlines()
    rows = {}
    for line in lines[2:]:  # after the header and the |---| line
        if not line.startswith("|"):
            break
        script, flags = (cell.strip() for cell in line.strip("|").split("|"))
        rows[script] = set(re.findall(r"`(\w+)`", flags))
    return rows


@pytest.mark.parametrize("script, name", [(train, "train.py"), (GAN_train, "GAN_train.py")])
def test_runtime_flags_are_the_documented_ones(script, name):
    """Each script's RUNTIME_FLAGS (beside its parser) is docs/run_folders.md's row "both" plus its own row."""
    rows = _documented_runtime_flags()
    assert set(rows) == {"both", "train.py", "GAN_train.py"}
    assert script.RUNTIME_FLAGS == rows["both"] | rows[name]
    assert not rows["train.py"] & rows["GAN_train.py"]  # a flag of both scripts belongs to the row "both"


def test_resume_keeps_fixed_flags_and_takes_given_runtime_ones(capsys):
    parser = train.get_parser()
    stored = vars(parser.parse_args(["--embDim", "64", "--epochs", "3", "--lr", "0.5"]))
    argv = ["--resume", "RUN", "--embDim", "32", "--epochs", "9", "--lr", "0.5"]
    args = apply_resume_opts(parser, argv, parser.parse_args(argv), dict(stored), train.RUNTIME_FLAGS)
    assert args.embDim == 64 and args.epochs == 9 and args.lr == 0.5 and args.resume == "RUN"
    # only the fixed flag given with another value is reported
    assert capsys.readouterr().out.strip() == "--resume: keeping the run's settings; ignoring --embDim"


def test_epoch_steps_and_small_batch_skip():
    assert epoch_steps(10, 0) == 10 and epoch_steps(10, 3) == 3 and epoch_steps(2, 5) == 2
    one = DistInfo(rank=0, world_size=1, local_rank=0)
    assert every_rank_has_a_batch(2, one) and not every_rank_has_a_batch(1, one)


@pytest.mark.parametrize("script", [train, GAN_train])
def test_help_shows_defaults_and_hides_the_reference_only_flags(script, capsys):
    with pytest.raises(SystemExit):
        script.get_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: 1234)" in text  # --seed
    assert "{yes,no}" in text  # what a boolean flag accepts
    hidden = ["--maxSeqlen", "--momentum", "--w2vInit"] if script is train else ["--trained_G_model_path", "--r1m_path"]
    for flag in hidden:
        assert flag not in text
        required = ["--encoder_dir", "RUN"] if script is GAN_train else []
        assert script.get_parser().parse_known_args([*required, flag, "1"])[1] == []  # still accepted


@pytest.mark.parametrize("script", [train, GAN_train])
def test_image_backend_is_kept_on_resume(script):
    """--image_backend is stored and fixed; a run stored before the flag existed resumes on 'pil'."""
    parser = script.get_parser()
    runtime = script.RUNTIME_FLAGS
    assert flag_kind("image_backend", runtime) == "fixed" and parser.get_default("image_backend") == "fast"
    argv = ["--resume", "r", "--image_backend", "fast"]
    base = {"workers": 0, "epochs": 2}
    assert apply_resume_opts(parser, argv, parser.parse_args(argv), {**base, "image_backend": "pil"},
                             runtime).image_backend == "pil"
    assert apply_resume_opts(parser, ["--resume", "r"], parser.parse_args(["--resume", "r"]), base,
                             runtime).image_backend == "pil"
    stored = {**base, "image_backend": "fast"}
    assert apply_resume_opts(parser, ["--resume", "r"], parser.parse_args(["--resume", "r"]), stored,
                             runtime).image_backend == "fast"


def test_step_scalars_read_what_float_reads():
    import torch

    from utils.training import StepScalars

    scalars = StepScalars()
    values = [{"a": torch.tensor(0.1), "b": torch.tensor(1 / 3, dtype=torch.bfloat16)},
              {"a": torch.tensor(2.5, dtype=torch.float16, requires_grad=True) * 1, "c": 7},
              {"a": torch.tensor(1e-8, dtype=torch.float64)}]
    for step, v in enumerate(values, start=10):
        scalars.add(step, v)
    assert len(scalars) == 3
    rows = scalars.flush()
    assert rows == [(10 + i, {k: float(x.detach() if torch.is_tensor(x) else x) for k, x in v.items()})
                    for i, v in enumerate(values)]
    assert len(scalars) == 0 and scalars.flush() == []


def test_default_workers_share_the_cores(monkeypatch):
    import os

    from utils.cli import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 1  # at least one worker

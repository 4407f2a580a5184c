"""train.py against bad inputs: one line, no traceback, no run folder; and what it tells a user mid-run."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL

import train
from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _args(indexed, runs, *extra):
    return [*TINY_MODEL, "--data_path", str(indexed["data"]), "--img_path", str(indexed["img"]),
            "--runs_dir", str(runs), "--batch_size", "8", "--workers", "0", "--medr", "20",
            "--projector_every", "0", *extra]


def _run_script(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    cut = folder / "cut.pth.tar"
    import torch

    torch.save({"format": 1, "model": {"w": torch.zeros(1000)}}, cut)
    cut.write_bytes(cut.read_bytes()[:300])
    evil = folder / "evil.pth.tar"
    torch.save({"model": _Evil()}, evil)  # a real checkpoint container around a pickle that would run a command
    raw = folder / "raw.pkl"
    raw.write_bytes(pickle.dumps({"model": _Evil()}))  # a bare pickle, not a torch file
    return {"cut": cut, "evil": evil, "raw": raw, "missing": folder / "missing.pth.tar"}


@pytest.mark.parametrize("case", ["missing", "cut", "evil", "raw"])
def test_bad_init_checkpoint_is_one_line_and_leaves_no_run_folder(indexed_set, tmp_path, bad_checkpoints, case):
    runs = tmp_path / "runs"
    proc = _run_script(_args(indexed_set, runs, "--epochs", "1", "--model_init_path", str(bad_checkpoints[case])),
                       cwd=tmp_path)
    line = _one_line_error(proc, str(bad_checkpoints[case]))
    if case == "evil":
        assert "refused by torch.load(weights_only=True): it holds posix.system" in line  # the cause, not advice
    assert not (tmp_path / "PWNED").exists()  # nothing was executed
    assert not runs.exists() or not any(runs.iterdir())


def test_resume_of_a_folder_without_checkpoint_is_one_line(indexed_set, tmp_path):
    proc = _run_script(_args(indexed_set, tmp_path / "runs", "--resume", str(tmp_path / "nope")), cwd=tmp_path)
    _one_line_error(proc, "checkpoint not found", str(tmp_path / "nope"))


def test_no_full_batch_stops_before_the_run_folder(indexed_set, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit, match=r"^error: .*make no full batch of --batch_size 5000"):
        train.main(_args(indexed_set, runs, "--epochs", "1", "--batch_size", "5000"))
    assert not runs.exists() or not any(runs.iterdir())


def _totals(out, steps: int = 1) -> dict:
    return {"loss": steps * out.loss.item(), "d_pos": steps * out.d_pos.item(), "d_neg": steps * out.d_neg.item(),
            "steps": steps}


def test_not_learning_warns_only_on_a_collapse():
    import math

    import torch
    import torch.nn.functional as F

    from models.losses import batch_hard_triplet

    # A model that learns, as in the demo's last (--ohem) epoch: each image lies nearer its recipe
    # than a random one, yet the hardest negative of the batch is nearer still; val medR 74 -> 36.
    g = torch.Generator().manual_seed(0)
    rec = F.normalize(torch.randn(32, 16, generator=g), dim=1)
    img = F.normalize(rec + 0.8 * torch.randn(32, 16, generator=g), dim=1)
    learning = batch_hard_triplet(img, rec, alpha=0.3, ohem=True)
    assert learning.d_neg < learning.d_pos  # what the old warning took for "not learning"
    assert train.val_progress(36, 74, 500)
    assert train.not_learning(_totals(learning, 3), 0.3, True, 2, progress=train.val_progress(36, 74, 500)) == ""
    assert train.not_learning(_totals(learning, 3), 0.3, True, 2, progress=None) == ""  # no validation ran
    # A collapsed run: every embedding the same point, the loss pinned at alpha, val medR at chance.
    point = F.normalize(torch.ones(32, 16), dim=1)
    collapsed = batch_hard_triplet(point, point, alpha=0.3, ohem=True)
    assert abs(collapsed.loss.item() - 0.3) < 1e-6 and abs(collapsed.d_pos.item() - collapsed.d_neg.item()) < 1e-6
    assert not train.val_progress(240, math.inf, 500) and not train.val_progress(240, 250, 500)
    text = train.not_learning(_totals(collapsed, 3), 0.3, True, 0, progress=train.val_progress(240, math.inf, 500))
    assert "collapsed" in text and "not learning" in text and "--ohem_warmup N" in text
    assert "check the data and the lr" in train.not_learning(_totals(collapsed), 0.3, True, 2, progress=None)
    # ...but not while validation still improves clearly past chance.
    assert train.not_learning(_totals(collapsed), 0.3, True, 0, progress=True) == ""
    assert train.not_learning({"loss": 0, "d_pos": 0, "d_neg": 0, "steps": 0}, 0.3, True, 0) == ""


def test_bad_images_are_logged_and_best_checkpoints_are_slim(indexed_set, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # a copy of the image root with one train recipe's images gone
    img = tmp_path / "images"
    shutil.copytree(indexed_set["img"], img)
    from data.lmdb_format import keys_file
    from data.recipe1m import image_path, load_keys

    rid = load_keys(keys_file(indexed_set["data"], "train"))[0]
    from data.lmdb_format import RecordReader, lmdb_dir

    record = RecordReader(lmdb_dir(indexed_set["data"], "train")).get(rid)
    for image_id in record.images:
        image_path(img, "train", image_id).unlink()
    args = _args({**indexed_set, "img": img}, tmp_path / "runs", "--epochs", "1", "--max_bad_images", "0.5")
    run_dir = train.main(args)
    log = (run_dir / "train.txt").read_text()
    assert f"skipping recipe {rid}" in log
    assert "samples skipped for an unreadable image" in log and "1 of" in log.splitlines()[-2]
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("bad_images/train")][0] >= 1

    full = load_checkpoint(run_dir / "models" / "model.pth.tar")
    (best,) = (run_dir / "models").glob("model_BEST_REC_e*.pth.tar")
    slim = load_checkpoint(best)
    assert {"optimizer", "scaler", "rng", "schedule"} <= set(full) and not {"optimizer", "scaler", "rng"} & set(slim)
    assert set(slim["model"]) == set(full["model"]) and slim["arch"] == full["arch"] and "medR" in slim["metrics"]
    assert best.stat().st_size < (run_dir / "models" / "model.pth.tar").stat().st_size / 2
    # still a starting point for another run
    again = train.main(_args(indexed_set, tmp_path / "runs2", "--epochs", "1", "--max_iters", "1",
                             "--model_init_path", str(best)))
    assert (again / "models" / "model.pth.tar").is_file()

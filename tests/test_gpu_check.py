"""bench/gpu_check.py: the skip line without CUDA, PASS/FAIL/SKIP bookkeeping, the collective worker on gloo."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT
from PIL import Image

from bench import gpu_check


def test_without_cuda_it_skips_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["skipped: no CUDA device (torch.cuda.is_available() is False); "
                                        "nothing was checked"]


def test_failures_skip_what_depends_on_them_and_set_the_exit_status(tmp_path, monkeypatch):
    def fail():
        raise gpu_check.CheckFailed("exit status 1: train.py\nTraceback line")

    def crash():
        raise ValueError("bad state")

    checks = [gpu_check.Check("a", lambda: "fine"), gpu_check.Check("b", fail, needs=("a",)),
              gpu_check.Check("c", lambda: "never runs", needs=("a", "b")),
              gpu_check.Check("d", lambda: "never runs", skip_reason="bf16 not supported"),
              gpu_check.Check("e", crash)]
    lines: list[str] = []
    results = gpu_check.run_checks(checks, echo=lines.append)
    assert [(r.name, r.status) for r in results] == [("a", "PASS"), ("b", "FAIL"), ("c", "SKIP"), ("d", "SKIP"),
                                                      ("e", "FAIL")]
    assert [line.split(" (")[0] for line in lines] == ["PASS a", "FAIL b", "    Traceback line", "SKIP c", "SKIP d",
                                                       "FAIL e"]
    assert lines[1].endswith("s): exit status 1: train.py") and lines[3] == "SKIP c (0.0s): needs b"
    assert lines[4] == "SKIP d (0.0s): bf16 not supported" and lines[5].endswith("ValueError: bad state")

    # main's exit status: 1 when a check failed, 0 when all passed.
    monkeypatch.setattr(gpu_check.GpuChecks, "checks", lambda self, bf16: checks)
    assert gpu_check.main(["--cpu", "--out", str(tmp_path / "w")]) == 1
    monkeypatch.setattr(gpu_check.GpuChecks, "checks", lambda self, bf16: checks[:1])
    assert gpu_check.main(["--cpu", "--out", str(tmp_path / "w")]) == 0
    assert not (tmp_path / "w").exists()  # removed without --keep


def test_collective_worker_on_two_gloo_ranks(tmp_path):
    checks = gpu_check.GpuChecks(tmp_path, cpu=True, nproc=2, recipes=0, timeout=300)
    assert checks.nccl_collectives() == "2 rank(s), backend gloo, collective device cpu"
    want = gpu_check.nccl_expected(1, 1, 2, cuda=True)
    assert want["collective_device"] == "cuda:1" and want["backend"] == "nccl"
    assert want["gather"] == [[3, 3], "cuda:1", [0.0, 1.0, 1.0], 12.0]


def test_loader_throughput_runs_on_the_cpu(indexed_set, tmp_path):
    """The throughput check's code path (train.py's loader and step, then the same steps from memory) on the CPU."""
    checks = gpu_check.GpuChecks(tmp_path, cpu=True, nproc=2, recipes=0, timeout=300)
    checks.data, checks.r1m = indexed_set["data"], indexed_set["r1m"]
    note = checks.loader_throughput(workers=(0,), steps=2, batch_size=4)
    lines = note.splitlines()
    assert lines[0].startswith("fed from memory: ") and "batch 4, none, cpu" in lines[0]
    assert lines[1].startswith("--workers 0: ") and lines[1].endswith("loader-bound")
    photos = list((tmp_path / "images_photo").rglob("*.jpg"))
    assert photos and all(min(Image.open(p).size) >= 300 for p in photos)  # photo-sized, not the 64-px pictures

"""Test-wide settings: never ask the Hugging Face hub, keep threads few on a 2-core machine."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

# Tiny architecture flags shared by the tests that train (a CPU step takes milliseconds).
TINY_MODEL = ["--image_backbone", "resnet18", "--image_pretrained", "none", "--text_init", "none",
              "--image_size", "64", "--BERT_hidden", "32", "--BERT_layers", "1", "--BERT_heads", "2",
              "--BERT_intermediate", "64", "--embDim", "32"]


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory):
    """A small synthetic Recipe1M (120 recipes, 64 px images), generated once per session."""
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, recipes=120, seed=3, image_size=64, workers=0)
    return root


@pytest.fixture(scope="session")
def indexed_set(synthetic_set, tmp_path_factory):
    """The synthetic set indexed by create_lmdb.py with a small trained vocabulary.

    Returns a dict with ``r1m`` (Recipe1M folder), ``img`` (image root) and ``data`` (LMDB folder).
    """
    import create_lmdb

    data = tmp_path_factory.mktemp("loader_data")
    create_lmdb.main(["--r1m_path", str(synthetic_set), "--data_path", str(data), "--tokenizer", "train",
                      "--vocab_size", "400", "--workers", "1"])
    return {"r1m": synthetic_set, "img": synthetic_set / "images", "data": data}


@pytest.fixture
def torchrun(tmp_path):
    """Run a script under real torchrun with two CPU processes; returns ``{rank: stdout text}``.

    Each rank's stdout goes to its own file (``--redirects 3``), so lines of the two processes can
    never interleave, and ``--standalone`` picks a free rendezvous port.
    """
    import subprocess

    def run(script, args, cwd):
        log_dir = tmp_path / "torchrun_logs"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log_dir", str(log_dir), "--redirects", "3", str(ROOT / script), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

        def rank_file(rank: int, stream: str) -> str:
            files = sorted(log_dir.glob(f"**/attempt_0/{rank}/{stream}.log"))
            return files[-1].read_text() if files else ""

        if proc.returncode != 0:
            errors = "\n".join(f"rank {r} stderr:\n{rank_file(r, 'stderr')[-3000:]}" for r in (0, 1))
            pytest.fail(f"torchrun exited with {proc.returncode}:\n{errors}\n{proc.stderr[-3000:]}")
        return {rank: rank_file(rank, "stdout") for rank in (0, 1)}

    return run

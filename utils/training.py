"""What the training scripts share around their loops (train.py, GAN_train.py).

Each loop stays visible top to bottom in its script; this module holds the scaffolding around
it: which flags a resumed run may change, the run folder every rank agrees on, the small-batch
skip, the progress bar, and the end-of-epoch RNG gather for the checkpoint. Everything here
works the same in one process and under torchrun (the collectives do nothing when not distributed).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from utils import distributed as du
from utils.cli import explicit_flags
from utils.seed import get_rng_state, set_rng_state

# The one table of flag kinds. A run stores all its flags; on --resume the stored value wins
# ("fixed": architecture, data, losses, schedule) unless the flag is "runtime" and given again.
# Flags of either training script; a flag a script lacks is simply not there.
RUNTIME_FLAGS = frozenset({
    "epochs", "workers", "max_iters", "amp", "channels_last", "log_every", "max_bad_images",  # both scripts
    "data_path", "img_path", "no_cuda",
    "gpu", "runs_dir", "projector_every", "projector_n", "valfreq",  # train.py
    "device", "grid_n", "r1m_path", "trained_G_model_path",  # GAN_train.py
})


# Flags an older run's stored options lack, with the value that run used (its behaviour is kept on --resume).
RESUME_DEFAULTS = {"image_backend": "pil"}


def flag_kind(name: str) -> str:
    """``"runtime"`` (a resumed run may change it) or ``"fixed"`` (the checkpoint's value is kept)."""
    return "runtime" if name in RUNTIME_FLAGS else "fixed"


def apply_resume_opts(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace,
                      stored: dict) -> argparse.Namespace:
    """Overwrite ``args`` with a resumed run's ``stored`` options, except the runtime flags given in ``argv``.

    Fixed flags given on the command line with another value are ignored, and said so.
    """
    given = explicit_flags(parser, argv) - {"resume"}
    ignored = sorted(k for k in given if flag_kind(k) == "fixed" and stored.get(k, getattr(args, k)) != getattr(args, k))
    if ignored:
        print(f"--resume: keeping the run's settings; ignoring {', '.join('--' + k for k in ignored)}")
    for key, value in stored.items():
        if key != "resume" and not (flag_kind(key) == "runtime" and key in given):
            setattr(args, key, value)
    for key, value in RESUME_DEFAULTS.items():
        if key not in stored and hasattr(args, key):
            setattr(args, key, value)
    return args


def shared_run_dir(dist_info: du.DistInfo, resume: str, make: Callable[[], Path]) -> Path:
    """The run folder: ``resume`` when given, else one that rank 0 makes and every rank learns."""
    if resume:
        return Path(resume)
    return Path(du.broadcast_object(str(make()) if dist_info.is_main else None))


def load_states(ckpt: dict, **objects) -> None:
    """``obj.load_state_dict(ckpt[name])`` for each ``name=obj`` (model, optimizer, scaler...)."""
    for name, obj in objects.items():
        obj.load_state_dict(ckpt[name])


def restore_rng(rngs: list, rank: int) -> None:
    """Continue this rank's random streams from a checkpoint (a run resumed on more ranks reuses rank 0's)."""
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])


def epoch_steps(loader_len: int, max_iters: int) -> int:
    """Steps of one epoch: the loader's length, capped by ``--max_iters`` when it is > 0."""
    return min(max_iters, loader_len) if max_iters else loader_len


def progress(steps: int, epoch: int, dist_info: du.DistInfo) -> tqdm:
    """The epoch's progress bar, on the main process only."""
    return tqdm(total=steps, desc=f"epoch {epoch}", disable=not dist_info.is_main, dynamic_ncols=True)


def every_rank_has_a_batch(rows: int, dist_info: du.DistInfo) -> bool:
    """False when some rank's batch has fewer than 2 rows: BatchNorm needs 2, and all ranks skip together so none hangs.

    The rows are known on the host, so the flags travel between host processes (no GPU sync).
    """
    if not dist_info.distributed:
        return rows >= 2
    ok = du.all_reduce_sum_host(torch.tensor([float(rows >= 2)]))
    return ok.item() >= dist_info.world_size


def gather_rng_states() -> list:
    """Every rank's RNG state, in rank order (for the checkpoint: a resumed DDP run continues each stream)."""
    return du.all_gather_object(get_rng_state())


class StepScalars:
    """Per-step scalars kept where the step computed them, read back in one transfer when asked.

    A loop calls :meth:`add` after each step (no host synchronisation: the values stay on the
    device) and :meth:`flush` every ``--log_every`` steps and at the end of the epoch; TensorBoard
    then gets every step's values, written in a batch. The values read are those ``float(tensor)``
    gives at each step (bf16, fp16 and float32 widen to float64 exactly).
    """

    def __init__(self) -> None:
        self._rows: list[tuple[int, dict]] = []

    def add(self, step: int, values: dict) -> None:
        """Keep ``{name: 0-dim tensor or number}`` of global step ``step``."""
        self._rows.append((step, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()}))

    def __len__(self) -> int:
        return len(self._rows)

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """Every kept step as ``(step, {name: float})``, in order; empties the buffer."""
        rows, self._rows = self._rows, []
        tensors = [v for _, values in rows for v in values.values() if isinstance(v, torch.Tensor)]
        read = iter(torch.stack([t.reshape(()).to(torch.float64) for t in tensors]).cpu().tolist()
                    if tensors else [])  # one device -> host copy for all of them
        return [(step, {k: next(read) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()})
                for step, values in rows]


def write_steps(rows: list[tuple[int, dict[str, float]]], writer) -> dict[str, float]:
    """Every step read by :meth:`StepScalars.flush` to TensorBoard (``writer``; None on other ranks), in step order.

    Returns:
        The last step's values (``{}`` when ``rows`` is empty).
    """
    if writer is not None:
        for step, values in rows:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
    return rows[-1][1] if rows else {}

"""The skeleton train.py and GAN_train.py share: setup, the epoch loop's bookkeeping, save, shutdown.

Each script reads top to bottom as setup -> for each epoch: ``train_epoch``, ``validate``, ``save``
-> shutdown, and keeps what is its own (models, steps, validation, checkpoint contents); this
module holds the blocks both run the same way: joining torchrun and seeding (:func:`init_process`),
the training loader and its "no full batch" error (:func:`train_loader`), the DDP wrap, the
options file and the TensorBoard writer (:func:`open_run_files`), the loop over one epoch's batches
with unreadable images, small batches, step values and log lines (:func:`run_epoch`), the
end-of-epoch checkpoint and barrier (:func:`checkpoint_epoch`) and :func:`shutdown`; the state a
run carries between them is a :class:`RunState`. Which flags a resumed run may change each script
declares beside its parser (``RUNTIME_FLAGS``); :func:`apply_resume_opts` applies the rule.
Everything here works the same in one process and under torchrun (the collectives do nothing when
not distributed). It imports neither ``models`` nor ``data``: the scripts pass their objects in.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from utils import distributed as du
from utils.cli import autocast_context, explicit_flags, pin_memory, resolve_device
from utils.errors import InputError
from utils.runs import OPTS_NAME, write_opts
from utils.seed import get_rng_state, seed_everything, set_rng_state

# Flags an older run's stored options lack, with the value that run used (its behaviour is kept on --resume).
RESUME_DEFAULTS = {"image_backend": "pil"}


def flag_kind(name: str, runtime: frozenset[str]) -> str:
    """``"runtime"`` (a resumed run may change it) or ``"fixed"`` (the checkpoint's value is kept).

    ``runtime`` is the script's own ``RUNTIME_FLAGS`` (docs/run_folders.md#resuming-a-run).
    """
    return "runtime" if name in runtime else "fixed"


def apply_resume_opts(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace,
                      stored: dict, runtime: frozenset[str]) -> argparse.Namespace:
    """Overwrite ``args`` with a resumed run's ``stored`` options, except the ``runtime`` flags given in ``argv``.

    A run stores all its flags; on --resume the stored value wins (architecture, data, losses,
    schedule) unless the flag is one of the script's ``runtime`` flags and given again. Fixed flags
    given on the command line with another value are ignored, and said so.
    """
    given = explicit_flags(parser, argv) - {"resume"}
    ignored = sorted(k for k in given if flag_kind(k, runtime) == "fixed"
                     and stored.get(k, getattr(args, k)) != getattr(args, k))
    if ignored:
        print(f"--resume: keeping the run's settings; ignoring {', '.join('--' + k for k in ignored)}")
    for key, value in stored.items():
        if key != "resume" and not (flag_kind(key, runtime) == "runtime" and key in given):
            setattr(args, key, value)
    for key, value in RESUME_DEFAULTS.items():
        if key not in stored and hasattr(args, key):
            setattr(args, key, value)
    return args


# --------------------------------------------------------------------------- setup


def init_process(no_cuda: bool, device: Any, seed: int, amp: str) -> tuple[du.DistInfo, torch.device, Any]:
    """Join torchrun's process group (when launched by it), pick the device, seed, and decide precision.

    Args:
        device: ``--gpu`` (an index) or ``--device`` (indices or ``cpu``, a list); see
            :func:`utils.cli.resolve_device`.
        seed: each rank seeds its random streams with ``seed + rank``.

    Returns:
        ``(dist_info, device, ctx)``, ``ctx`` the autocast context of ``--amp`` (the one place deciding precision).
    """
    first = device[0] if isinstance(device, (list, tuple)) and device else device
    use_cuda = not no_cuda and torch.cuda.is_available() and str(first).lower() != "cpu"
    dist_info = du.init_distributed(use_cuda=use_cuda)
    device = resolve_device(no_cuda, device, dist_info.local_rank if dist_info.distributed else None)
    seed_everything(seed + dist_info.rank)
    return dist_info, device, autocast_context(device, amp)


def train_loader(dataset, *, batch_size: int, workers: int, seed: int, collate_fn: Callable,
                 dist_info: du.DistInfo, device: torch.device, source: str | Path) -> DataLoader:
    """The training loader: this rank's share of ``dataset``, reshuffled each epoch, in full batches.

    One sampler for one or many processes: its shuffle depends on (seed, epoch) only, and the last
    partial batch is dropped. Workers stay between epochs (``set_epoch`` reaches them through shared memory).

    Raises:
        InputError: ``dataset`` makes no full batch (``source``, the file or folder it came from, is named).
    """
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                        collate_fn=collate_fn, drop_last=True, pin_memory=pin_memory(device),
                        persistent_workers=workers > 0)
    if len(loader) == 0:
        raise InputError(f"{source}: {len(dataset)} train recipes make no full batch of --batch_size {batch_size} "
                         f"x {dist_info.world_size} process(es)")
    return loader


def shared_run_dir(dist_info: du.DistInfo, resume: str, make: Callable[[], Path]) -> Path:
    """The run folder: ``resume`` when given, else one that rank 0 makes and every rank learns."""
    if resume:
        return Path(resume)
    return Path(du.broadcast_object(str(make()) if dist_info.is_main else None))


def ddp(module: torch.nn.Module, device: torch.device, dist_info: du.DistInfo) -> torch.nn.Module:
    """``module`` in DistributedDataParallel under torchrun (on ``device``), else ``module`` itself."""
    if not dist_info.distributed:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def open_run_files(run_dir: Path, dist_info: du.DistInfo, opts: dict, resumed_iteration: int | None):
    """On the main process: write the options file (``opts.json``) and open TensorBoard; None elsewhere.

    A resumed run logged steps 1..``resumed_iteration`` before: only what a crashed run wrote after
    its checkpoint is purged.
    """
    if not dist_info.is_main:
        return None
    write_opts(run_dir / OPTS_NAME, opts)
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir), purge_step=resumed_iteration + 1 if resumed_iteration is not None
                         else None)


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


# --------------------------------------------------------------------------- the run and its epochs


class BadImages:
    """Unreadable training images, handled as train.py always did: each new recipe logged once, a count per epoch.

    ``tracker`` (``data.dataset.BadImageTracker``) keeps the distinct recipes and stops the run above
    ``--max_bad_images``; ``log`` is the run's text log (silent on the other ranks).
    """

    def __init__(self, tracker, log: Callable[[str], None]) -> None:
        self.tracker, self.log = tracker, log
        self.skipped = 0  # samples skipped in this epoch

    def add(self, bad: list, epoch: int) -> None:
        """Record a batch's bad samples (``Batch.bad``); log the recipes not seen before."""
        if not bad:
            return
        seen = set(self.tracker.bad)
        self.tracker.update(bad)
        self.skipped += len(bad)
        for item in bad:
            if item.recipe_id not in seen:
                self.log(f"epoch {epoch}: skipping recipe {item.recipe_id}: {item.reason}")

    def end_epoch(self, epoch: int, writer) -> None:
        """TensorBoard ``bad_images/train`` (samples skipped in ``epoch``) and, when any, a log line; resets the count."""
        skipped, self.skipped = self.skipped, 0
        if writer is not None:
            writer.add_scalar("bad_images/train", skipped, epoch)
            if skipped:
                self.log(f"epoch {epoch}: {skipped} samples skipped for an unreadable image "
                         f"({self.tracker.summary()} so far)")


@dataclass(kw_only=True)
class RunState:
    """What a training run carries from setup through its epochs to shutdown; each script's run adds its own parts.

    Attributes:
        log: the run's text log (``train.txt`` on the main process, silent elsewhere).
        writer: TensorBoard's ``SummaryWriter`` on the main process, None elsewhere.
        iteration: the global step (continued from a resumed checkpoint).
        local_images: images this process trained on in this invocation.
    """

    args: argparse.Namespace
    dist_info: du.DistInfo
    device: torch.device
    ctx: Any  # autocast context (init_process)
    run_dir: Path
    log: Callable[[str], None]
    writer: Any = None
    bad_images: BadImages
    start_epoch: int = 0
    iteration: int = 0
    local_images: int = 0


def run_epoch(run: RunState, loader: DataLoader, epoch: int, step: Callable[[int, Any], dict],
              postfix: Callable[[dict], dict]) -> dict[str, float]:
    """One epoch over ``loader`` (at most ``--max_iters`` steps), the bookkeeping both scripts share.

    ``step(it, batch)`` trains on a batch and returns its values as 0-dim tensors left on the device
    (no host synchronisation per step); every step's values reach TensorBoard at its global step,
    read every ``--log_every`` steps (a log line of the last one; ``postfix(values)`` for the progress
    bar) and at the end of the epoch (:class:`StepScalars`). Unreadable images go to
    ``run.bad_images``; a batch that some rank cannot use is skipped by all (:func:`every_rank_has_a_batch`).

    Returns:
        The sum of each value over the epoch's steps, in step order, and ``steps`` (their number).
    """
    loader.dataset.set_epoch(epoch)  # augmentation draws depend on (seed, epoch, index)
    loader.sampler.set_epoch(epoch)
    steps = epoch_steps(len(loader), run.args.max_iters)
    bar = progress(steps, epoch, run.dist_info)
    scalars, totals = StepScalars(), {"steps": 0}
    for it, batch in enumerate(loader):
        if it >= steps:
            break
        run.bad_images.add(batch.bad, epoch)
        if every_rank_has_a_batch(batch.images.shape[0], run.dist_info):
            values = step(it, batch)
            run.iteration += 1
            run.local_images += batch.images.shape[0]
            scalars.add(run.iteration, values)
            if it % run.args.log_every == 0:
                last = _record(scalars.flush(), totals, run.writer)
                if run.writer is not None:
                    bar.set_postfix(**postfix(last))
                    run.log(f"epoch {epoch} iter {it}/{steps} global {run.iteration} "
                            + " ".join(f"{k} {v:.4f}" for k, v in last.items()))
        bar.update(1)
    _record(scalars.flush(), totals, run.writer)
    bar.close()
    run.bad_images.end_epoch(epoch, run.writer)
    return totals


def _record(rows: list[tuple[int, dict[str, float]]], totals: dict, writer) -> dict[str, float]:
    """Add the steps read from the device to ``totals`` and TensorBoard (:func:`write_steps`); the last step's values."""
    for _, values in rows:
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value
        totals["steps"] += 1
    return write_steps(rows, writer)


def checkpoint_epoch(run: RunState, write: Callable[[list], None]) -> None:
    """End an epoch on every rank: gather the RNG states, ``write(rngs)`` the checkpoints on the main process, wait.

    The main process also flushes TensorBoard; the barrier starts the next epoch on all ranks together.
    """
    rngs = gather_rng_states()
    if run.dist_info.is_main:
        write(rngs)
        run.writer.flush()
    du.barrier()


def shutdown(run: RunState, trained: str, *lines: str) -> Path:
    """Print what this rank trained on (``trained`` appended), close TensorBoard, log ``lines``; returns the run folder."""
    print(f"rank {run.dist_info.rank}/{run.dist_info.world_size}: trained on {run.local_images} images{trained}",
          flush=True)
    if run.writer is not None:
        run.writer.close()
        for line in lines:
            run.log(line)
    du.cleanup()
    return run.run_dir

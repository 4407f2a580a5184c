"""Command-line helpers shared by the scripts: help format, booleans, explicit flags, device, exits."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TypeVar

import torch

from utils.errors import InputError

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the module docstring's layout and shows every flag's default."""


def run_main(body: Callable[[], T]) -> T:
    """Run a script's body; bad input (:class:`InputError`) exits with one line, never a traceback.

    The exit is ``SystemExit("error: <message>")``: status 1, the line on stderr.
    """
    try:
        return body()
    except InputError as err:
        raise SystemExit(f"error: {err}") from None


BOOL = "{yes,no}"  # metavar of str2bool flags; true/false, t/f, y/n and 1/0 are accepted too


def str2bool(value: str | bool) -> bool:
    """Parse the reference's boolean flags: yes/no, true/false, t/f, y/n, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"yes", "true", "t", "y", "1"}:
        return True
    if text in {"no", "false", "f", "n", "0"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (yes/no/true/false), got {value!r}")



def int_list(value: str) -> list[int]:
    """Parse ``"1,5,10"`` (or ``""``) into ``[1, 5, 10]`` (or ``[]``)."""
    try:
        return [int(v) for v in str(value).replace(" ", "").split(",") if v != ""]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags actually written on the command line ``argv``."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for action in parser._actions:  # rebuild the options with SUPPRESS defaults
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kwargs["action"] = "store_true"
        else:
            kwargs["nargs"] = action.nargs
        probe.add_argument(*action.option_strings, **kwargs)
    known, _ = probe.parse_known_args(list(argv or []))
    return set(vars(known))


def resolve_device(no_cuda: bool = False, device: str | int | Sequence | None = None,
                   local_rank: int | None = None) -> torch.device:
    """The one device resolver of the scripts.

    CPU when ``no_cuda``, when ``device`` is ``"cpu"`` or without CUDA; under torchrun
    (``local_rank`` given) the local rank picks the GPU; else ``cuda:<device>`` (default 0). A
    list (the reference's ``--device 0 1``) uses its first entry: several GPUs mean torchrun.

    Raises:
        InputError: ``device`` is neither ``"cpu"`` nor a CUDA index.
    """
    if isinstance(device, (list, tuple)):
        if len(device) > 1:
            print(f"--device {' '.join(map(str, device))}: using the first only (several GPUs: use torchrun)")
        device = device[0] if device else None
    if no_cuda or str(device).lower() == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    try:
        return torch.device("cuda", int(device) if device is not None else 0)
    except ValueError:
        raise InputError(f"--device {device!r}: give a CUDA index or 'cpu'") from None


def pin_memory(device: torch.device) -> bool:
    """A loader's ``pin_memory``: page-locked batches when they go to a CUDA device (the one rule of the scripts)."""
    return device.type == "cuda"


def autocast_context(device: torch.device, amp: str):
    """The one place deciding precision: ``nullcontext`` for fp32, else ``torch.autocast``."""
    if amp in (None, "", "none"):
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_workers() -> int:
    """``--workers`` default: this process's share of the usable cores, less one for the process itself.

    The share divides the cores among the processes torchrun starts on the node
    (``LOCAL_WORLD_SIZE``); at least 1, at most 16. Results never depend on it.
    """
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(16, per_process - 1))


WORKERS_HELP = ("data loader worker processes (default: this process's share of the usable cores, less one). "
                "Results do not depend on it: every random draw of a sample comes from (seed, epoch, index). "
                "Size it as the samples/s the step takes divided by one worker's samples/s, plus one: "
                "python bench/loader.py prints a core's rate (about 2x with --image_backend fast) and the cores "
                "that feed 2,000 samples/s")


# The scripts' --image_backend (data/transforms.py holds both paths; light here, for the parsers).
IMAGE_BACKENDS = ("fast", "pil")
IMAGE_BACKEND_HELP = ("how images are decoded and transformed: 'fast' (torchvision's JPEG decoder, array padding, "
                      "torch's uint8 resize; every pixel within 1 level of 'pil', about twice the images/s per core) "
                      "or 'pil' (the reference's PIL pipeline, exactly its pixels); docs/differences.md")

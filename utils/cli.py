"""Command-line helpers shared by the scripts: reference-style booleans, explicit flags, device."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import nullcontext

import torch


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


def resolve_device(no_cuda: bool, local_rank: int | None = None, gpu: int = 0) -> torch.device:
    """CUDA when available and not refused, else CPU. Under torchrun the local rank picks the GPU."""
    if no_cuda or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank if local_rank is not None else gpu)


def autocast_context(device: torch.device, amp: str):
    """The one place deciding precision: ``nullcontext`` for fp32, else ``torch.autocast``."""
    if amp in (None, "", "none"):
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)

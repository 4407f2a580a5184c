"""Time one optimisation step of FoodSpaceNet on this CPU: the reference's way against train.py's own step.

Run from the repository root: ``python -m bench.train_step`` (defaults: the paper's model,
ResNet-50 at 224 px, BERT 2 x 2 x 768 with mBERT's vocabulary, batch 20; a few minutes on two
cores) or ``python -m bench.train_step --quick`` (tiny sizes, a smoke run of seconds).

Every path runs the same model (same initial weights), the same loss (batch-hard triplet, margin,
intra-modal pool and hardest negative as train.py's defaults), the same four Adam groups and the
same batches:

- ours: exactly what ``train.py`` runs at its default flags, by calling its own functions: the
  optimiser of ``train.build_optimizer`` (``foreach`` Adam) and the step ``train.train_step``
  (zero_grad to None, the loss through ``utils.distributed.gather_with_grad``, the disabled
  ``GradScaler`` of fp32, the ``autocast_context`` of ``--amp none``), channels_last model and
  images (``--channels_last true``), token rows cut by the data loader's ``collate_skip_bad`` to
  the batch's longest recipe (done outside the timing, as the loader's workers do it beside
  training), transformers' scaled-dot-product attention (the encoder's default).
- reference: the reference code's way, re-created: NCHW fp32 images, every token row padded to
  ``max_len`` (512) and run through BERT in full with the padding masked, transformers' eager
  attention, Adam's single-tensor loop, gradients zeroed in place. The project's text encoder cuts
  columns that are padding in every row; to run the reference's full-length rows this path swaps
  in :class:`ReferenceTextEncoder` (this file only), whose forward is the reference's call: BERT
  over the whole ``(B, max_len)`` row with ``attention_mask = tokens != pad``. Same weights, same
  outputs as the project's encoder (padding is masked either way), the reference's cost.
- ``--variants`` adds train.py's step with another Adam implementation over the same groups:
  ``loop_adam`` (the single-tensor loop, PyTorch's CPU default, what build_optimizer used before it
  asked for ``foreach``) and ``fused_adam`` (``fused=True``: faster still, but not bitwise the same,
  so train.py does not use it). Each variant's final weights are compared bit for bit with ours
  (``same_weights_as_ours``); ``adam_s`` is the time inside ``optimizer.step()``.

Token lengths follow the data: ``--lengths lmdb`` reads the English rows of an LMDB built by
create_lmdb.py at ``--data_path``; ``synthetic`` renders English recipes of the synthetic data set
(``data.synthetic``) and tokenizes them as create_lmdb.py does with a WordPiece vocabulary learnt on
them; ``normal`` is a fallback, a normal law (``--normal_mean`` 200, ``--normal_std`` 100, clipped
to 16..max_len) roughly like Recipe1M with mBERT's tokenizer, an assumption, not a measurement.
``auto`` (default) takes the LMDB if there is one, else the synthetic set. Token ids are random (the
cost does not depend on them); a row is ``[CLS]`` + text + ``[SEP]``, so its length counts both.

Steps are interleaved (reference, ours, variants, reference, ...) after warm-up, so that load from
other processes hits every path alike; before each path's step the global RNG is seeded with the
step's number, so every path draws the same dropout masks. ``CPU s`` is the process's CPU time of
a step (all its threads): with ``--threads 1`` it measures the step's work nearly unaffected by
other processes on the cores. FLOPs per step are counted with ``torch.utils.flop_counter``
(matmuls and convolutions, forward and backward, attention counted through its eager form) on a
copy of each path's model, and compared with the FLOP/s of a large fp32 matmul measured in the
same run (the best of two measurements).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import train
from bench.common import OptimizerClock, run_with_threads, same_state, script_defaults, seed_step
from data.dataset import Sample, collate_skip_bad
from models.foodspace import ArchConfig, FoodSpaceNet
from models.losses import batch_hard_triplet
from models.text_encoder import TextEncoder
from utils.cli import autocast_context
from utils.host import matmul_flops
from utils.runs import DEFAULT_DATA_PATH  # noqa: E402

QUICK_ARCH = dict(image_backbone="resnet18", emb_dim=64, bert_layers=1, bert_heads=2, bert_hidden=64,
                  bert_intermediate=128, vocab_size=1000)
# train.py flags the step depends on (their defaults are what "ours" runs)
SCRIPT_FLAGS = ("lr", "weight_decay", "w2vTrain", "alpha", "intraModalLoss", "ohem", "ohem_warmup", "channels_last",
                "amp")
VARIANTS = {"loop_adam": "ours, loop Adam", "fused_adam": "ours, fused Adam"}


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per path (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per path first (default 1)")
    p.add_argument("--batch_size", type=int, default=20, help="recipes per batch (default 20, the paper's)")
    p.add_argument("--image_size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--backbone", default="resnet50", help="image backbone (default resnet50, the paper's)")
    p.add_argument("--max_len", type=int, default=512, help="token row length the reference pads to (default 512)")
    p.add_argument("--lengths", choices=["auto", "lmdb", "synthetic", "normal"], default="auto",
                   help="where token lengths come from (default auto: the LMDB at --data_path if any, "
                        "else the synthetic data set)")
    p.add_argument("--data_path", default=DEFAULT_DATA_PATH,
                   help="folder of create_lmdb.py's output, for --lengths lmdb/auto (default data/loader_data)")
    p.add_argument("--length_samples", type=int, default=1000,
                   help="recipes read or rendered to estimate the length distribution (default 1000)")
    p.add_argument("--normal_mean", type=float, default=200.0, help="mean of --lengths normal (default 200)")
    p.add_argument("--normal_std", type=float, default=100.0, help="std of --lengths normal (default 100)")
    p.add_argument("--variants", default="",
                   help=f"comma-separated extra paths to time beside ours: {', '.join(VARIANTS)} or all (default none)")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = PyTorch's default (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, lengths and batches (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: resnet18, 64 px, batch 4, BERT 1 x 2 x 64, 1 step, 100 length samples")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    return p


def parse_variants(text: str, known: dict[str, str], flag: str = "--variants") -> list[str]:
    """``"a,b"`` or ``"all"`` -> the variant keys, in ``known``'s order."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"{flag} {text!r}: unknown {', '.join(unknown)} (known: {', '.join(known)}, all)")
    return [k for k in known if k in names]


# --- token lengths -------------------------------------------------------------------------------

def lmdb_lengths(data_path: Path, n: int, max_len: int) -> np.ndarray:
    """Lengths (with [SEP]) of the English rows of the first ``n`` train records of an LMDB."""
    from data.lmdb_format import MANIFEST, RecordError, decode_record, lmdb_dir, open_lmdb_readonly

    manifest = data_path / MANIFEST
    if not manifest.is_file():
        raise SystemExit(f"--lengths lmdb: {manifest} not found (build the LMDB with create_lmdb.py)")
    row_len = int(json.loads(manifest.read_text(encoding="utf-8")).get("max_len", max_len))
    env = open_lmdb_readonly(lmdb_dir(data_path, "train"))
    lengths = []
    with env.begin() as txn:
        for key, value in txn.cursor():
            try:
                rec = decode_record(value)
            except RecordError as err:
                raise SystemExit(f"{lmdb_dir(data_path, 'train')}: record {key.decode()!r}: {err}") from err
            row = rec.ids[rec.langs.index("en") if "en" in rec.langs else 0]
            lengths.append(min(int(np.count_nonzero(row)) + 1, row_len))  # + [SEP]
            if len(lengths) >= n:
                break
    env.close()
    if not lengths:
        raise SystemExit(f"--lengths lmdb: {lmdb_dir(data_path, 'train')} holds no record")
    return np.asarray(lengths)


def synthetic_lengths(n: int, max_len: int, seed: int) -> np.ndarray:
    """Lengths of English synthetic recipes as create_lmdb.py builds rows (docs/data.md#the-lmdb-records), + [SEP]."""
    from data.synthetic import Renderer, make_recipe
    from data.tokenizer import train_wordpiece

    renderer = Renderer("en")
    texts = []
    for i in range(n):
        title, ingredients, instructions = renderer.render(make_recipe(seed, i))
        ingredients = [t for t in ingredients if t]
        instructions = [t for t in instructions if t]
        parts = [title + ". ", ". ".join(ingredients) + ". ", ". ".join(instructions)]
        texts.append([part.replace("..", ".") for part in parts])
    tokenizer = train_wordpiece((" ".join(parts) for parts in texts), 4000)
    lengths = [min(2 + sum(len(tokenizer(part, add_special_tokens=False)["input_ids"]) for part in parts), max_len)
               for parts in texts]  # [CLS] + parts + [SEP]
    return np.asarray(lengths)


def token_lengths(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The length sample and a line saying where it came from."""
    source, data_path = args.lengths, Path(args.data_path)
    if source == "auto":
        source = "lmdb" if (data_path / "train_lmdb").is_dir() else "synthetic"
    if source == "lmdb":
        return lmdb_lengths(data_path, args.length_samples, args.max_len), f"LMDB {data_path} (train, English rows)"
    if source == "synthetic":
        return (synthetic_lengths(args.length_samples, args.max_len, args.seed),
                f"synthetic data set (data.synthetic seed {args.seed}, English, WordPiece vocabulary learnt on it)")
    rng = np.random.default_rng([args.seed, 1])
    sample = rng.normal(args.normal_mean, args.normal_std, args.length_samples)
    return (np.clip(np.rint(sample), 16, args.max_len).astype(int),
            f"normal({args.normal_mean:g}, {args.normal_std:g}) clipped to 16..{args.max_len} (an assumption)")


def describe_lengths(lengths: np.ndarray, batch_size: int, seed: int) -> str:
    """Summary, histogram and the mean longest row of a batch (what the trimmed path pays for)."""
    q = np.percentile(lengths, [0, 10, 50, 90, 100])
    rng = np.random.default_rng([seed, 2])
    batch_max = rng.choice(lengths, size=(2000, batch_size)).max(axis=1)
    lines = [f"  n={len(lengths)} mean={lengths.mean():.1f} std={lengths.std():.1f} "
             f"min/p10/median/p90/max={'/'.join(f'{v:.0f}' for v in q)}; "
             f"mean longest row of a batch of {batch_size}: {batch_max.mean():.1f}"]
    counts, edges = np.histogram(lengths, bins=min(10, max(1, len(np.unique(lengths)))))
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"  {lo:6.0f}-{hi:<6.0f} {'#' * int(round(40 * c / counts.max()))} {c}")
    return "\n".join(lines)


# --- the paths -----------------------------------------------------------------------------------

def make_batches(lengths: np.ndarray, n: int, args: argparse.Namespace, vocab: int):
    """``n`` batches ``(images (B, 3, S, S), tokens (B, max_len))`` with lengths drawn from ``lengths``."""
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 3])
    batches = []
    for _ in range(n):
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
        tokens = torch.zeros(args.batch_size, args.max_len, dtype=torch.long)
        for i, length in enumerate(rng.choice(lengths, size=args.batch_size)):
            tokens[i, :length] = torch.randint(5, vocab, (int(length),), generator=gen)  # ids > specials
        batches.append((images, tokens))
    return batches


class ReferenceTextEncoder(TextEncoder):
    """The reference's text branch: BERT over the whole padded row, padding masked, nothing cut.

    Swapped in (``__class__``) on the reference path's encoder only; same weights and the same
    outputs as :class:`TextEncoder`, which cuts all-padding columns first.
    """

    def forward(self, tokens: torch.Tensor, output_attentions: bool = False) -> torch.Tensor:
        if output_attentions:
            raise ValueError("ReferenceTextEncoder returns no attention maps")
        mask = tokens != self.pad_id  # (B, max_len)
        return self.bert(input_ids=tokens, attention_mask=mask.long()).pooler_output  # (B, H)


def script_args() -> argparse.Namespace:
    """train.py's flags the step depends on, at their defaults (what ``python train.py`` runs with)."""
    return script_defaults(train.get_parser(), SCRIPT_FLAGS)


class ReferencePath:
    """The reference code's way (see the module docstring)."""

    def __init__(self, name: str, model: FoodSpaceNet, a: argparse.Namespace):
        self.name, self.model, self.a = name, model.train(), a
        model.text_encoder.__class__ = ReferenceTextEncoder
        model.text_encoder.bert.set_attn_implementation("eager")
        groups = [{"params": ps} for ps in model.param_groups().values()]
        self.optimizer = torch.optim.Adam(groups, lr=a.lr, weight_decay=a.weight_decay, foreach=False)
        self.clock = OptimizerClock(self.optimizer)

    def inputs(self, images: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, rows  # NCHW, (B, max_len) padded rows

    def step(self, images: torch.Tensor, tokens: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=False)
        img_emb, rec_emb = self.model(images, tokens)
        batch_hard_triplet(img_emb, rec_emb, alpha=self.a.alpha, intra_modal=self.a.intraModalLoss,
                           ohem=self.a.ohem).loss.backward()
        self.optimizer.step()


class ScriptPath:
    """train.py's step at its defaults; ``adam`` = ``"script"`` (build_optimizer's), ``"loop"`` or ``"fused"``."""

    def __init__(self, name: str, model: FoodSpaceNet, a: argparse.Namespace, adam: str = "script"):
        self.name, self.a = name, a
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)  # as train.py's main does
        self.model = model.train()
        self.optimizer = train.build_optimizer(model, lr=a.lr, weight_decay=a.weight_decay, w2v_train=a.w2vTrain)
        if adam != "script":  # the same groups and hyperparameters, another Adam implementation
            groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in self.optimizer.param_groups]
            self.optimizer = torch.optim.Adam(groups, **({"fused": True} if adam == "fused" else {"foreach": False}))
        self.scaler = torch.amp.GradScaler("cpu", enabled=a.amp == "fp16")
        self.ctx = autocast_context(torch.device("cpu"), a.amp)
        self.ohem = a.ohem and a.ohem_warmup <= 0  # epoch 0
        self.clock = OptimizerClock(self.optimizer)

    def inputs(self, images: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the data loader hands train.py: collate_skip_bad's batch (rows cut to the longest)."""
        batch = collate_skip_bad([Sample(img, row, str(i), 0) for i, (img, row) in enumerate(zip(images, rows))])
        return batch.images, batch.tokens

    def step(self, images: torch.Tensor, tokens: torch.Tensor) -> None:
        if self.a.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # train.py's loop does this
        train.train_step(self.model, self.optimizer, self.scaler, images, tokens, ctx=self.ctx, alpha=self.a.alpha,
                         intra_modal=self.a.intraModalLoss, ohem=self.ohem, world_size=1)


def count_flops(path, images: torch.Tensor, tokens: torch.Tensor) -> int:
    """FLOPs of the forward and backward pass of ``path``'s model (matmuls, convolutions; eager attention)."""
    model = copy.deepcopy(path.model)
    model.text_encoder.bert.set_attn_implementation("eager")  # the flop counter does not know CPU sdpa kernels
    images, tokens = path.inputs(images, tokens)
    if isinstance(path, ScriptPath) and path.a.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        img_emb, rec_emb = model(images, tokens)
        batch_hard_triplet(img_emb, rec_emb).loss.backward()
    return counter.get_total_flops()


def run(args: argparse.Namespace) -> dict:
    """Build the paths, time them interleaved, print the table; returns the figures."""
    if min(args.steps, args.batch_size, args.image_size) < 1 or args.warmup < 0 or args.batch_size < 2:
        raise SystemExit("--steps and --image_size must be >= 1, --batch_size >= 2, --warmup >= 0")
    variants = parse_variants(args.variants, VARIANTS)
    arch = dict(QUICK_ARCH) if args.quick else {"image_backbone": args.backbone}
    try:
        cfg = ArchConfig(**arch, max_len=args.max_len)
    except ValueError as err:
        raise SystemExit(f"bench.train_step: {err}") from err
    a = script_args()
    lengths, origin = token_lengths(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {cfg.to_dict()}")
    print(f"batch {args.batch_size}, images {args.image_size} px; token lengths from {origin}:")
    print(describe_lengths(lengths, args.batch_size, args.seed))

    matmul_n = 1024 if args.quick else 2048
    peak = [matmul_flops(matmul_n)]
    torch.manual_seed(args.seed)
    base = FoodSpaceNet(cfg)
    paths = [ReferencePath("reference", copy.deepcopy(base), a), ScriptPath("ours", copy.deepcopy(base), a)]
    paths += [ScriptPath(VARIANTS[v], copy.deepcopy(base), a, adam=v.split("_")[0]) for v in variants]
    del base
    for p in paths:
        print(f"  {p.name}: {type(p.optimizer).__name__} "
              f"foreach={p.optimizer.defaults.get('foreach')} fused={p.optimizer.defaults.get('fused')}")
    batches = make_batches(lengths, args.warmup + args.steps, args, cfg.vocab_size)
    timed = batches[args.warmup:]

    ref, ours = paths[0], paths[1]
    flops = {"reference": [count_flops(ref, *timed[0])] * len(timed),  # every reference row is max_len long
             "ours": [count_flops(ours, *b) for b in timed]}
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    adam: dict[str, list[float]] = {p.name: [] for p in paths}
    cpu: dict[str, list[float]] = {p.name: [] for p in paths}
    for i, (images, rows) in enumerate(tqdm(batches, desc=f"steps ({len(paths)} paths each)", file=sys.stderr)):
        for p in paths:
            x = p.inputs(images, rows)
            seed_step(args.seed, i)
            p.clock.take()
            start, c0 = time.perf_counter(), time.process_time()
            p.step(*x)
            dt, c1 = time.perf_counter() - start, time.process_time()
            if i >= args.warmup:
                times[p.name].append(dt)
                cpu[p.name].append(c1 - c0)
                adam[p.name].append(p.clock.take())
    peak.append(matmul_flops(matmul_n))

    results = {"peak_matmul_flops": max(peak), "peak_measurements": peak, "lengths_source": origin,
               "trimmed_lengths": [int(ours.inputs(*b)[1].shape[1]) for b in timed], "paths": {}}
    print(f"\nmachine fp32 matmul: {max(peak) / 1e9:.1f} GFLOP/s (best of {', '.join(f'{v / 1e9:.1f}' for v in peak)})")
    print(f"token columns per batch: reference {args.max_len}, ours {results['trimmed_lengths']}")
    print(f"{'path':<18} {'s/step (median)':>16} {'images/s':>9} {'CPU s':>7} {'Adam s':>7} {'GFLOP/step':>11} {'GFLOP/s':>8} "
          f"{'of peak':>8}  same weights as ours")
    ours_med = statistics.median(times["ours"])
    for p in paths:
        med = statistics.median(times[p.name])
        f = flops.get(p.name, flops["ours"])  # the variants do ours' work
        achieved = sum(f) / sum(times[p.name])
        row = {"step_s": times[p.name], "median_step_s": med, "images_per_s": args.batch_size / med,
               "cpu_s": cpu[p.name], "median_cpu_s": statistics.median(cpu[p.name]), "adam_s": adam[p.name], "median_adam_s": statistics.median(adam[p.name]),
               "gflop_per_step": sum(f) / len(timed) / 1e9, "achieved_flops": achieved,
               "fraction_of_peak": achieved / max(peak), "time_vs_ours": med / ours_med}
        same = ""
        if p.name not in ("reference", "ours"):
            row["same_weights_as_ours"] = same_state(p.model, ours.model)
            same = "yes (bitwise)" if row["same_weights_as_ours"] else "NO"
        results["paths"][p.name] = row
        print(f"{p.name:<18} {med:>16.3f} {row['images_per_s']:>9.2f} {row['median_cpu_s']:>7.2f} {row['median_adam_s']:>7.3f} "
              f"{row['gflop_per_step']:>11.1f} {achieved / 1e9:>8.1f} {100 * row['fraction_of_peak']:>7.1f}%  {same}")
    ratio = results["paths"]["ours"]["images_per_s"] / results["paths"]["reference"]["images_per_s"]
    pairs = [r / o for r, o in zip(times["reference"], times["ours"])]
    results["speedup"] = ratio
    print(f"speed-up ours / reference: {ratio:.2f}x images/s (per interleaved pair: "
          f"{', '.join(f'{v:.2f}' for v in pairs)}; goal >= 1.2x)")
    return results


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and run the benchmark; ``--quick`` shrinks everything to a smoke run."""
    args = get_parser().parse_args(argv)
    if args.quick:
        args.batch_size, args.image_size, args.length_samples = 4, 64, min(args.length_samples, 100)
        args.steps, args.warmup, args.backbone = min(args.steps, 1), min(args.warmup, 1), "resnet18"
    return run_with_threads(run, args)


if __name__ == "__main__":
    main()

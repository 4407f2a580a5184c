"""Time one optimisation step of FoodSpaceNet on this CPU: the reference's way against ours.

Run from the repository root: ``python -m bench.train_step`` (defaults: the paper's model,
ResNet-50 at 224 px, BERT 2 x 2 x 768 with mBERT's vocabulary, batch 20; a few minutes on two
cores) or ``python -m bench.train_step --quick`` (tiny sizes, a smoke run of seconds).

Both paths run the same model (same initial weights), the same loss (batch-hard triplet), the same
four Adam groups and the same batches:

- reference: NCHW fp32 images, token rows padded to ``max_len`` (512) and attended in full,
  transformers' eager attention, Adam's single-tensor loop, gradients zeroed in place (the
  reference code's setting on the PyTorch of its time);
- ours (the project's default): channels_last images and weights, token rows trimmed to the
  batch's longest recipe (what ``collate_skip_bad`` and the text encoder do), PyTorch's
  scaled-dot-product attention, fused Adam, gradients set to None.

Token lengths follow the data: ``--lengths lmdb`` reads the English rows of an LMDB built by
create_lmdb.py at ``--data_path``; ``synthetic`` renders English recipes of the synthetic data set
(``data.synthetic``) and tokenizes them as create_lmdb.py does with a WordPiece vocabulary learnt on
them; ``normal`` is a fallback, a normal law (``--normal_mean`` 200, ``--normal_std`` 100, clipped
to 16..max_len) roughly like Recipe1M with mBERT's tokenizer, an assumption, not a measurement.
``auto`` (default) takes the LMDB if there is one, else the synthetic set. Token ids are random (the
cost does not depend on them); a row is ``[CLS]`` + text + ``[SEP]``, so its length counts both.

Steps are interleaved (reference, ours, reference, ours...) after warm-up, so that load from other
processes hits both alike. FLOPs per step are counted with ``torch.utils.flop_counter`` (matmuls
and convolutions, forward and backward, attention counted through its eager form) and compared
with the FLOP/s of a large fp32 matmul measured in the same run (the best of two measurements).
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

from bench.common import run_with_threads
from models.foodspace import ArchConfig, FoodSpaceNet
from models.losses import batch_hard_triplet
from utils.host import matmul_flops

QUICK_ARCH = dict(image_backbone="resnet18", emb_dim=64, bert_layers=1, bert_heads=2, bert_hidden=64,
                  bert_intermediate=128, vocab_size=1000)


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
    p.add_argument("--data_path", default="data/loader_data",
                   help="folder of create_lmdb.py's output, for --lengths lmdb/auto (default data/loader_data)")
    p.add_argument("--length_samples", type=int, default=1000,
                   help="recipes read or rendered to estimate the length distribution (default 1000)")
    p.add_argument("--normal_mean", type=float, default=200.0, help="mean of --lengths normal (default 200)")
    p.add_argument("--normal_std", type=float, default=100.0, help="std of --lengths normal (default 100)")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = PyTorch's default (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, lengths and batches (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: resnet18, 64 px, batch 4, BERT 1 x 2 x 64, 1 step, 100 length samples")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    return p


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
    """Lengths of English synthetic recipes as create_lmdb.py builds rows (SPEC section 3), + [SEP]."""
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


# --- the two paths -------------------------------------------------------------------------------

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


class TrainPath:
    """One way of running a training step: a model, an optimiser, and how inputs are laid out."""

    def __init__(self, name: str, model: FoodSpaceNet, *, ours: bool):
        self.name, self.model, self.ours = name, model, ours
        enc = model.text_encoder
        if ours:
            model.to(memory_format=torch.channels_last)  # 4-D conv weights; oneDNN prefers NHWC
        else:
            enc.trim_padding = False
            enc.bert.set_attn_implementation("eager")
        groups = [{"params": ps, "lr": 1e-4} for ps in model.param_groups().values()]
        if not ours:
            self.optimizer = torch.optim.Adam(groups, lr=1e-4, foreach=False)
        else:
            try:
                self.optimizer = torch.optim.Adam(groups, lr=1e-4, fused=True)
            except (RuntimeError, ValueError):  # a build without fused CPU Adam
                self.optimizer = torch.optim.Adam(groups, lr=1e-4, foreach=True)
        model.train()

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lay the batch out as this path does (counted in the step time)."""
        if not self.ours:
            return images, tokens
        keep = int((tokens != 0).sum(dim=1).max())  # the batch's longest recipe, as collate does
        return images.contiguous(memory_format=torch.channels_last), tokens[:, :keep]

    def forward_backward(self, images: torch.Tensor, tokens: torch.Tensor) -> float:
        img_emb, rec_emb = self.model(images, tokens)
        out = batch_hard_triplet(img_emb, rec_emb)
        out.loss.backward()
        return out.loss.detach().item()

    def step(self, images: torch.Tensor, tokens: torch.Tensor) -> float:
        """One optimisation step; returns its wall time in seconds."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=self.ours)
        images, tokens = self.prepare(images, tokens)
        self.forward_backward(images, tokens)
        self.optimizer.step()
        return time.perf_counter() - start

    def count_flops(self, images: torch.Tensor, tokens: torch.Tensor) -> int:
        """FLOPs of the forward and backward pass (matmuls, convolutions; eager attention math)."""
        enc = self.model.text_encoder.bert
        previous = enc.config._attn_implementation
        enc.set_attn_implementation("eager")  # the flop counter does not know CPU sdpa kernels
        try:
            images, tokens = self.prepare(images, tokens)
            with FlopCounterMode(display=False) as counter:
                self.forward_backward(images, tokens)
        finally:
            enc.set_attn_implementation(previous)
            self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def run(args: argparse.Namespace) -> dict:
    """Build both paths, time them interleaved, print the table; returns the figures."""
    if min(args.steps, args.batch_size, args.image_size) < 1 or args.warmup < 0 or args.batch_size < 2:
        raise SystemExit("--steps and --image_size must be >= 1, --batch_size >= 2, --warmup >= 0")
    arch = dict(QUICK_ARCH) if args.quick else {"image_backbone": args.backbone}
    try:
        cfg = ArchConfig(**arch, max_len=args.max_len)
    except ValueError as err:
        raise SystemExit(f"bench.train_step: {err}") from err
    lengths, origin = token_lengths(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {cfg.to_dict()}")
    print(f"batch {args.batch_size}, images {args.image_size} px; token lengths from {origin}:")
    print(describe_lengths(lengths, args.batch_size, args.seed))

    matmul_n = 1024 if args.quick else 2048
    peak = [matmul_flops(matmul_n)]
    torch.manual_seed(args.seed)
    base = FoodSpaceNet(cfg)
    paths = [TrainPath("reference", copy.deepcopy(base), ours=False), TrainPath("ours", base, ours=True)]
    batches = make_batches(lengths, args.warmup + args.steps, args, cfg.vocab_size)
    timed = batches[args.warmup:]

    flops = {p.name: [p.count_flops(*b) for b in (timed if p.ours else timed[:1])] for p in paths}
    flops["reference"] *= len(timed)  # every reference batch has max_len tokens: same FLOPs
    for images, tokens in batches[:args.warmup]:
        for p in paths:
            p.step(images, tokens)
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    for images, tokens in tqdm(timed, desc="timed steps (reference, ours)", file=sys.stderr):
        for p in paths:
            times[p.name].append(p.step(images, tokens))
    peak.append(matmul_flops(matmul_n))

    results = {"peak_matmul_flops": max(peak), "peak_measurements": peak, "lengths_source": origin,
               "trimmed_lengths": [int((t != 0).sum(1).max()) for _, t in timed], "paths": {}}
    print(f"\nmachine fp32 matmul: {max(peak) / 1e9:.1f} GFLOP/s (best of {', '.join(f'{v / 1e9:.1f}' for v in peak)})")
    print(f"token columns per batch: reference {args.max_len}, ours {results['trimmed_lengths']}")
    print(f"{'path':<10} {'s/step (median)':>16} {'images/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} {'of matmul peak':>15}")
    for p in paths:
        med = statistics.median(times[p.name])
        achieved = sum(flops[p.name]) / sum(times[p.name])
        row = {"step_s": times[p.name], "median_step_s": med, "images_per_s": args.batch_size / med,
               "gflop_per_step": sum(flops[p.name]) / len(timed) / 1e9, "achieved_flops": achieved,
               "fraction_of_peak": achieved / max(peak)}
        results["paths"][p.name] = row
        print(f"{p.name:<10} {med:>16.3f} {row['images_per_s']:>9.2f} {row['gflop_per_step']:>11.1f} "
              f"{achieved / 1e9:>8.1f} {100 * row['fraction_of_peak']:>14.1f}%")
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

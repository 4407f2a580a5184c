"""Time one GAN training step (G forward, D update, G update) on this CPU: the reference's way against GAN_train.py's own step.

Run from the repository root: ``python -m bench.gan_step`` (defaults: the paper's sizes, batch 48,
128 px images, G 21.1 M and D 21.2 M parameters, the frozen FoodSpace image encoder a ResNet-50 at
224 px with random weights; minutes per step on two shared cores) or ``python -m bench.gan_step
--quick`` (tiny sizes, a smoke run of some seconds).

Every path runs the same networks (same initial weights), the same losses (models/gan_losses.py,
all terms on, cycle weights as GAN_train.py's defaults, 32) and the same batches, in the order of
docs/synthesis.md#the-method: one G forward, the D update on real and detached fake images, then the G update
against the updated D with the generated images upsampled to 224 and encoded by the encoder (eval
mode, gradients flowing through it to G).

- ours: exactly what ``GAN_train.py`` runs at its default flags, by calling its own functions:
  ``GAN_train.build_optimizers`` and ``GAN_train.gan_step`` on a ``GAN_train.Nets`` (disabled
  ``GradScaler`` s of fp32, the ``autocast_context`` of ``--amp none``, no probe), with D's unused
  ``logits_class`` frozen and the encoder frozen by ``models.gan_losses.freeze_encoder`` as the
  script's main and ``models.foodspace.load_image_encoder`` do, every network NCHW. So: the GLU of
  models/gan.py (``F.glu``), the encoder's weights frozen (only the gradient to its input flows),
  D's weights frozen by ``gan_step`` during the G update (only the gradient to its input is
  needed there), ``foreach`` Adam, gradients set to None.
- reference: the reference code's way, re-created: NCHW fp32 everywhere, the reference's GLU (slice,
  sigmoid, multiply: :class:`RefGLU`); the encoder in eval mode but its weights still trainable, as
  the reference's ``load_image_encoder`` leaves them (so every G update computes, and accumulates,
  ResNet-50 weight gradients nobody uses); D's weights trainable during the G update (their
  gradients computed, then thrown away by the next D step); Adam's single-tensor loop, gradients
  zeroed in place.
- ``--variants`` adds GAN_train.py's step with one option changed. Switched back to what the script
  did before it adopted them (both bitwise the same as ours): ``loop_adam`` (Adam's single-tensor
  loop, PyTorch's CPU default, instead of ``foreach``), ``d_trainable`` (a forward pre-hook on D
  makes its weights trainable again for G's update, so their gradients are computed and thrown
  away). Not adopted, because not bitwise the same: ``fused_adam`` (``fused=True`` Adam over the
  same parameters), ``enc_channels_last`` (the frozen encoder's weights and input channels_last).
  Each variant's final G and D are compared bit for bit with ours (``same_weights_as_ours``).

Steps are interleaved (reference, ours, variants, reference, ...) after the warm-up, so that load
from other processes hits every path alike; before each path's step the global RNG is seeded with
the step's number (G's noise is drawn inside the step). Times are medians, the ratio is the
reference's median over ours. ``CPU s`` is the process's CPU time of a step (all its threads): with
``--threads 1`` it measures the step's work nearly unaffected by other processes on the cores.
Phase times (G forward, D step, G step) are printed too; on the script's path they are taken by
hooks (D's first forward of the step, the end of D's optimiser step).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import GAN_train
from bench.common import OptimizerClock, run_with_threads, same_state, script_defaults, seed_step
from bench.train_step import parse_variants
from models.gan import GLU, Discriminator128, GANConfig, Generator
from models.gan_losses import ENCODER_SIZE, class_weights, discriminator_loss, freeze_encoder, generator_loss
from utils.cli import autocast_context

QUICK_GAN = GANConfig(z_dim=10, gf_dim=8, df_dim=8, ef_dim=8, r_num=1, emb_dim=64, num_classes=11)
VARIANTS = {"loop_adam": "ours, loop Adam", "d_trainable": "ours, D trainable", "fused_adam": "ours, fused Adam",
            "enc_channels_last": "ours, encoder cl"}
PHASES = ("G forward", "D step", "G step")
# GAN_train.py flags the step depends on (their defaults are what "ours" runs)
SCRIPT_FLAGS = ("lr", "weight_decay", "W_IMG_IMG_COS_LOSS", "W_IMG_REC_COS_LOSS", "amp")


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.gan_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_size", type=int, default=48, help="images per batch (default 48, GAN_train.py's)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per path (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per path first (default 1)")
    p.add_argument("--backbone", default="resnet50",
                   help="backbone of the frozen image encoder (default resnet50, the paper's)")
    p.add_argument("--variants", default="",
                   help=f"comma-separated extra paths to time beside ours: {', '.join(VARIANTS)} or all (default none)")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = PyTorch's default (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and batches (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: GF_DIM/DF_DIM 8, embDim 64, resnet18 encoder, batch 2, 1 step")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    return p


class RefGLU(nn.Module):
    """The reference's GLU: two slices, a sigmoid and a product (three kernels, two temporaries)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nc = x.size(1) // 2
        return x[:, :nc] * torch.sigmoid(x[:, nc:])


def swap_glu(module: nn.Module) -> nn.Module:
    """Replace every :class:`GLU` in ``module`` by :class:`RefGLU` (same function), in place."""
    for name, child in module.named_children():
        if isinstance(child, GLU):
            setattr(module, name, RefGLU())
        else:
            swap_glu(child)
    return module


class ReferencePath:
    """The reference code's way (see the module docstring)."""

    def __init__(self, name: str, G: Generator, D: Discriminator128, encoder: nn.Module, a: argparse.Namespace):
        self.name, self.a = name, a
        self.G, self.D = swap_glu(G).train(), swap_glu(D).train()
        self.encoder = encoder.eval()  # only eval(): its weights keep requires_grad and collect gradients
        kw = dict(lr=a.lr, betas=(0.5, 0.999), weight_decay=a.weight_decay, foreach=False)
        self.opt_G = torch.optim.Adam(self.G.parameters(), **kw)
        self.opt_D = torch.optim.Adam(self.D.parameters(), **kw)
        self.weight = class_weights(G.cfg.num_classes)
        self.phases: dict[str, list[float]] = {k: [] for k in PHASES}

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One training step on ``batch``; returns its wall time in seconds."""
        G, D, a = self.G, self.D, self.a
        t0 = time.perf_counter()
        z = torch.randn(batch["rec"].shape[0], G.cfg.z_dim)
        fake, mu, logvar = G(batch["rec"], z)  # (B, 3, 128, 128), (B, E), (B, E)
        fake_in = G.to_imagenet(fake)
        t1 = time.perf_counter()
        d = discriminator_loss(D(batch["real"], mu.detach()), D(fake_in.detach(), mu.detach()), batch["labels"],
                               self.weight)
        self.opt_D.zero_grad(set_to_none=False)
        d.loss.backward()
        self.opt_D.step()
        t2 = time.perf_counter()
        out = D(fake_in, mu)
        up = F.interpolate(G.to_imagenet(fake), size=(ENCODER_SIZE, ENCODER_SIZE), mode="bilinear",
                           align_corners=True)  # (B, 3, 224, 224): the reference's nn.Upsample
        gen_emb = self.encoder(up)  # (B, D)
        g = generator_loss(out, batch["labels"], self.weight, mu, logvar, gen_emb=gen_emb, img_emb=batch["img"],
                           rec_emb=batch["rec"], w_img_img=a.W_IMG_IMG_COS_LOSS, w_img_rec=a.W_IMG_REC_COS_LOSS)
        self.opt_G.zero_grad(set_to_none=False)
        g.loss.backward()
        self.opt_G.step()
        t3 = time.perf_counter()
        for key, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
            self.phases[key].append(dt)
        return t3 - t0


class ScriptPath:
    """GAN_train.py's step at its defaults, optionally with one option of ``VARIANTS`` changed."""

    def __init__(self, name: str, G: Generator, D: Discriminator128, encoder: nn.Module, a: argparse.Namespace,
                 variant: str = ""):
        self.name, self.a, self.cfg = name, a, G.cfg
        self.G, self.D = G.train(), D.train()
        D.logits_class.requires_grad_(False)  # as GAN_train.py's main: defined but unused, not optimised
        encoder = freeze_encoder(encoder)  # as utils.encoder_run.load_image_encoder
        encoder.input_size = ENCODER_SIZE
        if variant == "enc_channels_last":
            encoder = encoder.to(memory_format=torch.channels_last)
            encoder.register_forward_pre_hook(lambda _m, x: (x[0].contiguous(memory_format=torch.channels_last),))
        opt_G, opt_D = GAN_train.build_optimizers(G, D, lr=a.lr, weight_decay=a.weight_decay)
        if variant in ("fused_adam", "loop_adam"):  # the same groups and hyperparameters, another Adam
            kw = {"fused": True} if variant == "fused_adam" else {"foreach": False}
            opt_G, opt_D = (torch.optim.Adam([{k: v for k, v in g.items() if k not in ("foreach", "fused")}
                                              for g in opt.param_groups], **kw) for opt in (opt_G, opt_D))
        scaler = lambda: torch.amp.GradScaler("cpu", enabled=a.amp == "fp16")  # noqa: E731
        self.nets = GAN_train.Nets(G, D, encoder, opt_G, opt_D, scaler(), scaler())
        self.ctx = autocast_context(torch.device("cpu"), a.amp)
        self.weight = class_weights(G.cfg.num_classes)
        self.phases: dict[str, list[float]] = {k: [] for k in PHASES}
        self._marks: dict[str, float] = {}  # first D forward, end of D's optimiser step, in this step
        D.register_forward_pre_hook(lambda *_: self._mark("D forward"))
        opt_D.register_step_post_hook(lambda *_: self._mark("D stepped"))
        self.clock = OptimizerClock(opt_G, opt_D)
        if variant == "d_trainable":  # gan_step freezes D's trained weights for G's update: undo it
            trained = [q for q in D.parameters() if q.requires_grad]

            def unfreeze(*_) -> None:
                for q in trained:
                    q.requires_grad_(True)

            D.register_forward_pre_hook(unfreeze)

    def _mark(self, event: str) -> None:
        self._marks.setdefault(event, time.perf_counter())  # returns None: a pre-hook's value would replace D's input

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One ``GAN_train.gan_step`` on ``batch``; returns its wall time in seconds."""
        self._marks.clear()
        t0 = time.perf_counter()
        GAN_train.gan_step(self.nets, self.cfg, batch["real"], batch["rec"], batch["img"], batch["labels"],
                           self.weight, w_img_img=self.a.W_IMG_IMG_COS_LOSS, w_img_rec=self.a.W_IMG_REC_COS_LOSS,
                           ctx=self.ctx)
        t3 = time.perf_counter()
        t1, t2 = self._marks["D forward"], self._marks["D stepped"]
        for key, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
            self.phases[key].append(dt)
        return t3 - t0


def make_batches(n: int, cfg: GANConfig, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """``n`` random batches (real images, recipe and image embeddings, class labels)."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    b = args.batch_size
    return [{"real": torch.randn(b, 3, 128, 128, generator=gen),
             "rec": F.normalize(torch.randn(b, cfg.emb_dim, generator=gen), dim=1),
             "img": F.normalize(torch.randn(b, cfg.emb_dim, generator=gen), dim=1),
             "labels": torch.randint(0, cfg.num_classes, (b,), generator=gen)} for _ in range(n)]


def build_encoder(backbone: str, emb_dim: int) -> nn.Module:
    """The FoodSpace image encoder (models.foodspace.ImageEmbedder) with random weights."""
    from models.foodspace import ArchConfig, ImageEmbedder

    try:
        return ImageEmbedder(ArchConfig(image_backbone=backbone, emb_dim=emb_dim), "none")
    except ValueError as err:
        raise SystemExit(f"bench.gan_step: --backbone {backbone}: {err}") from err


def run(args: argparse.Namespace) -> dict:
    """Build the paths, time them interleaved, print the table; returns the figures."""
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 2:
        raise SystemExit("bench.gan_step: --steps must be >= 1, --warmup >= 0, --batch_size >= 2 (BatchNorm)")
    variants = parse_variants(args.variants, VARIANTS)
    cfg = QUICK_GAN if args.quick else GANConfig()
    a = script_defaults(GAN_train.get_parser(), SCRIPT_FLAGS)

    torch.manual_seed(args.seed)
    G, D = Generator(cfg), Discriminator128(cfg)
    encoder = build_encoder(args.backbone, cfg.emb_dim)
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("G", G), ("D", D), ("encoder", encoder))}
    base = (G, D, encoder)
    paths = [ReferencePath("reference", *copy.deepcopy(base), a), ScriptPath("ours", *copy.deepcopy(base), a)]
    paths += [ScriptPath(VARIANTS[v], *copy.deepcopy(base), a, variant=v) for v in variants]
    del base, G, D, encoder
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size}, "
          f"G {n_params['G']:,} / D {n_params['D']:,} / encoder ({args.backbone}) {n_params['encoder']:,} parameters")
    print(f"GAN config {cfg.to_dict()}; paths: {', '.join(p.name for p in paths)}")

    batches = make_batches(args.warmup + args.steps, cfg, args)
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    cpu: dict[str, list[float]] = {p.name: [] for p in paths}
    for i, batch in enumerate(tqdm(batches, desc=f"steps ({len(paths)} paths each)", file=sys.stderr)):
        if i == args.warmup:
            for p in paths:
                for v in p.phases.values():
                    v.clear()
        for p in paths:
            seed_step(args.seed, i)
            c0 = time.process_time()
            dt = p.step(batch)
            c1 = time.process_time()
            if i >= args.warmup:
                times[p.name].append(dt)
                cpu[p.name].append(c1 - c0)

    results: dict = {"batch_size": args.batch_size, "threads": torch.get_num_threads(), "paths": {}}
    print(f"\n{'path':<18} {'s/step (median)':>15} {'images/s':>9} {'CPU s':>7}  " + "  ".join(f"{k:>10}" for k in PHASES)
          + "  same weights as ours")
    ref_med, ours_med = statistics.median(times["reference"]), statistics.median(times["ours"])
    ours = paths[1]
    for p in paths:
        med = statistics.median(times[p.name])
        phases = {k: statistics.median(v) for k, v in p.phases.items()}
        row = {"step_s": times[p.name], "median_step_s": med, "images_per_s": args.batch_size / med,
               "cpu_s": cpu[p.name], "median_cpu_s": statistics.median(cpu[p.name]), "phases_median_s": phases, "speedup_vs_reference": ref_med / med, "time_vs_ours": med / ours_med}
        same = ""
        if p.name not in ("reference", "ours"):
            row["same_weights_as_ours"] = same_state(p.G, ours.G) and same_state(p.D, ours.D)
            same = "yes (bitwise)" if row["same_weights_as_ours"] else "NO"
        results["paths"][p.name] = row
        print(f"{p.name:<18} {med:>15.2f} {args.batch_size / med:>9.2f} {row['median_cpu_s']:>7.2f}  "
              + "  ".join(f"{v:>10.2f}" for v in phases.values()) + f"  {same}")
    pairs = [r / o for r, o in zip(times["reference"], times["ours"])]
    results["speedup"] = ref_med / ours_med
    print(f"speed-up ours / reference: {results['speedup']:.2f}x (per interleaved pair: "
          f"{', '.join(f'{v:.2f}' for v in pairs)}); the CPU may be shared with other work")
    return results


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and run the benchmark; ``--quick`` shrinks everything to a smoke run."""
    args = get_parser().parse_args(argv)
    if args.quick:
        args.batch_size, args.backbone = 2, "resnet18"
        args.steps, args.warmup = min(args.steps, 1), min(args.warmup, 1)
    return run_with_threads(run, args)


if __name__ == "__main__":
    main()

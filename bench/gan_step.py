"""Time one GAN training step (G forward, D update, G update) on this CPU: the reference's way against ours.

Run from the repository root: ``python -m bench.gan_step`` (defaults: the paper's sizes, batch 48,
128 px images, G 21.1 M and D 21.2 M parameters, the frozen FoodSpace image encoder a ResNet-50 at
224 px with random weights; minutes per step on two shared cores) or ``python -m bench.gan_step
--quick`` (tiny sizes, a smoke run of some seconds).

Every path runs the same networks (same initial weights), the same losses (models/gan_losses.py,
all terms on, cycle weights 32) and the same batches, in the order of SPEC section 6: one G
forward, the D update on real and detached fake images, then the G update against the updated D
with the generated images upsampled to 224 and encoded by the encoder (eval mode, not optimised,
gradients flowing through it to G).

- reference: NCHW fp32 everywhere, the reference's GLU (slice, sigmoid, multiply); the encoder in
  eval mode but its weights still trainable, as the reference's ``load_image_encoder`` leaves them
  (so every G update computes, and accumulates, ResNet-50 weight gradients nobody uses); D's
  weights trainable during the G update (their gradients computed, then thrown away by the next D
  step); Adam's single-tensor loop, gradients zeroed in place;
- ours (the project's default path): the encoder frozen (``models.gan_losses.freeze_encoder``:
  only the input gradient flows through it), D's weights frozen during the G update (only the
  input gradient is needed there), the fused ``F.glu``, fused Adam, gradients set to None, and the
  memory format per network given by ``--ours_formats``: by default G and D NCHW, the encoder
  channels_last. On this 2-core AVX2 CPU (oneDNN), forward + backward at batch 16, best / median
  of 4 interleaved runs: G 6.8 / 10.0 s NCHW against 12.9 / 13.0 s channels_last (its batch norm
  and nearest upsampling are slower in channels_last), the frozen ResNet-50 encoder 11.1 / 11.8 s
  NCHW against 5.7 / 8.8 s channels_last, D 2.2 s either way.

``--ablate`` adds one path per option of ours switched back to the reference's, to see what each
is worth. Steps are interleaved (reference, ours, ...) after the warm-up, so that load from other
processes hits every path alike; times are medians, the ratio is the reference's median over ours.
Phase times (G forward, D step, G step) are printed too.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bench.common import run_with_threads
from models.gan import GLU, Discriminator128, GANConfig, Generator
from models.gan_losses import (
    ENCODER_SIZE,
    class_weights,
    discriminator_loss,
    encode_generated,
    freeze_encoder,
    generator_loss,
)

QUICK_GAN = GANConfig(z_dim=10, gf_dim=8, df_dim=8, ef_dim=8, r_num=1, emb_dim=64, num_classes=11)
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.gan_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_size", type=int, default=48, help="images per batch (default 48, the reference's)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per path (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per path first (default 1)")
    p.add_argument("--backbone", default="resnet50",
                   help="backbone of the frozen image encoder (default resnet50, the paper's)")
    p.add_argument("--ours_formats", default="nchw,nchw,cl",
                   help="memory formats of G, D and the encoder on our path, each nchw or cl "
                        "(channels_last) (default nchw,nchw,cl)")
    p.add_argument("--ablate", action="store_true",
                   help="also time ours with each option switched back to the reference's")
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


@dataclass(frozen=True)
class PathOptions:
    """How one path runs the step."""

    g_format: str = "nchw"
    d_format: str = "nchw"
    enc_format: str = "nchw"
    fused_glu: bool = False
    freeze_encoder_weights: bool = False
    freeze_d_in_g_step: bool = False
    fused_adam: bool = False
    set_to_none: bool = False


REFERENCE = PathOptions()


class GanPath:
    """One way of running a GAN step: G, D, the frozen encoder, two optimisers."""

    def __init__(self, name: str, G: Generator, D: Discriminator128, encoder: nn.Module, opts: PathOptions):
        self.name, self.opts = name, opts
        if not opts.fused_glu:
            swap_glu(G)
            swap_glu(D)
        self.G = G.to(memory_format=FORMATS[opts.g_format]).train()
        self.D = D.to(memory_format=FORMATS[opts.d_format]).train()
        encoder = encoder.to(memory_format=FORMATS[opts.enc_format])
        # the reference only calls eval(): its weights keep requires_grad and collect gradients
        self.encoder = freeze_encoder(encoder) if opts.freeze_encoder_weights else encoder.eval()
        kw = dict(lr=1e-4, betas=(0.5, 0.999))
        if opts.fused_adam:
            self.opt_G = torch.optim.Adam(self.G.parameters(), fused=True, **kw)
            self.opt_D = torch.optim.Adam(self.D.parameters(), fused=True, **kw)
        else:
            self.opt_G = torch.optim.Adam(self.G.parameters(), foreach=False, **kw)
            self.opt_D = torch.optim.Adam(self.D.parameters(), foreach=False, **kw)
        self.weight = class_weights(G.cfg.num_classes)
        self.phases: dict[str, list[float]] = {"G forward": [], "D step": [], "G step": []}

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One training step on ``batch``; returns its wall time in seconds."""
        o, G, D = self.opts, self.G, self.D
        t0 = time.perf_counter()
        real = batch["real"].contiguous(memory_format=FORMATS[o.d_format])  # (B, 3, 128, 128)
        fake, mu, logvar = G(batch["rec"], batch["z"])  # (B, 3, 128, 128), (B, E), (B, E)
        fake_in = G.to_imagenet(fake)
        t1 = time.perf_counter()
        d = discriminator_loss(D(real, mu.detach()), D(fake_in.detach(), mu.detach()), batch["labels"],
                               self.weight)
        self.opt_D.zero_grad(set_to_none=o.set_to_none)
        d.loss.backward()
        self.opt_D.step()
        t2 = time.perf_counter()
        if o.freeze_d_in_g_step:
            D.requires_grad_(False)  # D's weight gradients would be discarded by the next D step
        try:
            out = D(fake_in, mu)
            fake_enc = fake.contiguous(memory_format=FORMATS[o.enc_format])
            if o.freeze_encoder_weights:
                gen_emb = encode_generated(self.encoder, fake_enc, G.cfg.output_space)  # (B, D)
            else:  # encode_generated refuses a trainable encoder: the same computation, by hand
                up = F.interpolate(G.to_imagenet(fake_enc), size=(ENCODER_SIZE, ENCODER_SIZE), mode="bilinear",
                                   align_corners=True)  # (B, 3, 224, 224)
                gen_emb = self.encoder(up)  # (B, D)
            g = generator_loss(out, batch["labels"], self.weight, mu, logvar, gen_emb=gen_emb,
                               img_emb=batch["img"], rec_emb=batch["rec"])
            self.opt_G.zero_grad(set_to_none=o.set_to_none)
            g.loss.backward()
            self.opt_G.step()
        finally:
            if o.freeze_d_in_g_step:
                D.requires_grad_(True)
        t3 = time.perf_counter()
        for key, dt in zip(self.phases, (t1 - t0, t2 - t1, t3 - t2)):
            self.phases[key].append(dt)
        return t3 - t0


def make_batches(n: int, cfg: GANConfig, emb_dim: int, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """``n`` random batches (real images, recipe and image embeddings, noise, class labels)."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    b = args.batch_size
    return [{"real": torch.randn(b, 3, 128, 128, generator=gen),
             "rec": F.normalize(torch.randn(b, emb_dim, generator=gen), dim=1),
             "img": F.normalize(torch.randn(b, emb_dim, generator=gen), dim=1),
             "z": torch.randn(b, cfg.z_dim, generator=gen),
             "labels": torch.randint(0, cfg.num_classes, (b,), generator=gen)} for _ in range(n)]


def parse_formats(text: str) -> tuple[str, str, str]:
    """``"nchw,nchw,cl"`` -> the G, D and encoder memory formats."""
    parts = [t.strip() for t in text.split(",")]
    if len(parts) != 3 or any(t not in FORMATS for t in parts):
        raise SystemExit(f"--ours_formats {text!r}: expected three of {'/'.join(FORMATS)} "
                         "separated by commas (G, D, encoder)")
    return parts[0], parts[1], parts[2]


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
    g_fmt, d_fmt, e_fmt = parse_formats(args.ours_formats)
    cfg = QUICK_GAN if args.quick else GANConfig()
    ours = PathOptions(g_format=g_fmt, d_format=d_fmt, enc_format=e_fmt, fused_glu=True, freeze_encoder_weights=True,
                       freeze_d_in_g_step=True, fused_adam=True, set_to_none=True)
    variants = {"reference": REFERENCE, "ours": ours}
    if args.ablate:
        variants["ours, G nchw" if g_fmt == "cl" else "ours, G cl"] = replace(ours, g_format="nchw" if g_fmt == "cl" else "cl")
        variants["ours, D nchw" if d_fmt == "cl" else "ours, D cl"] = replace(ours, d_format="nchw" if d_fmt == "cl" else "cl")
        variants["ours, enc nchw" if e_fmt == "cl" else "ours, enc cl"] = replace(
            ours, enc_format="nchw" if e_fmt == "cl" else "cl")
        variants["ours, ref GLU"] = replace(ours, fused_glu=False)
        variants["ours, enc trainable"] = replace(ours, freeze_encoder_weights=False)
        variants["ours, D trainable"] = replace(ours, freeze_d_in_g_step=False)
        variants["ours, loop Adam"] = replace(ours, fused_adam=False, set_to_none=False)

    torch.manual_seed(args.seed)
    G, D = Generator(cfg), Discriminator128(cfg)
    encoder = build_encoder(args.backbone, cfg.emb_dim)
    paths = [GanPath(name, copy.deepcopy(G), copy.deepcopy(D), copy.deepcopy(encoder), opts)
             for name, opts in variants.items()]
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("G", G), ("D", D), ("encoder", encoder))}
    del G, D, encoder
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size}, "
          f"G {n_params['G']:,} / D {n_params['D']:,} / encoder ({args.backbone}) {n_params['encoder']:,} parameters")
    print(f"GAN config {cfg.to_dict()}")
    for p in paths:
        print(f"  {p.name}: {p.opts}")

    batches = make_batches(args.warmup + args.steps, cfg, cfg.emb_dim, args)
    for batch in tqdm(batches[:args.warmup], desc="warm-up", file=sys.stderr):
        for p in paths:
            p.step(batch)
    for p in paths:
        for v in p.phases.values():
            v.clear()
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    for batch in tqdm(batches[args.warmup:], desc=f"timed steps ({len(paths)} paths each)", file=sys.stderr):
        for p in paths:
            times[p.name].append(p.step(batch))

    results: dict = {"batch_size": args.batch_size, "threads": torch.get_num_threads(), "paths": {}}
    header = f"{'path':<18} {'s/step (median)':>15} {'images/s':>9}  " + "  ".join(f"{k:>10}" for k in paths[0].phases)
    print("\n" + header)
    ref_med = statistics.median(times["reference"])
    for p in paths:
        med = statistics.median(times[p.name])
        phases = {k: statistics.median(v) for k, v in p.phases.items()}
        results["paths"][p.name] = {"step_s": times[p.name], "median_step_s": med,
                                    "images_per_s": args.batch_size / med, "phases_median_s": phases,
                                    "speedup_vs_reference": ref_med / med}
        print(f"{p.name:<18} {med:>15.2f} {args.batch_size / med:>9.2f}  "
              + "  ".join(f"{v:>10.2f}" for v in phases.values()))
    pairs = [r / o for r, o in zip(times["reference"], times["ours"])]
    results["speedup"] = ref_med / statistics.median(times["ours"])
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

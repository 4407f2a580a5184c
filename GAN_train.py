"""Train the X-MRS recipe-to-image GAN on a trained FoodSpace, in one process or under torchrun; docs/synthesis.md."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.dataset import BadImageTracker
from data.gan_dataset import GANDataset, GANSample, collate_gan, load_partition_embeddings
from data.langs import parse_language
from models.foodspace import ArchConfig, load_image_encoder
from models.gan import (
    COARSE_PARAMS,
    INPUT_BUFFERS,
    Discriminator128,
    GANConfig,
    Generator,
    add_gan_arch_args,
    imagenet_to_pixels,
)
from models.gan_augment import AUG_OPS, parse_aug
from models.gan_losses import (
    KL_WEIGHT,
    class_weights,
    class_whitening,
    encode_generated,
    whitened_class_means,
    whitening,
)
from models.gan_sampling import generate, noise_mode_help, parse_noise_mode
from models.gan_step import Nets, build_optimizers, gan_step
from pipeline.judge import Judge, load_judge
from utils import distributed as du
from utils import lineage
from utils import training as tr
from utils.checkpoint import PlainConfig, checkpoint_state, load_checkpoint, save_checkpoint, to_plain
from utils.cli import (
    BOOL,
    IMAGE_BACKEND_HELP,
    IMAGE_BACKENDS,
    WORKERS_HELP,
    HelpFormatter,
    default_workers,
    explicit_flags,
    run_main,
    str2bool,
)
from utils.embeddings import embeddings_lineage
from utils.errors import CheckpointError, InputError
from utils.frechet import frechet_distance
from utils.imagenet import normalize_on_device
from utils.io import atomic_write, atomic_write_text
from utils.judge import spread
from utils.metrics import evaluate_retrieval, format_results
from utils.runs import (
    DEFAULT_DATA_PATH,
    DEFAULT_IMG_PATH,
    TextLog,
    encoder_run_opts,
    find_encoder_files,
    gan_ckpt_name,
    new_gan_run_dir,
    shown,
    vectors_command,
)

TRACE_HEADER = ["epoch", "lr", "medR", "R@1", "R@5", "R@10"]
JUDGE_HEADER = ["judge_medR", "judge_R@1", "judge_R@5", "judge_R@10"]  # trace.csv's extra columns with --judge_dir
USAGE = "%(prog)s (--encoder_dir RUN | --resume GAN_RUN) [options]"
# The flags a resumed run takes from the command line; every other flag keeps the run's stored value
# (docs/run_folders.md#resuming-a-run, whose table tests/test_training_scaffold.py checks against this).
RUNTIME_FLAGS = frozenset({
    "epochs", "workers", "max_iters", "amp", "log_every", "max_bad_images", "data_path", "img_path", "no_cuda",
    "device", "grid_n", "r1m_path", "trained_G_model_path",
})


def get_parser() -> argparse.ArgumentParser:
    """The reference's GAN_args.py flags (same names and meanings) plus this project's."""
    p = argparse.ArgumentParser(usage=USAGE, description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("general (the reference's GAN_args.py)")
    g.add_argument("--seed", type=int, default=1234, help="random seed (each rank adds its rank)")
    g.add_argument("--device", nargs="+", default=None,
                   help="CUDA device index, or 'cpu' (several indices: only the first is used; use torchrun)")
    g.add_argument("--resume_G", default="", help="initialise G's weights from this checkpoint or state dict")
    g.add_argument("--resume_D", default="", help="initialise D's weights from this checkpoint or state dict")
    g.add_argument("--language", default="0", help="language of the recipe embeddings (code or number: 0 en, "
                   "1 de-en, 2 ru-en, 3 de, 4 ru, 5 fr)")
    g.add_argument("--img_path", default=None, help="root of the Recipe1M images (default: the encoder run's)")
    g.add_argument("--data_path", default=None, help="folder written by create_lmdb.py (default: the encoder run's)")
    g.add_argument("--r1m_path", default="data/Recipe1M", help=argparse.SUPPRESS)
    start = g.add_mutually_exclusive_group(required=True)  # a new run needs the encoder; a resumed one has it
    start.add_argument("--encoder_dir", default="", help="train.py run folder holding test.py's outputs")
    start.add_argument("--resume", default="", help="GAN_RUN_DIR: continue from its G_last / D_last checkpoints")
    g.add_argument("--workers", type=int, default=default_workers(), help=WORKERS_HELP)
    g.add_argument("--maxImgs", type=int, default=5, help="training draws one of the first maxImgs images")
    g.add_argument("--image_backend", choices=IMAGE_BACKENDS, default="fast", help=IMAGE_BACKEND_HELP)
    g.add_argument("--batch_size", type=int, default=48, help="batch size per process")
    g.add_argument("--imFeatDim", type=int, default=2048,
                   help="image feature size of the encoder (taken from the encoder; checked when given)")
    add_gan_arch_args(p)  # --Z_DIM --DF_DIM --GF_DIM --EMBEDDING_DIM --R_NUM --embDim --numClasses ...
    g = p.add_argument_group("losses and optimisation (the reference's GAN_args.py)")
    g.add_argument("--W_IMG_IMG_COS_LOSS", type=float, default=32.0, help="weight of the image-image cycle term (0: off)")
    g.add_argument("--W_IMG_REC_COS_LOSS", type=float, default=32.0, help="weight of the image-recipe cycle term (0: off)")
    g.add_argument("--W_KL_LOSS", type=float, default=KL_WEIGHT,
                   help="weight of G's conditioning-augmentation KL term (2: the reference; this project's flag)")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of G and D (betas 0.5, 0.999)")
    g.add_argument("--weight_decay", type=float, default=0.0, help="Adam weight decay of G and D")
    g.add_argument("--epochs", type=int, default=300, help="number of epochs")
    g.add_argument("--drop_G_lr_epoch", type=int, default=30, help="G's lr /10 after this 0-based epoch (<= 0: never)")
    g.add_argument("--drop_D_lr_epoch", type=int, default=30, help="D's lr /10 after this 0-based epoch (<= 0: never)")
    g.add_argument("--auto_drop_lr", type=str2bool, metavar=BOOL, default=False,
                   help="instead, halve both lrs after each epoch more than --auto_drop_after_epochs past the best")
    g.add_argument("--auto_drop_times", type=int, default=3, help="at most this many automatic halvings")
    g.add_argument("--auto_drop_after_epochs", type=int, default=10, help="patience (epochs) of the automatic drop")
    g.add_argument("--trained_G_model_path", default="", help=argparse.SUPPRESS)
    g = p.add_argument_group("this project")
    g.add_argument("--no_cuda", "--no-cuda", action="store_true", help="run on the CPU even if CUDA is available")
    g.add_argument("--max_iters", type=int, default=0, help="cap on iterations per epoch (0: no cap; smoke runs)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision (GPU); fp16's loss scaler reads one flag per step (a host sync), bf16 none")
    g.add_argument("--medr", type=int, default=1000, help="validation bag size (docs/evaluation.md)")
    g.add_argument("--val_noise_mode", type=parse_noise_mode, default="BATCH_RANDOM",
                   help=f"noise of validation, seeded with --seed: {noise_mode_help()} (BATCH_RANDOM: the "
                        "reference's; MEAN: z = 0, c = mu)")
    g.add_argument("--grid_n", type=int, default=8, help="val recipes in the fixed-noise grid (0: no grid)")
    g.add_argument("--log_every", type=int, default=50,
                   help="iterations between text log lines; the step's terms are read from the device then (and at the "
                        "end of an epoch), never once per step")
    g.add_argument("--probe_every", type=int, default=0,
                   help="iterations between measurements of each G loss term's gradient at G's output "
                        "(TensorBoard G/grad/<term>; 0: never)")
    g.add_argument("--max_bad_images", type=float, default=0.01,
                   help="fraction of unreadable images of a partition that stops the run")
    g.add_argument("--cycle_aug", type=parse_aug, default=(),
                   help=f"the cycle terms' encoder sees a random view per sample of G's images: none (the "
                        f"reference), all, or a comma list of {', '.join(AUG_OPS)} (docs/synthesis.md)")
    g.add_argument("--D_aug", type=parse_aug, default=(),
                   help="D sees random views (same ops) of real and generated images alike (DiffAugment); none: the "
                        "reference")
    g.add_argument("--D_noise", type=float, default=0.0,
                   help="standard deviation of Gaussian noise added to every image D sees (0: none, the reference)")
    g.add_argument("--W_LAYOUT_LOSS", type=float, default=0.0,
                   help="weight of a term pulling G's image, shrunk to --layout_size, towards the recipe's photo shrunk "
                        "alike: the plate and ground a judge sees (0: off, the reference)")
    g.add_argument("--layout_size", type=int, default=16, help="side in pixels at which --W_LAYOUT_LOSS compares")
    g.add_argument("--cycle_both", action="store_true",
                   help="with --cycle_aug: the cycle terms average over G's image itself and its random view")
    g.add_argument("--cycle_whiten", type=float, default=0.0,
                   help="the cycle terms compare embeddings whitened by the train recipe embeddings' covariance, this "
                        "ridge x its largest eigenvalue added (0: plain cosine, the reference; docs/synthesis.md)")
    g.add_argument("--judge_dir", default="",
                   help="an independent judge (another train.py run on the same LMDB, with test.py's outputs): "
                        "its image encoder also scores the val images each epoch against its recipe embeddings "
                        "(TensorBoard val_judge/*, trace.csv judge_* columns); selection and lr follow the own "
                        "encoder's scores as before")
    return p


# --------------------------------------------------------------------------- schedule


@dataclass
class Schedule(PlainConfig):
    """G's and D's learning rates now, and the automatic halvings done so far."""

    lr_G: float
    lr_D: float
    auto_drops: int = 0


@dataclass
class LrBest(PlainConfig):
    """The best epoch as the reference's --auto_drop_lr sees it: the last epoch that beat the stored recalls.

    An epoch counts as better when any one of its R@1, R@5, R@10 beats the stored one; the stored
    triple is then replaced whole (so the others may go down). Before any epoch: zeros, epoch 0.
    """

    r1: float = 0.0
    r5: float = 0.0
    r10: float = 0.0
    epoch: int = 0


def reference_best(lr_best: LrBest, metrics: dict, epoch: int) -> LrBest:
    """``lr_best`` after ``epoch`` with recalls ``metrics`` (``R@1``, ``R@5``, ``R@10``): the reference's rule."""
    new = (metrics["R@1"], metrics["R@5"], metrics["R@10"])
    if any(a > b for a, b in zip(new, (lr_best.r1, lr_best.r5, lr_best.r10))):
        return LrBest(*map(float, new), epoch=epoch)
    return lr_best


@dataclass
class Best(PlainConfig):
    """The best validation epoch so far (highest R@1 + R@5 + R@10): G_best and D_best hold it."""

    recall_sum: float = -math.inf
    epoch: int = -1
    medR: float = math.inf


def end_of_epoch_lr(args, sched: Schedule, epoch: int, best_epoch: int) -> list[str]:
    """Apply the reference's lr drops after finishing ``epoch`` (0-based); return what happened."""
    events = []
    if args.auto_drop_lr:
        # The reference's rule: no reset after a drop, so a stalled run halves every epoch.
        if sched.auto_drops < args.auto_drop_times and epoch - best_epoch > args.auto_drop_after_epochs:
            sched.lr_G /= 2
            sched.lr_D /= 2
            sched.auto_drops += 1
            events.append(f"auto drop {sched.auto_drops}/{args.auto_drop_times}: lr G {sched.lr_G:.3g}, "
                          f"D {sched.lr_D:.3g}")
        return events
    if args.drop_G_lr_epoch > 0 and epoch == args.drop_G_lr_epoch:
        sched.lr_G /= 10
        events.append(f"lr G -> {sched.lr_G:.3g}")
    if args.drop_D_lr_epoch > 0 and epoch == args.drop_D_lr_epoch:
        sched.lr_D /= 10
        events.append(f"lr D -> {sched.lr_D:.3g}")
    return events


# --------------------------------------------------------------------------- setup helpers


def resolve_args(parser, argv) -> tuple[argparse.Namespace, dict | None, dict | None]:
    """Parse ``argv``; with --resume, the run's stored options except the run-time flags given."""
    args = parser.parse_args(argv)
    if not args.resume:
        args.language = parse_language(args.language)
        return args, None, None
    run = Path(args.resume)
    ckpt_G = load_checkpoint(run / gan_ckpt_name("G", "last"))
    ckpt_D = load_checkpoint(run / gan_ckpt_name("D", "last"))
    if ckpt_G.get("kind") != "gan_G" or ckpt_D.get("kind") != "gan_D" or ckpt_G["epoch"] != ckpt_D["epoch"]:
        raise CheckpointError(f"--resume {run}: G_last and D_last are not a pair of one epoch")
    return tr.apply_resume_opts(parser, argv, args, dict(ckpt_G["opts"]), RUNTIME_FLAGS), ckpt_G, ckpt_D


def init_weights(module: torch.nn.Module, path: str, what: str) -> None:
    """--resume_G / --resume_D: weights only, from our checkpoint or a (reference) state dict."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"--resume_{what}: {err}") from None
    state = state.get("model", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if what == "G":
        # --G_whiten (--G_class_posterior) from a G without it (the reference's): set from this run's data next;
        # --G_coarse_rgb from a G without it: its zeros, so G draws as the one loaded
        state = {**{k: v for k, v in module.state_dict().items() if k in INPUT_BUFFERS + COARSE_PARAMS}, **state}
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # one line: PyTorch lists the keys on several
        raise InputError(f"--resume_{what} {path}: architecture differs: {detail} (give the architecture flags, "
                         "--G_whiten included, of the run that saved it)") from None


def write_trace(path: Path, rows: list[list], header: list[str] = TRACE_HEADER) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_trace(path: Path, last_epoch: int) -> list[list]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return [[int(r[0]), *map(float, r[1:])] for r in rows if r and int(r[0]) <= last_epoch]


def save_grid(pixels: torch.Tensor, path: Path) -> None:
    """Write a (3, H, W) [0, 1] image as PNG atomically."""
    from torchvision.utils import save_image

    with atomic_write(path, "wb") as handle:
        save_image(pixels, handle, format="png")


@torch.no_grad()
def fixed_grid(G: Generator, grid_real: torch.Tensor, grid_embs: torch.Tensor, seed: int, device, ctx) -> torch.Tensor:
    """Real val images (top row) over images generated from their recipes with a fixed noise: (3, H, W)."""
    from torchvision.utils import make_grid

    fakes = []
    generate(G, grid_embs, mode="BATCH_RANDOM", seed=seed, batch_size=len(grid_embs), device=device, ctx=ctx,
             on_batch=lambda start, pixels: fakes.append(pixels))
    return make_grid(torch.cat([imagenet_to_pixels(grid_real), fakes[0]]), nrow=len(grid_embs), padding=2)


# --------------------------------------------------------------------------- setup


@dataclass(kw_only=True)
class GANRun(tr.RunState):
    """A GAN_train.py run between setup and shutdown (the shared part: :class:`utils.training.RunState`)."""

    cfg: GANConfig
    G: Generator  # the weights: validation and checkpoints
    D: Discriminator128
    nets: Nets  # what a step uses: G and D (in DDP under torchrun), the frozen encoder, optimisers, scalers
    loader: DataLoader
    weight: torch.Tensor  # (numClasses,) class weights
    val_rec: torch.Tensor  # (Nv, D) val recipe embeddings
    val_img: torch.Tensor  # (Nv, D) val image embeddings
    grid: tuple[torch.Tensor, torch.Tensor] | None  # the fixed-noise grid's real images and recipes (main process)
    judge: Judge | None
    sched: Schedule
    best: Best
    lr_best: LrBest
    trace: list[list]  # trace.csv's rows (main process)
    opts: dict
    encoder_info: dict  # the encoder used, as checkpoints and opts.json record it
    made_from: dict  # lineage
    cycle_space: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, W) of --cycle_whiten


def load_encoder(args, files, ckpt_G: dict | None, device) -> tuple[torch.nn.Module, ArchConfig, dict]:
    """The frozen image encoder, its architecture and G's lineage, checked before any work.

    The encoder, its embeddings and (resumed) G must come from one checkpoint.
    """
    encoder, enc_ckpt = load_image_encoder(files.encoder, device)
    made_from = lineage.check_gan_inputs(
        (files.encoder, enc_ckpt.get(lineage.KEY)),
        {p: (files.embeddings[p], embeddings_lineage(files.embeddings[p])) for p in ("train", "val")},
        generator=(Path(args.resume) / gan_ckpt_name("G", "last"), ckpt_G.get(lineage.KEY)) if ckpt_G else None,
        fix_encoder=f"the files of --encoder_dir {args.encoder_dir} changed since this GAN run began; start a new "
                    f"one: python GAN_train.py --encoder_dir {args.encoder_dir}",
        fix_embeddings=f"make them again with: {vectors_command(args.encoder_dir, args.language)}")
    return encoder, ArchConfig.from_dict(enc_ckpt["arch"]), made_from


def gan_config(args, given: set[str], arch: ArchConfig, encoder_path: Path, ckpt_G: dict | None) -> GANConfig:
    """G's and D's configuration: the resumed run's, else the flags with the encoder's sizes."""
    if "embDim" in given and args.embDim != arch.emb_dim:
        raise InputError(f"--embDim {args.embDim} differs from the image encoder's embedding size {arch.emb_dim} "
                         f"({encoder_path})")
    if "imFeatDim" in given and args.imFeatDim != arch.image_feat_dim:
        print(f"--imFeatDim {args.imFeatDim}: the encoder's {arch.image_backbone} gives {arch.image_feat_dim}; "
              f"using the encoder's")
    if not ckpt_G:
        args.embDim, args.imFeatDim = arch.emb_dim, arch.image_feat_dim
    try:
        return GANConfig.from_dict(ckpt_G["gan"]) if ckpt_G else GANConfig.from_args(args)
    except ValueError as err:
        raise InputError(str(err)) from None


def load_embeddings(args, files, cfg: GANConfig) -> dict[str, dict]:
    """The train and val embedding files (checked against the LMDB's keys and G's embedding size)."""
    embs = {p: load_partition_embeddings(files.embeddings[p], args.data_path, p) for p in ("train", "val")}
    for p, e in embs.items():
        if e["rec_embeds"].shape[1] != cfg.emb_dim:
            raise InputError(f"{files.embeddings[p]}: embeddings of size {e['rec_embeds'].shape[1]}, G expects "
                             f"{cfg.emb_dim}")
    return embs


def build_networks(args, cfg: GANConfig, device, ckpt_G: dict | None) -> tuple[Generator, Discriminator128]:
    """G and D on ``device``; a new run may take their weights from --resume_G / --resume_D."""
    G, D = Generator(cfg).to(device), Discriminator128(cfg).to(device)
    D.logits_class.requires_grad_(False)  # defined but unused (docs/synthesis.md#the-method): no optimiser, no DDP hook
    if args.resume_G and not ckpt_G:
        init_weights(G, args.resume_G, "G")
    if args.resume_D and not ckpt_G:
        init_weights(D, args.resume_D, "D")
    return G, D


def setup(args, given: set[str], ckpt_G: dict | None, ckpt_D: dict | None) -> GANRun:
    """Check every input, load the data, build G and D, then open the run folder (resumed: restore its state).

    Args:
        given: the flags given on the command line of a new run (checked against the encoder).
    """
    args.val_noise_mode = parse_noise_mode(args.val_noise_mode)
    check_cycle_flags(args)
    lang = args.language
    files = find_encoder_files(args.encoder_dir, lang)
    enc_opts = encoder_run_opts(args.encoder_dir, files.ckpt_name)
    args.data_path = args.data_path or enc_opts.get("data_path") or DEFAULT_DATA_PATH
    args.img_path = args.img_path or enc_opts.get("img_path") or DEFAULT_IMG_PATH
    dist_info, device, ctx = tr.init_process(args.no_cuda, args.device, args.seed, args.amp)
    encoder, arch, made_from = load_encoder(args, files, ckpt_G, device)
    cfg = gan_config(args, given, arch, files.encoder, ckpt_G)
    embs = load_embeddings(args, files, cfg)

    judge = load_judge(args.judge_dir, "val", args.encoder_dir, files, enc_opts, args.data_path, embs["val"]["rec_ids"],
                       lang, device) if args.judge_dir else None
    train_set = GANDataset(args.data_path, args.img_path, "train", embs["train"], train=True, seed=args.seed,
                           max_imgs=args.maxImgs, num_classes=cfg.num_classes, image_backend=args.image_backend,
                           uint8=True)  # normalised on the device in the step
    loader = tr.train_loader(train_set, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                             collate_fn=collate_gan, dist_info=dist_info, device=device,
                             source=files.embeddings["train"])
    val_set = GANDataset(args.data_path, args.img_path, "val", embs["val"], train=False, seed=args.seed,
                         num_classes=cfg.num_classes, image_backend=args.image_backend)  # the grid's images
    G, D = build_networks(args, cfg, device, ckpt_G)
    if cfg.input_whiten > 0 and not ckpt_G:  # a resumed G carries its own (in its state dict)
        set_input_whitening(G, embs["train"], train_set)
    # Every input was checked above: only now does the run folder exist (a failed start leaves nothing).
    run_dir = tr.shared_run_dir(dist_info, args.resume, lambda: new_gan_run_dir(args.encoder_dir))
    log = TextLog(run_dir / "train.txt" if dist_info.is_main else None)
    opt_G, opt_D = build_optimizers(G, D, lr=args.lr, weight_decay=args.weight_decay)
    scalers = [torch.amp.GradScaler(device.type, enabled=args.amp == "fp16") for _ in "GD"]
    sched, best, lr_best = Schedule(lr_G=args.lr, lr_D=args.lr), Best(), LrBest()
    start_epoch, iteration = 0, 0
    if ckpt_G:
        tr.load_states(ckpt_G, model=G, optimizer=opt_G, scaler=scalers[0])
        tr.load_states(ckpt_D, model=D, optimizer=opt_D, scaler=scalers[1])
        sched, best = Schedule.from_dict(ckpt_G["schedule"]), Best.from_dict(ckpt_G["best"])
        lr_best = LrBest.from_dict(ckpt_G["lr_best"]) if "lr_best" in ckpt_G else LrBest(epoch=max(best.epoch, 0))
        start_epoch, iteration = ckpt_G["epoch"] + 1, ckpt_G["iteration"]
        tr.restore_rng(ckpt_G["rng"], dist_info.rank)
    nets = Nets(tr.ddp(G, device, dist_info), tr.ddp(D, device, dist_info), encoder, opt_G, opt_D, *scalers)
    weight = class_weights(cfg.num_classes, device)
    cycle_space = None
    if args.cycle_whiten > 0:  # from the same file on every rank and at every resume: the same numbers
        cycle_space = tuple(t.to(device) for t in whitening(embs["train"]["rec_embeds"], args.cycle_whiten))

    encoder_info = {"path": str(files.encoder), "ckpt_name": files.ckpt_name, "arch": arch.to_dict(),
                    "input_size": encoder.input_size, "embeddings": {p: str(f) for p, f in files.embeddings.items()}}
    opts = to_plain(vars(args))
    writer = tr.open_run_files(run_dir, dist_info, {**opts, "encoder": encoder_info, "gan": cfg.to_dict(),
                                                    lineage.KEY: made_from}, iteration if ckpt_G else None)
    trace, grid = [], None
    if writer is not None:
        trace, grid = read_trace(run_dir / "trace.csv", start_epoch - 1), grid_inputs(val_set, args.grid_n)
        log(f"GAN run {shown(run_dir)} | device {device} | world size {dist_info.world_size} | encoder "
            f"{files.encoder.name} | train {len(train_set)} recipes, val {len(val_set)} | epochs "
            f"{start_epoch}..{args.epochs - 1}")
    tracker = BadImageTracker("train", len(train_set), args.max_bad_images, img_root=args.img_path)
    return GANRun(
        args=args, dist_info=dist_info, device=device, ctx=ctx, run_dir=run_dir, log=log, writer=writer,
        bad_images=tr.BadImages(tracker, log), start_epoch=start_epoch, iteration=iteration, cfg=cfg, G=G, D=D,
        nets=nets, loader=loader, weight=weight, val_rec=_float32(embs["val"]["rec_embeds"]),
        val_img=_float32(embs["val"]["img_embeds"]), grid=grid, judge=judge, sched=sched, best=best,
        lr_best=lr_best, trace=trace, opts=opts, encoder_info=encoder_info, made_from=made_from,
        cycle_space=cycle_space)


def set_input_whitening(G: Generator, train: dict, train_set: GANDataset) -> None:
    """--G_whiten: G's input whitening from the train recipe and image embeddings and their LMDB classes
    (and with --G_class_posterior the whitened class means).

    Both modalities, because G draws from either (GAN_test.py's "from image"): a direction in which a
    recipe and its photos differ counts as within-class spread, so it is not blown up.
    """
    classes = train_set.classes()
    embs = [train["rec_embeds"], train["img_embeds"]]
    try:
        mean, w = class_whitening(embs, [classes, classes], G.cfg.input_whiten)
        if G.cfg.class_posterior:  # --G_class_posterior: each class's mean recipe and image, whitened
            means, mask = whitened_class_means(embs, [classes, classes], mean, w, G.cfg.num_classes)
    except ValueError as err:
        raise InputError(f"--G_whiten: {train_set.lmdb_path}: {err}") from None
    G.set_input_whitening(mean.to(G.in_mean.device), w.to(G.in_w.device))
    if G.cfg.class_posterior:
        G.set_class_means(means.to(G.cls_means.device), mask.to(G.cls_mask.device))


def check_cycle_flags(args) -> None:
    """--cycle_both needs --cycle_aug; --cycle_whiten is a ridge >= 0, --W_KL_LOSS a weight >= 0."""
    if args.cycle_both and not args.cycle_aug:
        raise InputError("--cycle_both averages the cycle terms over G's image and its random view: give --cycle_aug "
                         "too (e.g. --cycle_aug all)")
    if not args.cycle_whiten >= 0:
        raise InputError(f"--cycle_whiten {args.cycle_whiten}: give a ridge >= 0 (0: off; the demo uses 1e-4)")
    if not args.W_KL_LOSS >= 0:
        raise InputError(f"--W_KL_LOSS {args.W_KL_LOSS}: give a weight >= 0 (2: the reference)")


def _float32(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# --------------------------------------------------------------------------- one epoch


def train_epoch(run: GANRun, epoch: int) -> None:
    """Train one epoch (at most ``--max_iters`` steps) at the schedule's lrs (:func:`gan_step` per batch)."""
    args, nets = run.args, run.nets
    for opt, lr in ((nets.opt_G, run.sched.lr_G), (nets.opt_D, run.sched.lr_D)):
        for group in opt.param_groups:
            group["lr"] = lr
    nets.G.train()
    nets.D.train()

    def step(it: int, batch) -> dict:
        real = normalize_on_device(batch.images.to(run.device, non_blocking=True))  # uint8 -> (B, 3, 128, 128) float32
        return gan_step(nets, run.cfg, real, batch.rec_embs.to(run.device, non_blocking=True),
                        batch.img_embs.to(run.device, non_blocking=True), batch.classes.to(run.device, non_blocking=True),
                        run.weight, w_img_img=args.W_IMG_IMG_COS_LOSS, w_img_rec=args.W_IMG_REC_COS_LOSS, ctx=run.ctx,
                        probe=args.probe_every > 0 and it % args.probe_every == 0, as_tensors=True,
                        cycle_aug=tuple(args.cycle_aug), d_aug=tuple(args.D_aug), d_noise=args.D_noise,
                        w_layout=args.W_LAYOUT_LOSS, layout_size=args.layout_size, cycle_both=args.cycle_both,
                        cycle_space=run.cycle_space, w_kl=args.W_KL_LOSS)

    tr.run_epoch(run, run.loader, epoch, step,
                 postfix=lambda last: {"D": f"{last['D/loss']:.3f}", "G": f"{last['G/loss']:.3f}"})


def validate_epoch(args, epoch, G, encoder, val_rec, val_img, device, ctx, writer, log, sched,
                   judge: Judge | None = None) -> dict[str, float]:
    """Generated image -> recipe retrieval on the val split (bags of ``--medr``); logs and returns the metrics.

    Also logged: the Frechet distance between the generated and the real val image embeddings
    (``val/frechet``), and the spread (mean pairwise cosine distance) of the generated embeddings
    beside that of the recipe embeddings they come from: a G that ignores its condition has a spread
    near 0 whatever the recipes. With ``judge``, the same images are also ranked by the judge
    (``val_judge/*``), returned under ``"judge"``.
    """
    judged = []
    gen = generate(G, val_rec, mode=args.val_noise_mode, seed=args.seed, batch_size=args.batch_size,
                   device=device, ctx=ctx, encoder=encoder, desc="val",
                   on_fake=None if judge is None else lambda start, fake: judged.append(
                       encode_generated(judge.encoder, fake, G.cfg.output_space).float().cpu()))  # (Nv, D)
    results = evaluate_retrieval(gen, val_rec, medr=[args.medr], seed=args.seed)
    key = next(iter(results))
    metrics = results[key]["im2rec"]
    fd = frechet_distance(val_img.numpy(), gen.numpy(), shrinkage="auto").distance
    spreads = spread(gen), spread(val_rec)
    log(format_results({key: {"n": results[key]["n"], "bags": results[key]["bags"], "fake2rec": metrics}},
                       title=f"val epoch {epoch}: generated image -> recipe"))
    log(f"val epoch {epoch}: Frechet distance to real images {fd:.4f}; spread of generated embeddings "
        f"{spreads[0]:.4f} (recipes {spreads[1]:.4f})")
    writer.add_scalar("lr/G", sched.lr_G, epoch)
    writer.add_scalar("lr/D", sched.lr_D, epoch)
    for name in ("medR", "R@1", "R@5", "R@10"):
        writer.add_scalar(f"val/{name}", metrics[name], epoch)
    writer.add_scalar("val/frechet", fd, epoch)
    writer.add_scalar("val/spread_generated", spreads[0], epoch)
    writer.add_scalar("val/spread_recipes", spreads[1], epoch)
    if judge is not None:
        gen_j = torch.cat(judged)  # (Nv, D') the judge's embeddings of the same images
        res_j = evaluate_retrieval(gen_j, judge.rec, medr=[args.medr], seed=args.seed)[key]  # the same bags
        log(format_results({key: {"n": res_j["n"], "bags": res_j["bags"], "judge: fake2rec": res_j["im2rec"]}},
                           title=f"val epoch {epoch}: generated image -> recipe, independent judge"))
        for name in ("medR", "R@1", "R@5", "R@10"):
            writer.add_scalar(f"val_judge/{name}", res_j["im2rec"][name], epoch)
        writer.add_scalar("val_judge/spread_generated", spread(gen_j), epoch)
        metrics = {**metrics, "judge": res_j["im2rec"]}
    return metrics


def validate(run: GANRun, epoch: int) -> bool:
    """On the main process: score G on the val split (:func:`validate_epoch`), write the trace row and the grid,
    move the best epoch; returns whether ``epoch`` is the new best (False on the other ranks)."""
    if not run.dist_info.is_main:
        return False
    args, writer = run.args, run.writer
    metrics = validate_epoch(args, epoch, run.G, run.nets.encoder, run.val_rec, run.val_img, run.device, run.ctx,
                             writer, run.log, run.sched, run.judge)
    run.trace.append([epoch, run.sched.lr_G, metrics["medR"], metrics["R@1"], metrics["R@5"], metrics["R@10"]]
                     + ([metrics["judge"][k.removeprefix("judge_")] for k in JUDGE_HEADER] if run.judge else []))
    write_trace(run.run_dir / "trace.csv", run.trace, TRACE_HEADER + (JUDGE_HEADER if run.judge else []))
    if run.grid is not None:
        image = fixed_grid(run.G, run.grid[0], run.grid[1], args.seed, run.device, run.ctx)
        writer.add_image("val/fixed_noise_grid", image, epoch)
        save_grid(image, run.run_dir / f"grid_e{epoch:03d}.png")
    recall_sum = metrics["R@1"] + metrics["R@5"] + metrics["R@10"]
    improved = recall_sum > run.best.recall_sum
    if improved:
        run.best = Best(recall_sum=recall_sum, epoch=epoch, medR=metrics["medR"])
    run.lr_best = reference_best(run.lr_best, metrics, epoch)
    return improved


def advance_schedule(run: GANRun, epoch: int) -> None:
    """After ``epoch``, on every rank: rank 0's best epochs, then the lr drops (:func:`end_of_epoch_lr`)."""
    run.best = Best.from_dict(du.broadcast_object(run.best.to_dict()))  # every rank's lr schedule follows rank 0's
    run.lr_best = LrBest.from_dict(du.broadcast_object(run.lr_best.to_dict()))
    for event in end_of_epoch_lr(run.args, run.sched, epoch, run.lr_best.epoch):
        run.log(f"after epoch {epoch}: {event}")


def save(run: GANRun, epoch: int, improved: bool) -> None:
    """Every epoch ``G_last`` / ``D_last`` (what --resume reads); when ``improved``, ``G_best`` / ``D_best`` too."""

    def write(rngs: list) -> None:
        nets = run.nets
        common = {"gan": run.cfg.to_dict(), "epoch": epoch, "iteration": run.iteration, "best": run.best.to_dict(),
                  "lr_best": run.lr_best.to_dict(), "schedule": run.sched.to_dict(), "rng": rngs, "opts": run.opts,
                  "encoder": run.encoder_info, lineage.KEY: run.made_from}
        state_G = checkpoint_state("gan_G", **common, model=run.G.state_dict(), optimizer=nets.opt_G.state_dict(),
                                   scaler=nets.scaler_G.state_dict())
        state_D = checkpoint_state("gan_D", **common, model=run.D.state_dict(), optimizer=nets.opt_D.state_dict(),
                                   scaler=nets.scaler_D.state_dict())
        save_checkpoint(state_G, run.run_dir / gan_ckpt_name("G", "last"))
        save_checkpoint(state_D, run.run_dir / gan_ckpt_name("D", "last"))
        if improved:
            save_checkpoint(state_G, run.run_dir / gan_ckpt_name("G", "best"))
            save_checkpoint(state_D, run.run_dir / gan_ckpt_name("D", "best"))
            run.log(f"epoch {epoch}: new best (R@1+R@5+R@10 {run.best.recall_sum:.4f}) -> G_best, D_best")

    tr.checkpoint_epoch(run, write)


# --------------------------------------------------------------------------- main


def main(argv=None) -> Path:
    """Train; returns the GAN run folder. Bad input stops with one line naming the file and the fix."""
    return run_main(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> Path:
    parser = get_parser()
    args, ckpt_G, ckpt_D = resolve_args(parser, argv)
    run = setup(args, explicit_flags(parser, argv) if not ckpt_G else set(), ckpt_G, ckpt_D)
    for epoch in range(run.start_epoch, args.epochs):
        train_epoch(run, epoch)
        improved = validate(run, epoch)  # False on the other ranks
        advance_schedule(run, epoch)
        save(run, epoch, improved)
    # Per rank: DDP keeps the replicas identical, so every rank prints the same checksums.
    sums = [float(sum(p.detach().double().sum() for p in m.parameters())) for m in (run.G, run.D)]
    return tr.shutdown(run, f"; parameter sums G {sums[0]:.10e} D {sums[1]:.10e}",
                       f"{run.bad_images.tracker.summary()}; best epoch {run.best.epoch} (R@1+R@5+R@10 "
                       f"{run.best.recall_sum:.4f}); done: {shown(run.run_dir)}")


def grid_inputs(val_set: GANDataset, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``n`` val recipes with a readable image: (n, 3, 128, 128) real images, (n, D) recipe embeddings."""
    real, embs = [], []
    for index in range(len(val_set)):
        if len(real) >= n:
            break
        sample = val_set[index]
        if isinstance(sample, GANSample):
            real.append(sample.image)
            embs.append(sample.rec_emb)
    return (torch.stack(real), torch.stack(embs)) if real else None


if __name__ == "__main__":
    main()

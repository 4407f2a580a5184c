"""Train FoodSpaceNet, the X-MRS retrieval model, in one process or under torchrun; docs/model.md."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data.dataset import BadImageTracker, RecipeImageDataset, collate_skip_bad, read_manifest
from data.langs import parse_language
from models.foodspace import ArchConfig, FoodSpaceNet
from models.losses import batch_hard_triplet
from utils import distributed as du
from utils import lineage
from utils import training as tr
from utils.checkpoint import (
    PlainConfig,
    checkpoint_state,
    load_checkpoint,
    save_checkpoint,
    state_dict_mismatch,
    to_plain,
)
from utils.cli import (
    BOOL,
    IMAGE_BACKEND_HELP,
    IMAGE_BACKENDS,
    WORKERS_HELP,
    HelpFormatter,
    default_workers,
    int_list,
    pin_memory,
    run_main,
    str2bool,
)
from utils.embeddings import extract_embeddings
from utils.errors import InputError
from utils.imagenet import normalize_on_device
from utils.metrics import evaluate_retrieval, format_results
from utils.runs import (
    DEFAULT_DATA_PATH,
    DEFAULT_IMG_PATH,
    LATEST_NAME,
    MODELS_DIR,
    TextLog,
    best_glob,
    best_name,
    new_run_dir,
    shown,
)

GROUPS = ("heads", "vision", "wordemb", "text")
USAGE = "%(prog)s [--data_path DATA --img_path IMAGES | --resume RUN] [options]"
# The flags a resumed run takes from the command line; every other flag keeps the run's stored value
# (docs/run_folders.md#resuming-a-run, whose table tests/test_training_scaffold.py checks against this).
RUNTIME_FLAGS = frozenset({
    "epochs", "workers", "max_iters", "amp", "log_every", "max_bad_images", "data_path", "img_path", "no_cuda",
    "channels_last", "gpu", "runs_dir", "projector_every", "projector_n", "valfreq",
})


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(usage=USAGE, description=__doc__, formatter_class=HelpFormatter)
    b = str2bool
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=1234, help="random seed (each rank adds its rank)")
    g.add_argument("--no_cuda", "--no-cuda", action="store_true", help="train on the CPU even if CUDA is available")
    g.add_argument("--gpu", type=int, default=0, help="CUDA device index (torchrun uses LOCAL_RANK instead)")
    g.add_argument("--experiment_sufix", default="", help="appended to the run folder name")
    g.add_argument("--runs_dir", default="runs", help="folder that holds the run folders")
    g.add_argument("--img_path", default=DEFAULT_IMG_PATH, help="root of the Recipe1M images")
    g.add_argument("--data_path", default=DEFAULT_DATA_PATH, help="folder written by create_lmdb.py")
    g.add_argument("--workers", type=int, default=default_workers(), help=WORKERS_HELP)
    g.add_argument("--model_init_path", default="", help="initialise the weights from this checkpoint")
    g.add_argument("--resume", default="", help="RUN_DIR: continue from RUN_DIR/models/model.pth.tar")
    g.add_argument("--max_iters", type=int, default=0, help="cap on iterations per epoch (0: no cap; smoke runs)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision (GPU); fp16's loss scaler reads one flag per step (a host sync), bf16 none")
    g.add_argument("--channels_last", type=b, metavar=BOOL, default=True, help="channels_last memory format for images")
    g.add_argument("--max_bad_images", type=float, default=0.01,
                   help="fraction of unreadable images of a partition that stops the run")
    g.add_argument("--log_every", type=int, default=50,
                   help="iterations between text log lines; the step's values are read from the device then "
                        "(and at the end of an epoch), never once per step")
    g.add_argument("--projector_every", type=int, default=5,
                   help="write val embeddings to TensorBoard's projector every N validations (0: never)")
    g.add_argument("--projector_n", type=int, default=500, help="embeddings shown in the projector")

    g = p.add_argument_group("model")
    g.add_argument("--embDim", type=int, default=1024, help="FoodSpace dimension")
    g.add_argument("--image_backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"],
                   help="torchvision image backbone")
    g.add_argument("--image_pretrained", default="imagenet",
                   help="'imagenet' (download), 'none', or a path to a backbone state dict")
    g.add_argument("--image_size", type=int, default=224, help="crop size; the resize sizes scale with it")
    g.add_argument("--text_init", default="bert-base-multilingual-cased",
                   help="hub name or local path whose embedding tables initialise BERT's; 'none' for random")
    g.add_argument("--textmodel", default="mBERT", help="recipe encoder (only the BERT encoder, 'mBERT', exists)")
    g.add_argument("--BERT_layers", type=int, default=2, help="transformer layers of the recipe encoder")
    g.add_argument("--BERT_heads", type=int, default=2, help="attention heads of the recipe encoder")
    g.add_argument("--BERT_hidden", type=int, default=768, help="hidden size of the recipe encoder")
    g.add_argument("--BERT_intermediate", type=int, default=3072, help="feed-forward size of the recipe encoder")
    g.add_argument("--w2vInit", type=b, metavar=BOOL, default=True, help=argparse.SUPPRESS)
    g.add_argument("--maxSeqlen", type=int, default=20, help=argparse.SUPPRESS)
    g.add_argument("--maxInsts", type=int, default=20, help=argparse.SUPPRESS)
    g.add_argument("--embtype", default="", help=argparse.SUPPRESS)

    g = p.add_argument_group("data")
    g.add_argument("--maxImgs", type=int, default=5, help="images per recipe to draw from in training")
    g.add_argument("--image_backend", choices=IMAGE_BACKENDS, default="fast", help=IMAGE_BACKEND_HELP)
    g.add_argument("--textinputs", default="title,ingr,inst", help="recipe parts fed to the encoder, in order")
    g.add_argument("--textAug", default="english,de,ru,fr",
                   help="language augmentation tree ('none' or '': English only; add 'mask' to mask tokens)")
    g.add_argument("--language", default="0",
                   help="unused by training (validation is always English, as in the reference); checked and "
                        "kept in opts.json. test.py's --language picks the test language")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=20, help="batch size per process")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help=argparse.SUPPRESS)
    g.add_argument("--weight_decay", type=float, default=0.0, help="Adam weight decay")
    g.add_argument("--epochs", type=int, default=100, help="number of epochs")
    g.add_argument("--start_epoch", type=int, default=0, help="first epoch (0-based; --resume sets it)")
    g.add_argument("--valfreq", type=int, default=1, help="validate when epoch %% valfreq == 0")
    g.add_argument("--w2vTrain", type=b, metavar=BOOL, default=True, help="train the word embeddings (false: frozen for good)")
    g.add_argument("--freeVision", type=b, metavar=BOOL, default=True, help="train the vision backbone from the start")
    g.add_argument("--freeHeads", type=b, metavar=BOOL, default=True, help="train the heads from the start")
    g.add_argument("--freeWordEmb", type=b, metavar=BOOL, default=True, help="train the word embeddings from the start")
    g.add_argument("--freeText", type=b, metavar=BOOL, default=True, help="train the text encoder from the start")
    g.add_argument("--ohem", type=b, metavar=BOOL, default=True, help="hardest negative (true) or mean over negatives")
    g.add_argument("--ohem_warmup", type=int, default=0,
                   help="with --ohem true, average over negatives for this many first epochs, then take the "
                        "hardest (a curriculum for training from random weights; 0, the paper: hardest from the start)")
    g.add_argument("--intraModalLoss", type=b, metavar=BOOL, default=True, help="pool both modalities as negatives")
    g.add_argument("--warmup", type=int_list, default=[1],
                   help="1-based epochs after which heads, vision and word embeddings are released ('': never)")
    g.add_argument("--decayLR", type=int_list, default=[20], help="1-based epochs after which lr is multiplied by 0.1")
    g.add_argument("--alpha", type=float, default=0.3, help="triplet margin")
    g.add_argument("--medr", type=int, default=1000, help="validation bag size (docs/evaluation.md)")
    return p


# --------------------------------------------------------------------------- optimiser state


@dataclass
class Schedule(PlainConfig):
    """Where the lr schedule stands: the decay so far and which groups are free (trained)."""

    lr_scale: float = 1.0
    free: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(GROUPS, True))


@dataclass
class Best(PlainConfig):
    """Best validation so far (the BEST_VAL and BEST_REC checkpoints follow it)."""

    medR: float = math.inf
    recall_sum: float = -math.inf
    validations: int = 0


def initial_schedule(args) -> Schedule:
    """The schedule state of epoch 0: no decay, each group free as its ``--free*`` flag says."""
    return Schedule(free={"heads": args.freeHeads, "vision": args.freeVision, "wordemb": args.freeWordEmb,
                          "text": args.freeText})


def group_lrs(args, state: Schedule) -> dict[str, float]:
    """Learning rate of each group: lr x decay x (1 if the group is free else 0)."""
    base = args.lr * state.lr_scale
    lrs = {name: base * float(state.free[name]) for name in GROUPS}
    if not args.w2vTrain:
        lrs["wordemb"] = 0.0
    return lrs


def end_of_epoch_schedule(args, state: Schedule, epoch: int) -> list[str]:
    """Apply --warmup / --decayLR after finishing ``epoch`` (0-based); return what happened.

    As the reference does, both release heads, vision and word embeddings (the latter stay frozen
    under ``--w2vTrain false``, see :func:`group_lrs`) but never the text encoder: ``--freeText
    false`` freezes it for the whole run.
    """
    events, finished = [], epoch + 1  # the flags are 1-based epochs
    if finished in args.warmup or finished in args.decayLR:
        for name in ("heads", "vision", "wordemb"):
            state.free[name] = True
        events.append("released heads, vision, word embeddings")
    if finished in args.decayLR:
        state.lr_scale *= 0.1
        events.append(f"lr scale -> {state.lr_scale:.3g}")
    return events


def build_optimizer(model: FoodSpaceNet, lr: float, weight_decay: float, w2v_train: bool) -> torch.optim.Adam:
    """Adam over the four named groups of ``GROUPS``; ``w2v_train=False`` freezes the word embeddings for good.

    ``foreach=True`` (PyTorch's default on GPUs; on the CPU its default is the per-tensor loop): the
    same arithmetic, bit for bit (tests/test_bench_paths.py), with one temporary fewer per tensor
    (timed in bench/README.md). ``fused=True`` rounds differently, so it is not used.
    """
    groups = model.param_groups()
    if not w2v_train:
        for param in groups["wordemb"]:
            param.requires_grad_(False)
    return torch.optim.Adam(
        [{"params": [q for q in groups[name] if q.requires_grad], "name": name} for name in GROUPS],
        lr=lr, weight_decay=weight_decay, foreach=True)


def train_step(train_model, optimizer, scaler, images, tokens, *, ctx, alpha: float, intra_modal: bool, ohem: bool,
               world_size: int = 1):
    """One optimisation step on a batch; returns the loss terms (``models.losses.TripletOutput``).

    Args:
        images: (B, 3, S, S) on the device, in the memory format of the model; tokens: (B, T).
    """
    with ctx:
        img_emb, rec_emb = train_model(images, tokens)  # (B, D) each, L2-normalised
    # Negatives come from the global batch; gradients reach this rank's rows only, so the
    # loss is scaled by the world size to undo DDP's gradient averaging.
    out = batch_hard_triplet(du.gather_with_grad(img_emb.float()), du.gather_with_grad(rec_emb.float()),
                             alpha=alpha, intra_modal=intra_modal, ohem=ohem)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out.loss * world_size).backward()
    scaler.step(optimizer)
    scaler.update()
    return out


def set_lrs(optimizer, lrs: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lrs[group["name"]]


# --------------------------------------------------------------------------- setup


@dataclass(kw_only=True)
class TrainRun(tr.RunState):
    """A train.py run between setup and shutdown (the shared part: :class:`utils.training.RunState`)."""

    model: FoodSpaceNet  # the weights: validation and checkpoints
    train_model: torch.nn.Module  # the model, in DistributedDataParallel under torchrun: the training steps
    optimizer: torch.optim.Adam
    scaler: torch.amp.GradScaler
    sched: Schedule
    best: Best
    loader: DataLoader
    val_loader: DataLoader | None  # the main process validates; None elsewhere
    val_tracker: BadImageTracker | None
    val_log: TextLog  # test.txt
    manifest: dict
    opts: dict  # every option, as stored (opts.json, checkpoints)


def resolve_args(parser, argv) -> tuple[argparse.Namespace, dict | None]:
    """Parse ``argv``; with --resume, start from the run's stored options (docs/run_folders.md)."""
    args = parser.parse_args(argv)
    args.language = parse_language(args.language)
    if not args.resume:
        return args, None
    ckpt = load_checkpoint(Path(args.resume) / MODELS_DIR / LATEST_NAME)
    return tr.apply_resume_opts(parser, argv, args, dict(ckpt["opts"]), RUNTIME_FLAGS), ckpt


def make_dataset(args, partition: str, train: bool) -> RecipeImageDataset:
    """The recipes of ``partition``: augmented for training, English rows otherwise.

    Validation reads the English row whatever ``--language`` says, as the reference does (its
    validation loader never receives the language); test.py evaluates other languages.
    """
    return RecipeImageDataset(
        args.data_path, args.img_path, partition, train=train, language="en",
        text_aug=args.textAug, textinputs=args.textinputs, max_imgs=args.maxImgs,
        image_size=args.image_size, seed=args.seed, image_backend=args.image_backend,
        uint8=True)  # (3, S, S) uint8: a quarter of the bytes; the step normalises on its device


def make_val_loader(args, dataset: RecipeImageDataset, device: torch.device) -> DataLoader:
    """The val split in order, every recipe (no partial batch dropped)."""
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                      collate_fn=collate_skip_bad, pin_memory=pin_memory(device),
                      persistent_workers=args.workers > 0)


def build_model(args, vocab_size: int, max_len: int, pad_id: int, arch: dict | None = None) -> FoodSpaceNet:
    cfg = ArchConfig.from_dict(arch) if arch else ArchConfig(
        image_backbone=args.image_backbone, emb_dim=args.embDim, bert_layers=args.BERT_layers,
        bert_heads=args.BERT_heads, bert_hidden=args.BERT_hidden,
        bert_intermediate=args.BERT_intermediate, vocab_size=vocab_size,
        max_len=max_len, pad_id=pad_id)
    pretrained = "none" if arch else args.image_pretrained  # resumed weights come from the checkpoint
    text_init = "none" if arch else args.text_init
    return FoodSpaceNet(cfg, image_pretrained=pretrained, text_init=text_init)


def check_lineage(args, ckpt: dict | None, init: dict | None, manifest: dict) -> None:
    """The weights resumed or initialised from must have been trained on token ids that mean the same."""
    if ckpt:
        lineage.check_lmdb(Path(args.resume) / MODELS_DIR / LATEST_NAME, lineage.lmdb_of(ckpt.get(lineage.KEY)),
                           args.data_path, manifest, arch=ckpt["arch"])
    if init is not None:
        lineage.check_lmdb(args.model_init_path, lineage.lmdb_of(init.get(lineage.KEY)), args.data_path, manifest,
                           flag="--data_path (or --model_init_path)")


def setup(args, ckpt: dict | None) -> TrainRun:
    """Check every input, build data and model, then open the run folder (resumed: restore its state)."""
    dist_info, device, ctx = tr.init_process(args.no_cuda, args.gpu, args.seed, args.amp)
    manifest = read_manifest(args.data_path)  # DatasetError names create_lmdb.py when it is missing
    init = load_checkpoint(args.model_init_path) if args.model_init_path and not ckpt else None
    check_lineage(args, ckpt, init, manifest)

    # Every input is checked before the run folder exists: a failed start leaves nothing behind.
    train_set = make_dataset(args, "train", True)
    loader = tr.train_loader(train_set, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                             collate_fn=collate_skip_bad, dist_info=dist_info, device=device, source=args.data_path)
    val_set = make_dataset(args, "val", False) if dist_info.is_main else None
    model = build_model(args, manifest["vocab_size"], manifest["max_len"], manifest["special_ids"]["pad"],
                        arch=ckpt["arch"] if ckpt else None)
    if init is not None:
        try:
            model.load_state_dict(init["model"])
        except RuntimeError:
            raise InputError(f"--model_init_path {args.model_init_path}: architecture differs: "
                             f"{state_dict_mismatch(model.state_dict(), init['model'])}") from None

    run_dir = tr.shared_run_dir(dist_info, args.resume, lambda: new_run_dir(args.runs_dir, args.experiment_sufix))
    log = TextLog(run_dir / "train.txt" if dist_info.is_main else None)
    model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, w2v_train=args.w2vTrain)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    sched, best, start_epoch, iteration = initial_schedule(args), Best(), args.start_epoch, 0
    if ckpt:
        tr.load_states(ckpt, model=model, optimizer=optimizer, scaler=scaler)
        sched, best = Schedule.from_dict(ckpt["schedule"]), Best.from_dict(ckpt["best"])
        start_epoch, iteration = ckpt["epoch"] + 1, ckpt["iteration"]
        tr.restore_rng(ckpt["rng"], dist_info.rank)
    train_model = tr.ddp(model, device, dist_info)

    opts = to_plain(vars(args))
    writer = tr.open_run_files(run_dir, dist_info, opts, iteration if ckpt else None)
    if writer is not None:
        log(f"run folder {shown(run_dir)} | device {device} | world size {dist_info.world_size} | "
            f"train {len(train_set)} recipes, val {len(val_set)} | epochs {start_epoch}..{args.epochs - 1}")
    train_tracker = BadImageTracker("train", len(train_set), args.max_bad_images, img_root=args.img_path)
    val_tracker = (BadImageTracker("val", len(val_set), args.max_bad_images, img_root=args.img_path)
                   if val_set is not None else None)
    return TrainRun(
        args=args, dist_info=dist_info, device=device, ctx=ctx, run_dir=run_dir, log=log, writer=writer,
        bad_images=tr.BadImages(train_tracker, log), start_epoch=start_epoch, iteration=iteration, model=model,
        train_model=train_model, optimizer=optimizer, scaler=scaler, sched=sched, best=best, loader=loader,
        val_loader=make_val_loader(args, val_set, device) if val_set is not None else None, val_tracker=val_tracker,
        val_log=TextLog(run_dir / "test.txt" if dist_info.is_main else None, echo=False), manifest=manifest,
        opts=opts)


# --------------------------------------------------------------------------- one epoch


def ohem_in(args, epoch: int) -> bool:
    """Whether ``epoch`` takes the hardest negative: from random weights it alone collapses the space,
    so the first ``--ohem_warmup`` epochs average over the negatives."""
    return args.ohem and epoch >= args.ohem_warmup


def train_epoch(run: TrainRun, epoch: int) -> dict[str, float]:
    """Train one epoch with this epoch's group lrs; returns the sums of loss, d_pos, d_neg and ``steps``."""
    args = run.args
    lrs = group_lrs(args, run.sched)
    set_lrs(run.optimizer, lrs)
    run.train_model.train()
    ohem = ohem_in(args, epoch)

    def step(it: int, batch) -> dict:
        images = batch.images.to(run.device, non_blocking=True)  # (B, 3, S, S) uint8
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        images = normalize_on_device(images)  # float32, the values of the float path
        tokens = batch.tokens.to(run.device, non_blocking=True)  # (B, T), T = longest row in the batch
        out = train_step(run.train_model, run.optimizer, run.scaler, images, tokens, ctx=run.ctx, alpha=args.alpha,
                         intra_modal=args.intraModalLoss, ohem=ohem, world_size=run.dist_info.world_size)
        return {"loss": out.loss, "d_pos": out.d_pos, "d_neg": out.d_neg}

    totals = tr.run_epoch(run, run.loader, epoch, step, postfix=lambda last: {"loss": f"{last['loss']:.4f}"})
    if run.writer is not None:
        for name, value in lrs.items():
            run.writer.add_scalar(f"lr/{name}", value, epoch)
    return totals


CHANCE_FRACTION = 0.8  # a val medR above this fraction of chance's ((n + 1) / 2) is no progress
COLLAPSE_TOL = 0.02  # relative to alpha: distances "equal" and the loss "at alpha" within this


def val_progress(medr: float, best_medr: float, n: int) -> bool:
    """Whether a validation shows progress: a better medR than every earlier one, and clearly better than chance."""
    return medr < best_medr and medr < CHANCE_FRACTION * (n + 1) / 2


def not_learning(totals: dict, alpha: float, ohem: bool, ohem_warmup: int, progress: bool | None = None) -> str:
    """A warning when an epoch ended with the space collapsed, else ``""``.

    ``totals`` sums ``loss``, ``d_pos`` and ``d_neg`` over ``steps`` steps; ``progress`` is
    :func:`val_progress` of this epoch's validation (None: none ran). Collapsed: the mean positive
    and negative distances equal and the loss at ``alpha`` (each within ``COLLAPSE_TOL * alpha``),
    and validation shows no progress. From random weights the hardest negative alone can hold the
    space there. A negative closer than the positive means nothing alone: under ``--ohem`` ``d_neg``
    is the hardest negative, often closer than the positive in a model that learns.
    """
    if not totals["steps"] or progress:
        return ""
    loss, d_pos, d_neg = (totals[k] / totals["steps"] for k in ("loss", "d_pos", "d_neg"))
    tol = COLLAPSE_TOL * alpha
    if abs(d_pos - d_neg) > tol or abs(loss - alpha) > tol:
        return ""
    remedy = ("start from pretrained weights (--image_pretrained imagenet, --text_init) or average over the "
              "negatives first (--ohem_warmup N)" if ohem and not ohem_warmup else "check the data and the lr")
    return (f"the embeddings collapsed (mean d_pos {d_pos:.4f} = d_neg {d_neg:.4f}, loss {loss:.4f} = alpha "
            f"{alpha:g}, no val progress): the model is not learning; {remedy}")


def advance_schedule(run: TrainRun, epoch: int, totals: dict, val: Validation | None) -> None:
    """After ``epoch``: warn when the space collapsed (:func:`not_learning`), then apply --warmup / --decayLR."""
    args = run.args
    progress = val.progress if val is not None else None
    warning = not_learning(totals, args.alpha, ohem_in(args, epoch), args.ohem_warmup, progress) \
        if run.writer is not None else ""
    if warning:
        run.log(f"epoch {epoch}: warning: {warning}")
    for event in end_of_epoch_schedule(args, run.sched, epoch):
        run.log(f"after epoch {epoch}: {event}")


# --------------------------------------------------------------------------- validation and checkpoints


@dataclass
class Validation:
    """One validation's image-to-recipe scores (the first bag) and what they improved: :func:`save` reads it."""

    metrics: dict[str, float]  # medR, R@1, R@5, R@10
    recall_sum: float  # R@1 + R@5 + R@10
    improved_val: bool  # medR below every earlier one: a new BEST_VAL
    improved_rec: bool  # recall_sum above every earlier one: a new BEST_REC
    progress: bool  # val_progress: better than before and clearly better than chance


def validate(run: TrainRun, epoch: int) -> Validation | None:
    """On the main process when ``epoch % --valfreq == 0``: embed the val split and run the protocol with
    bags of ``--medr`` (docs/evaluation.md), log it, move the best so far; None otherwise."""
    args, best, writer = run.args, run.best, run.writer
    if not (run.dist_info.is_main and epoch % args.valfreq == 0):
        return None
    thumbs = args.projector_n if args.projector_every else 0
    emb = extract_embeddings(run.model, run.val_loader, run.device, run.ctx, channels_last=args.channels_last,
                             tracker=run.val_tracker, thumbs=thumbs, desc="val")
    results = evaluate_retrieval(emb["img_embeds"], emb["rec_embeds"], medr=[args.medr], seed=args.seed)
    key = next(iter(results))
    metrics = results[key]["im2rec"]
    recall_sum = metrics["R@1"] + metrics["R@5"] + metrics["R@10"]
    for name in ("medR", "R@1", "R@5", "R@10"):
        writer.add_scalar(f"val/{name}", metrics[name], epoch)
    best.validations += 1
    if args.projector_every and (best.validations - 1) % args.projector_every == 0:
        meta = [str(i) for i in emb["rec_ids"][: args.projector_n]]
        writer.add_embedding(torch.from_numpy(emb["img_embeds"][: args.projector_n]), metadata=meta,
                             label_img=emb["thumbs"], global_step=epoch, tag="val_images")
    run.log(format_results(results, title=f"val epoch {epoch}"))
    run.val_log(f"epoch {epoch} " + json.dumps(results))
    val = Validation(metrics, recall_sum, improved_val=metrics["medR"] < best.medR,
                     improved_rec=recall_sum > best.recall_sum,
                     progress=val_progress(metrics["medR"], best.medR, results[key]["n"]))
    best.medR = min(best.medR, metrics["medR"])
    best.recall_sum = max(best.recall_sum, recall_sum)
    return val


def replace_best(models_dir: Path, kind: str, name: str, state: dict) -> None:
    """Write the new BEST_<kind> checkpoint, then remove the older ones (one of each kind kept)."""
    save_checkpoint(state, models_dir / name)
    for old in models_dir.glob(best_glob(kind)):
        if old.name != name:
            old.unlink()


def save(run: TrainRun, epoch: int, val: Validation | None) -> None:
    """Every epoch ``models/model.pth.tar`` (what --resume reads); after a validation that improved, BEST_*."""
    args, models_dir = run.args, run.run_dir / MODELS_DIR

    def write(rngs: list) -> None:
        made_from = lineage.checkpoint_lineage(run.model.state_dict(), run.manifest[lineage.KEY], args.textinputs)
        state = checkpoint_state("foodspace", arch=run.model.cfg.to_dict(), model=run.model.state_dict(),
                                 optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(),
                                 schedule=run.sched.to_dict(), best=run.best.to_dict(), epoch=epoch,
                                 iteration=run.iteration, rng=rngs, opts=run.opts, lineage=made_from)
        save_checkpoint(state, models_dir / LATEST_NAME)
        if val is not None and (val.improved_val or val.improved_rec):
            # Only model.pth.tar resumes; a BEST checkpoint is the weights, the architecture and the metrics.
            slim = checkpoint_state("foodspace", arch=state["arch"], model=state["model"], epoch=epoch,
                                    iteration=run.iteration, best=state["best"], metrics=val.metrics, opts=run.opts,
                                    lineage=made_from)
            for kind, improved in (("VAL", val.improved_val), ("REC", val.improved_rec)):
                if improved:
                    replace_best(models_dir, kind, best_name(kind, epoch, val.metrics["medR"], val.recall_sum), slim)

    tr.checkpoint_epoch(run, write)


# --------------------------------------------------------------------------- main


def main(argv=None) -> Path:
    """Train; returns the run folder. Bad input stops with one line naming the file and the fix."""
    return run_main(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> Path:
    args, ckpt = resolve_args(get_parser(), argv)
    run = setup(args, ckpt)
    for epoch in range(run.start_epoch, args.epochs):
        totals = train_epoch(run, epoch)
        val = validate(run, epoch)  # None unless the main process validates this epoch
        advance_schedule(run, epoch, totals, val)
        save(run, epoch, val)
    trackers = f"{run.bad_images.tracker.summary()}; {run.val_tracker.summary()}" if run.val_tracker else ""
    return tr.shutdown(run, "", trackers, f"done: {shown(run.run_dir)}")


if __name__ == "__main__":
    main()

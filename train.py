"""Train FoodSpaceNet, the X-MRS retrieval model (docs/model.md).

    python train.py --data_path data/loader_data --img_path data/Recipe1M/images
    torchrun --nproc_per_node 4 train.py ...          # DistributedDataParallel, global negatives
    python train.py --resume runs/<timestamp>__train  # continue a run where it stopped

The whole loop is in this file: data, model, optimiser with its four parameter groups, the
epoch loop, validation with the Recipe1M protocol, checkpoints and logs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

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
    autocast_context,
    default_workers,
    int_list,
    resolve_device,
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
    write_opts,
)
from utils.seed import seed_everything

GROUPS = ("heads", "vision", "wordemb", "text")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
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
                        "kept in opts.txt. test.py's --language picks the test language")

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
    same arithmetic, bit for bit, with one temporary fewer per tensor; the Adam phase of a step is
    about 15% faster on a CPU (tests/test_bench_paths.py, ``bench/train_step.py --variants``).
    ``fused=True`` would be faster still but rounds differently, so it is not used.
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


def resolve_args(parser, argv) -> tuple[argparse.Namespace, dict | None]:
    """Parse ``argv``; with --resume, start from the run's stored options (docs/run_folders.md)."""
    args = parser.parse_args(argv)
    args.language = parse_language(args.language)
    if not args.resume:
        return args, None
    ckpt = load_checkpoint(Path(args.resume) / MODELS_DIR / LATEST_NAME)
    return tr.apply_resume_opts(parser, argv, args, dict(ckpt["opts"])), ckpt


def make_loader(args, partition: str, train: bool, dist_info) -> tuple[DataLoader, RecipeImageDataset]:
    """The loader of ``partition``: augmented and shuffled for training, English rows otherwise.

    Validation reads the English row whatever ``--language`` says, as the reference does (its
    validation loader never receives the language); test.py evaluates other languages.
    """
    dataset = RecipeImageDataset(
        args.data_path, args.img_path, partition, train=train, language="en",
        text_aug=args.textAug, textinputs=args.textinputs, max_imgs=args.maxImgs,
        image_size=args.image_size, seed=args.seed, image_backend=args.image_backend,
        uint8=True)  # (3, S, S) uint8: a quarter of the bytes; the step normalises on its device
    sampler = None
    if train:
        # One sampler for one or many processes: its shuffle depends on (seed, epoch) only.
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, shuffle=False,
                        num_workers=args.workers, collate_fn=collate_skip_bad, drop_last=train,
                        pin_memory=torch.cuda.is_available() and not args.no_cuda,
                        persistent_workers=args.workers > 0)  # set_epoch reaches them (shared memory)
    return loader, dataset


def build_model(args, vocab_size: int, max_len: int, pad_id: int, arch: dict | None = None) -> FoodSpaceNet:
    cfg = ArchConfig.from_dict(arch) if arch else ArchConfig(
        image_backbone=args.image_backbone, emb_dim=args.embDim, bert_layers=args.BERT_layers,
        bert_heads=args.BERT_heads, bert_hidden=args.BERT_hidden,
        bert_intermediate=args.BERT_intermediate, vocab_size=vocab_size,
        max_len=max_len, pad_id=pad_id)
    pretrained = "none" if arch else args.image_pretrained  # resumed weights come from the checkpoint
    text_init = "none" if arch else args.text_init
    return FoodSpaceNet(cfg, image_pretrained=pretrained, text_init=text_init)


CHANCE_FRACTION = 0.8  # a val medR above this fraction of chance's ((n + 1) / 2) is no progress
COLLAPSE_TOL = 0.02  # relative to alpha: distances "equal" and the loss "at alpha" within this


def record_steps(rows: list[tuple[int, dict[str, float]]], totals: dict, writer) -> dict[str, float]:
    """Add steps read from the device (``StepScalars.flush``) to ``totals`` and TensorBoard (:func:`write_steps`).

    Returns:
        The last step's values (``{}`` when ``rows`` is empty).
    """
    for _, values in rows:
        for name, value in values.items():
            totals[name] += value
        totals["steps"] += 1
    return tr.write_steps(rows, writer)


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


# --------------------------------------------------------------------------- validation


def validate(args, model, loader, device, ctx, tracker) -> tuple[dict, dict]:
    """Embed the val split and run the protocol with bags of ``--medr`` (docs/evaluation.md)."""
    thumbs = args.projector_n if args.projector_every else 0
    emb = extract_embeddings(model, loader, device, ctx, channels_last=args.channels_last,
                             tracker=tracker, thumbs=thumbs, desc="val")
    results = evaluate_retrieval(emb["img_embeds"], emb["rec_embeds"], medr=[args.medr], seed=args.seed)
    return results, emb


def replace_best(models_dir: Path, kind: str, name: str, state: dict) -> None:
    """Write the new BEST_<kind> checkpoint, then remove the older ones (one of each kind kept)."""
    save_checkpoint(state, models_dir / name)
    for old in models_dir.glob(best_glob(kind)):
        if old.name != name:
            old.unlink()


# --------------------------------------------------------------------------- main


def main(argv=None) -> Path:
    """Train; returns the run folder. Bad input stops with one line naming the file and the fix."""
    return run_main(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> Path:
    parser = get_parser()
    args, ckpt = resolve_args(parser, argv)
    dist_info = du.init_distributed(use_cuda=not args.no_cuda and torch.cuda.is_available())
    device = resolve_device(args.no_cuda, args.gpu, dist_info.local_rank if dist_info.distributed else None)
    seed_everything(args.seed + dist_info.rank)
    ctx = autocast_context(device, args.amp)  # the one place deciding precision

    manifest = read_manifest(args.data_path)  # DatasetError names create_lmdb.py when it is missing
    init = load_checkpoint(args.model_init_path) if args.model_init_path and not ckpt else None
    # The weights resumed or initialised from must have been trained on token ids that mean the same.
    if ckpt:
        lineage.check_lmdb(Path(args.resume) / MODELS_DIR / LATEST_NAME, lineage.lmdb_of(ckpt.get(lineage.KEY)),
                           args.data_path, manifest, arch=ckpt["arch"])
    if init is not None:
        lineage.check_lmdb(args.model_init_path, lineage.lmdb_of(init.get(lineage.KEY)), args.data_path, manifest,
                           flag="--data_path (or --model_init_path)")

    # Every input is checked before the run folder exists: a failed start leaves nothing behind.
    train_loader, train_set = make_loader(args, "train", True, dist_info)
    val_loader, val_set = make_loader(args, "val", False, dist_info) if dist_info.is_main else (None, None)
    if len(train_loader) == 0:
        raise InputError(f"{args.data_path}: {len(train_set)} train recipes make no full batch of --batch_size "
                         f"{args.batch_size} x {dist_info.world_size} process(es)")
    model = build_model(args, manifest["vocab_size"], manifest["max_len"], manifest["special_ids"]["pad"],
                        arch=ckpt["arch"] if ckpt else None)
    if init is not None:
        try:
            model.load_state_dict(init["model"])
        except RuntimeError:
            raise InputError(f"--model_init_path {args.model_init_path}: architecture differs: "
                             f"{state_dict_mismatch(model.state_dict(), init['model'])}") from None

    run_dir = tr.shared_run_dir(dist_info, args.resume, lambda: new_run_dir(args.runs_dir, args.experiment_sufix))
    models_dir = run_dir / MODELS_DIR
    log = TextLog(run_dir / "train.txt" if dist_info.is_main else None)
    val_log = TextLog(run_dir / "test.txt" if dist_info.is_main else None, echo=False)
    model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, w2v_train=args.w2vTrain)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    sched = initial_schedule(args)
    best = Best()
    start_epoch, iteration = args.start_epoch, 0
    local_images = 0  # images this process trained on in this invocation
    if ckpt:
        tr.load_states(ckpt, model=model, optimizer=optimizer, scaler=scaler)
        sched, best = Schedule.from_dict(ckpt["schedule"]), Best.from_dict(ckpt["best"])
        start_epoch, iteration = ckpt["epoch"] + 1, ckpt["iteration"]
        tr.restore_rng(ckpt["rng"], dist_info.rank)
    train_model = model
    if dist_info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    opts = to_plain(vars(args))
    writer = None
    if dist_info.is_main:
        write_opts(run_dir / "opts.txt", opts)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir), purge_step=iteration + 1 if ckpt else None)
        log(f"run folder {shown(run_dir)} | device {device} | world size {dist_info.world_size} | "
            f"train {len(train_set)} recipes, val {len(val_set)} | epochs {start_epoch}..{args.epochs - 1}")
    train_tracker = BadImageTracker("train", len(train_set), args.max_bad_images, img_root=args.img_path)
    val_tracker = (BadImageTracker("val", len(val_set), args.max_bad_images, img_root=args.img_path)
                   if val_set is not None else None)

    for epoch in range(start_epoch, args.epochs):
        lrs = group_lrs(args, sched)
        set_lrs(optimizer, lrs)
        train_set.set_epoch(epoch)
        train_loader.sampler.set_epoch(epoch)
        train_model.train()
        # From random weights the hardest negative alone collapses the space; mean negatives first.
        ohem = args.ohem and epoch >= args.ohem_warmup
        steps = tr.epoch_steps(len(train_loader), args.max_iters)
        bar = tr.progress(steps, epoch, dist_info)
        totals = {"loss": 0.0, "d_pos": 0.0, "d_neg": 0.0, "steps": 0, "skipped": 0}  # this epoch, for the checks
        scalars = tr.StepScalars()
        for it, batch in enumerate(train_loader):
            if it >= steps:
                break
            if batch.bad:
                seen = set(train_tracker.bad)
                train_tracker.update(batch.bad)
                totals["skipped"] += len(batch.bad)
                for item in batch.bad:
                    if item.recipe_id not in seen:
                        log(f"epoch {epoch}: skipping recipe {item.recipe_id}: {item.reason}")
            if not tr.every_rank_has_a_batch(batch.images.shape[0], dist_info):
                bar.update(1)
                continue
            images = batch.images.to(device, non_blocking=True)  # (B, 3, S, S) uint8
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            images = normalize_on_device(images)  # float32, the values of the float path
            tokens = batch.tokens.to(device, non_blocking=True)  # (B, T), T = longest row in the batch
            out = train_step(train_model, optimizer, scaler, images, tokens, ctx=ctx, alpha=args.alpha,
                             intra_modal=args.intraModalLoss, ohem=ohem, world_size=dist_info.world_size)
            iteration += 1
            local_images += images.shape[0]
            bar.update(1)
            # Kept on the device; read every --log_every steps and at the end of the epoch (no sync per step).
            scalars.add(iteration, {"loss": out.loss, "d_pos": out.d_pos, "d_neg": out.d_neg})
            if it % args.log_every == 0:
                last = record_steps(scalars.flush(), totals, writer)
                if writer is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                    log(f"epoch {epoch} iter {it}/{steps} global {iteration} loss {last['loss']:.4f} "
                        f"d_pos {last['d_pos']:.4f} d_neg {last['d_neg']:.4f}")
        record_steps(scalars.flush(), totals, writer)
        bar.close()
        if writer is not None:
            for name, value in lrs.items():
                writer.add_scalar(f"lr/{name}", value, epoch)
            writer.add_scalar("bad_images/train", totals["skipped"], epoch)
            if totals["skipped"]:
                log(f"epoch {epoch}: {totals['skipped']} samples skipped for an unreadable image "
                    f"({train_tracker.summary()} so far)")

        progress = None  # this epoch's validation: see val_progress
        if dist_info.is_main and epoch % args.valfreq == 0:
            results, emb = validate(args, model, val_loader, device, ctx, val_tracker)
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
            table = format_results(results, title=f"val epoch {epoch}")
            log(table)
            val_log(f"epoch {epoch} " + json.dumps(results))
            improved_val = metrics["medR"] < best.medR
            improved_rec = recall_sum > best.recall_sum
            progress = val_progress(metrics["medR"], best.medR, results[key]["n"])
            best.medR = min(best.medR, metrics["medR"])
            best.recall_sum = max(best.recall_sum, recall_sum)
        warning = not_learning(totals, args.alpha, ohem, args.ohem_warmup, progress) if writer is not None else ""
        if warning:
            log(f"epoch {epoch}: warning: {warning}")
        for event in end_of_epoch_schedule(args, sched, epoch):
            log(f"after epoch {epoch}: {event}")

        rngs = tr.gather_rng_states()
        if dist_info.is_main:
            made_from = lineage.checkpoint_lineage(model.state_dict(), manifest[lineage.KEY], args.textinputs)
            state = checkpoint_state("foodspace", arch=model.cfg.to_dict(), model=model.state_dict(),
                                     optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                                     schedule=sched.to_dict(), best=best.to_dict(), epoch=epoch, iteration=iteration,
                                     rng=rngs, opts=opts, lineage=made_from)
            save_checkpoint(state, models_dir / LATEST_NAME)
            if epoch % args.valfreq == 0 and (improved_val or improved_rec):
                # Only model.pth.tar resumes; a BEST checkpoint is the weights, the architecture and the metrics.
                slim = checkpoint_state("foodspace", arch=state["arch"], model=state["model"], epoch=epoch,
                                        iteration=iteration, best=state["best"], metrics=metrics, opts=opts,
                                        lineage=made_from)
                if improved_val:
                    replace_best(models_dir, "VAL", best_name("VAL", epoch, metrics["medR"], recall_sum), slim)
                if improved_rec:
                    replace_best(models_dir, "REC", best_name("REC", epoch, metrics["medR"], recall_sum), slim)
            writer.flush()
        du.barrier()

    print(f"rank {dist_info.rank}/{dist_info.world_size}: trained on {local_images} images", flush=True)
    if writer is not None:
        writer.close()
        log(f"{train_tracker.summary()}; {val_tracker.summary()}")
        log(f"done: {shown(run_dir)}")
    du.cleanup()
    return run_dir


if __name__ == "__main__":
    main()

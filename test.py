"""Embed every split with a trained FoodSpaceNet and evaluate retrieval; docs/evaluation.md."""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from data.langs import LANGS, parse_language
from data.lmdb_format import PART_INGR, PART_TITLE, TOKENIZER_DIR, RecordReader, lmdb_dir, part_text
from data.recipe1m import PARTITIONS, image_path
from utils import lineage
from utils.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from utils.cli import (
    IMAGE_BACKEND_HELP,
    IMAGE_BACKENDS,
    WORKERS_HELP,
    HelpFormatter,
    autocast_context,
    default_workers,
    pin_memory,
    resolve_device,
    run_main,
)
from utils.embeddings import extract_embeddings, load_embeddings, save_embeddings
from utils.errors import CheckpointError, InputError
from utils.io import atomic_write_json
from utils.metrics import METRIC_UNITS, evaluate_retrieval, format_results
from utils.runs import (
    VIS_DIR,
    ckpt_name,
    image_encoder_path,
    is_image_encoder_file,
    run_dir_of,
    shown,
    vectors_name,
)
from utils.seed import seed_everything

if TYPE_CHECKING:
    from models.foodspace import FoodSpaceNet

# The data loader (torchvision) and the model (transformers) are imported where they are first
# needed, after every input has been checked: a bad input is answered in seconds.
CHECKPOINT_KEYS = {"arch": dict, "model": dict, "opts": dict}


USAGE = "%(prog)s (--model_init_path CKPT | --embeddings NPZ) [options]"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(usage=USAGE, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model_init_path", default="",
                   help="checkpoint written by train.py (a glob matching one checkpoint is accepted)")
    p.add_argument("--embeddings", default="", help="evaluate this saved .npz instead of running a model")
    p.add_argument("--partitions", default="test,val,train", help="comma-separated partitions to embed")
    p.add_argument("--language", default="0",
                   help="language code or number (docs/pipeline.md), or 'all' for every language in the LMDB")
    p.add_argument("--medr", type=int, default=0, help="bag size; 0 evaluates 1000 and 10000 (docs/evaluation.md)")
    p.add_argument("--seed", type=int, default=1234, help="seed of Python's random for the bags")
    p.add_argument("--metrics_json", default="", help="write the metrics to this JSON file")
    p.add_argument("--vis", type=int, default=0, help="write retrieval figures for N queries into <run>/vis/")
    p.add_argument("--data_path", default=None, help="folder written by create_lmdb.py (None: the run's)")
    p.add_argument("--img_path", default=None, help="root of the images (None: the run's)")
    p.add_argument("--batch_size", type=int, default=50, help="batch size for embedding")
    p.add_argument("--workers", type=int, default=default_workers(), help=WORKERS_HELP)
    p.add_argument("--image_backend", choices=IMAGE_BACKENDS, default="fast", help=IMAGE_BACKEND_HELP)
    p.add_argument("--no_cuda", "--no-cuda", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision (GPU)")
    p.add_argument("--max_bad_images", type=float, default=0.01,
                   help="fraction of a partition's recipes without a readable image that stops the run")
    return p


def resolve_checkpoint(pattern: str) -> Path:
    """The one training checkpoint that ``pattern`` (a path or a glob) names.

    A plain path is returned as it is (:func:`utils.checkpoint.load_checkpoint` says when it is
    missing); a glob must match exactly one training checkpoint.

    Raises:
        CheckpointError: an exported image encoder, or a glob matching none or several checkpoints.
    """
    if not glob.has_magic(pattern):
        if Path(pattern).is_dir():
            raise CheckpointError(f"--model_init_path {pattern}: a folder, not a checkpoint; give a file such as "
                                  "<run>/models/model_BEST_REC_*.pth.tar")
        if is_image_encoder_file(pattern):
            raise CheckpointError(f"--model_init_path {pattern}: an exported image encoder, no checkpoint "
                                  "(give the training checkpoint models/model*.pth.tar it was exported from)")
        return Path(pattern)
    matches = sorted(p for p in glob.glob(pattern) if not is_image_encoder_file(p))
    if not matches:
        raise CheckpointError(f"--model_init_path {pattern}: no checkpoint matches (image encoders are not "
                              "checkpoints)")
    if len(matches) > 1:
        raise CheckpointError(f"--model_init_path {pattern} matches {len(matches)} checkpoints: "
                              + ", ".join(matches))
    return Path(matches[0])


def check_foodspace_checkpoint(ckpt: dict, path: Path) -> None:
    """Refuse a checkpoint that is not a FoodSpaceNet training checkpoint (one line naming ``path``)."""
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "foodspace":
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a FoodSpaceNet training checkpoint (kind={kind!r}); give one "
                              "that train.py wrote (models/model*.pth.tar)")
    for key, expected in CHECKPOINT_KEYS.items():
        if not isinstance(ckpt.get(key), expected):
            raise CheckpointError(f"{path}: entry {key!r} missing or not a {expected.__name__}; the file is not a "
                                  "complete train.py checkpoint")


def check_args(args) -> None:
    """Refuse flag values that could only fail later (before any file is read)."""
    if bool(args.model_init_path) == bool(args.embeddings):
        raise InputError("give exactly one of --model_init_path and --embeddings")
    for flag, value, low in (("--medr", args.medr, 0), ("--batch_size", args.batch_size, 1),
                             ("--workers", args.workers, 0), ("--vis", args.vis, 0)):
        if value < low:
            raise InputError(f"{flag} {value}: must be >= {low}")
    if not 0.0 <= args.max_bad_images <= 1.0:
        raise InputError(f"--max_bad_images {args.max_bad_images}: must be a fraction in [0, 1]")
    if args.metrics_json and not Path(args.metrics_json).resolve().parent.is_dir():
        raise InputError(f"--metrics_json {args.metrics_json}: its folder does not exist")


def parse_partitions(text: str) -> list[str]:
    """``"test,val"`` -> ``["test", "val"]`` (duplicates dropped); refuses unknown names and an empty list."""
    partitions = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in partitions if p not in PARTITIONS]
    if unknown or not partitions:
        raise InputError(f"--partitions {text!r}: give a comma-separated subset of {', '.join(PARTITIONS)}")
    return partitions


def export_image_encoder(model: FoodSpaceNet, ckpt: dict, path: Path, made_from: dict | None = None) -> None:
    """Save the image branch alone; :func:`models.foodspace.load_image_encoder` loads it.

    ``made_from``: its lineage (:func:`utils.lineage.outputs_lineage`), recorded as ``lineage``.
    """
    extra = {lineage.KEY: made_from} if made_from else {}
    save_checkpoint(checkpoint_state("image_encoder", arch=model.cfg.to_dict(), model=model.image_embedder_state_dict(),
                                     image_size=int(ckpt["opts"].get("image_size", 224)), epoch=ckpt.get("epoch"),
                                     **extra),
                    path)


def figure_recipes(data_path: Path, img_path: Path, partition: str, lang: str):
    """What the retrieval figures show of a recipe: title, first ingredients, first image, from the LMDB."""
    from transformers import AutoTokenizer

    from utils.vis import RecipeView

    tokenizer = AutoTokenizer.from_pretrained(str(Path(data_path) / TOKENIZER_DIR))
    records = RecordReader(lmdb_dir(data_path, partition))

    def view(recipe_id: str) -> RecipeView:
        record = records.get(recipe_id)
        image = image_path(img_path, partition, record.images[0]) if record.images else None
        return RecipeView(part_text(record, tokenizer, lang, PART_TITLE),
                          part_text(record, tokenizer, lang, PART_INGR)[:140], image)

    return view


def evaluate_file(args) -> dict:
    """Evaluate a saved ``--embeddings`` file (refused in one line when malformed)."""
    emb = load_embeddings(args.embeddings)
    if len(emb["rec_ids"]) == 0:
        raise InputError(f"--embeddings {args.embeddings}: holds no recipes; nothing to evaluate")
    results = evaluate_retrieval(emb["img_embeds"], emb["rec_embeds"], medr=[args.medr] if args.medr else None,
                                 seed=args.seed)
    print(format_results(results, title=f"{args.embeddings} ({len(emb['rec_ids'])} recipes)"))
    return results


def main(argv=None) -> dict:
    """Embed and evaluate (or evaluate ``--embeddings``); returns the metrics written by ``--metrics_json``."""
    return run_main(lambda: _main(argv))


def _main(argv) -> dict:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check_args(args)
    if args.embeddings:
        results = evaluate_file(args)
        if args.metrics_json:
            write_metrics(args.metrics_json, results)
        return results

    # Every input is checked before the model is built and anything is embedded or written.
    partitions = parse_partitions(args.partitions)
    ckpt_path = resolve_checkpoint(args.model_init_path)
    ckpt = load_checkpoint(ckpt_path)
    check_foodspace_checkpoint(ckpt, ckpt_path)
    opts = ckpt["opts"]
    data_path, img_path = run_paths(args, opts, ckpt_path)
    datasets = build_datasets(args, opts, data_path, img_path, partitions, ckpt_path)
    languages = list(dict.fromkeys(lang for _, lang in datasets))
    from data.dataset import read_manifest

    # Token ids must mean what they meant in training, or the embeddings are wrong (and replace good ones).
    made_from = lineage.lmdb_of(ckpt.get(lineage.KEY))
    lineage.check_lmdb(ckpt_path, made_from, data_path, read_manifest(data_path), arch=ckpt["arch"])
    fingerprint = lineage.checkpoint_fingerprint(ckpt)

    from torch.utils.data import DataLoader

    from data.dataset import BadImageTracker, collate_skip_bad

    seed_everything(args.seed)
    run_dir = run_dir_of(ckpt_path)
    name = ckpt_name(ckpt_path)
    device = resolve_device(args.no_cuda, args.gpu)
    ctx = autocast_context(device, args.amp)
    model = build_model(ckpt, ckpt_path)
    model.to(device).eval()
    encoder_path = image_encoder_path(ckpt_path)
    export_image_encoder(model, ckpt, encoder_path, lineage.outputs_lineage(fingerprint, name, made_from))
    print(f"image encoder -> {shown(encoder_path)}")

    all_results: dict = {}
    trackers: dict = {}  # one per partition: the languages share the recipes and their images
    for (partition, lang), dataset in datasets.items():
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                            collate_fn=collate_skip_bad, pin_memory=pin_memory(device))
        if partition not in trackers:
            trackers[partition] = BadImageTracker(partition, len(dataset), args.max_bad_images, img_root=img_path)
        tracker = trackers[partition]
        emb = extract_embeddings(model, loader, device, ctx, channels_last=bool(opts.get("channels_last")),
                                 tracker=tracker, desc=f"{partition}/{lang}")
        if len(emb["rec_ids"]) == 0:
            raise InputError(f"no recipe of {partition} has a readable image under {img_path} "
                             f"({tracker.summary()}); check --img_path")
        out = vectors_name(run_dir, name, partition, lang)
        save_embeddings(out, emb["img_embeds"], emb["rec_embeds"], emb["rec_ids"],
                        lineage.outputs_lineage(fingerprint, name, made_from, partition, lang))
        results = evaluate_retrieval(emb["img_embeds"], emb["rec_embeds"],
                                     medr=[args.medr] if args.medr else None, seed=args.seed)
        all_results.setdefault(partition, {})[lang] = results
        print(f"{partition}/{lang}: {len(emb['rec_ids'])} recipes -> {out.name}")
        print(format_results(results, title=f"{partition} / {lang}"))
        if args.vis and partition == "test" and lang == languages[0]:
            from utils.vis import retrieval_figures

            prefix = f"{name}_{partition}_{lang}"  # the checkpoint's name: another one's figures stay
            earlier = [p for p in (run_dir / VIS_DIR).glob(f"{glob.escape(prefix)}_*.png")]
            written = retrieval_figures(emb, figure_recipes(data_path, img_path, partition, lang),
                                        run_dir / VIS_DIR, prefix, args.vis)
            print(f"figures ({args.vis} {partition}/{lang} queries, top 3 each) -> "
                  f"{', '.join(str(p) for p in written)}"
                  + (" (replacing those of an earlier --vis run of this checkpoint)" if earlier else ""))
    print(summary_table(all_results))
    for tracker in trackers.values():
        print(tracker.summary())
    if args.metrics_json:
        write_metrics(args.metrics_json, all_results)
    return all_results


def write_metrics(path: str, results: dict) -> None:
    """``--metrics_json``: the results with their units named under ``"units"`` (recalls are fractions)."""
    atomic_write_json(path, {"units": METRIC_UNITS, **results}, indent=2)
    print(f"metrics -> {shown(path)} (recalls as fractions in [0, 1], medR as a rank; see its \"units\")")


def run_paths(args, opts: dict, ckpt_path: Path) -> tuple[Path, Path]:
    """``--data_path`` and ``--img_path``, else the run's (from the checkpoint's options)."""
    paths = []
    for flag in ("data_path", "img_path"):
        value = getattr(args, flag) or opts.get(flag)
        if not value:
            raise InputError(f"{ckpt_path} records no {flag}: pass --{flag}")
        paths.append(Path(value))
    return paths[0], paths[1]


def build_datasets(args, opts: dict, data_path: Path, img_path: Path, partitions: list[str], ckpt_path: Path):
    """``{(partition, language): RecipeImageDataset}``, every data input checked (nothing read yet).

    Raises:
        data.dataset.DatasetError: no manifest or keys, an empty partition, a language the LMDB
            lacks, an image root without the partitions' folders (each message names the path).
    """
    from data.dataset import DatasetError, ImageRootError, RecipeImageDataset, read_manifest

    def from_run(flag: str) -> str:  # a path taken from the checkpoint may be stale: say where it came from
        return "" if getattr(args, flag) else f" ({flag} recorded in {ckpt_path}; pass --{flag} if it moved)"

    try:
        manifest = read_manifest(data_path)
    except DatasetError as err:
        raise DatasetError(f"{err}{from_run('data_path')}") from None
    try:
        languages = list(manifest["languages"]) if args.language == "all" else [parse_language(args.language)]
    except ValueError as err:
        raise InputError(f"--language: {err}") from None
    missing = [lang for lang in languages if lang not in manifest["languages"]]
    if missing:
        raise InputError(f"--language {missing[0]} is not in {data_path} (it holds {', '.join(manifest['languages'])})")
    datasets = {}
    for partition in partitions:
        try:
            for lang in languages:
                datasets[partition, lang] = RecipeImageDataset(
                    data_path, img_path, partition, train=False, language=lang,
                    textinputs=opts.get("textinputs", "title,ingr,inst"), max_imgs=opts.get("maxImgs", 5),
                    image_size=opts.get("image_size", 224), seed=args.seed, image_backend=args.image_backend,
                    uint8=True)  # normalised on the device by extract_embeddings
        except DatasetError as err:
            flag = "img_path" if isinstance(err, ImageRootError) else "data_path"
            raise type(err)(f"{err}{from_run(flag)}") from None
    return datasets


def build_model(ckpt: dict, ckpt_path: Path) -> FoodSpaceNet:
    """The checkpoint's FoodSpaceNet with its weights (CheckpointError when they do not fit its architecture)."""
    from models.foodspace import ArchConfig, FoodSpaceNet

    try:
        model = FoodSpaceNet(ArchConfig.from_dict(ckpt["arch"]), image_pretrained="none", text_init="none")
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, RuntimeError, KeyError) as err:
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{ckpt_path}: its weights do not fit its architecture ({type(err).__name__}: "
                              f"{reason}); the file is not a complete train.py checkpoint") from None
    return model


def summary_table(all_results: dict) -> str:
    """Every partition, language and bag in one :func:`utils.metrics.format_results` table."""
    rows = {f"{partition}/{lang}/{bag}": entry for partition, per_lang in all_results.items()
            for lang in sorted(per_lang, key=LANGS.index) for bag, entry in per_lang[lang].items()}
    return format_results(rows, title="summary (bag: partition/language/bag size)")


if __name__ == "__main__":
    main()

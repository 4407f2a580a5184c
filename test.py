"""Embed every split with a trained FoodSpaceNet and evaluate retrieval (SPEC sections 1, 5, 8).

    python test.py --model_init_path runs/<run>/models/model_BEST_REC_*.pth.tar
    python test.py --embeddings runs/<run>/foodSpace_vectors_..._test_en.npz --medr 1000

With a checkpoint it rebuilds the model from the checkpoint's own architecture, writes
``foodSpace_vectors_<run timestamp>_<ckpt>_<partition>_<lang>.npz`` into the run folder for each
partition and language, exports ``models/<ckpt>_image_encoder.pth.tar`` (the image branch alone),
and prints medR and R@1/5/10 in both directions for bags of 1k and 10k.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from data.dataset import BadImageTracker, RecipeImageDataset, collate_skip_bad, read_manifest
from data.langs import LANGS, parse_language
from models.foodspace import ArchConfig, FoodSpaceNet
from utils.checkpoint import ENCODER_SUFFIX, is_image_encoder_file, load_checkpoint, save_checkpoint
from utils.cli import autocast_context, resolve_device
from utils.embeddings import extract_embeddings, load_embeddings, save_embeddings
from utils.io import atomic_write_json
from utils.metrics import evaluate_retrieval, format_results
from utils.seed import seed_everything


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_init_path", default="",
                   help="checkpoint written by train.py (a glob matching one checkpoint is accepted)")
    p.add_argument("--embeddings", default="", help="evaluate this saved .npz instead of running a model")
    p.add_argument("--partitions", default="test,val,train", help="comma-separated partitions to embed")
    p.add_argument("--language", default="0",
                   help="language code or number (SPEC section 1), or 'all' for every language in the LMDB")
    p.add_argument("--medr", type=int, default=0, help="bag size; 0 evaluates 1000 and 10000 (SPEC section 5)")
    p.add_argument("--seed", type=int, default=1234, help="seed of Python's random for the bags")
    p.add_argument("--metrics_json", default="", help="write the metrics to this JSON file")
    p.add_argument("--vis", type=int, default=0, help="write retrieval figures for N queries into <run>/vis/")
    p.add_argument("--data_path", default=None, help="folder written by create_lmdb.py (default: the run's)")
    p.add_argument("--img_path", default=None, help="root of the images (default: the run's)")
    p.add_argument("--batch_size", type=int, default=50, help="batch size for embedding")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    p.add_argument("--no_cuda", "--no-cuda", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision (GPU)")
    p.add_argument("--max_bad_images", type=float, default=0.01,
                   help="fraction of unreadable images of a partition that stops the run")
    return p


def resolve_checkpoint(pattern: str) -> Path:
    """The one training checkpoint that ``pattern`` (a path or a glob) names."""
    matches = sorted(p for p in glob.glob(pattern) if not is_image_encoder_file(p))
    if not matches:
        raise SystemExit(f"--model_init_path {pattern}: no checkpoint matches (image encoders are not checkpoints)")
    if len(matches) > 1:
        raise SystemExit(f"--model_init_path {pattern} matches {len(matches)} checkpoints: " + ", ".join(matches))
    return Path(matches[0])


def vectors_name(run_dir: Path, ckpt_name: str, partition: str, lang: str) -> Path:
    """``<run>/foodSpace_vectors_<run timestamp>_<ckpt>_<partition>_<lang>.npz`` (SPEC section 8)."""
    stamp = run_dir.name.split("__")[0]
    return run_dir / f"foodSpace_vectors_{stamp}_{ckpt_name}_{partition}_{lang}.npz"


def export_image_encoder(model: FoodSpaceNet, ckpt: dict, path: Path) -> None:
    """Save the image branch alone; :class:`models.foodspace.ImageEmbedder` loads it."""
    save_checkpoint({"format": 1, "kind": "image_encoder", "arch": model.cfg.to_dict(),
                     "model": model.image_embedder_state_dict(),
                     "image_size": int(ckpt["opts"].get("image_size", 224)), "epoch": ckpt.get("epoch")}, path)


def evaluate_file(args) -> dict:
    emb = load_embeddings(args.embeddings)
    results = evaluate_retrieval(emb["img_embeds"], emb["rec_embeds"], medr=[args.medr] if args.medr else None,
                                 seed=args.seed)
    print(format_results(results, title=f"{args.embeddings} ({len(emb['rec_ids'])} recipes)"))
    return results


def main(argv=None) -> dict:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.model_init_path) == bool(args.embeddings):
        raise SystemExit("give exactly one of --model_init_path and --embeddings")
    if args.embeddings:
        results = evaluate_file(args)
        if args.metrics_json:
            atomic_write_json(args.metrics_json, results, indent=2)
        return results

    seed_everything(args.seed)
    ckpt_path = resolve_checkpoint(args.model_init_path)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("kind") != "foodspace":
        raise SystemExit(f"{ckpt_path} is not a FoodSpaceNet training checkpoint (kind={ckpt.get('kind')!r})")
    opts = ckpt["opts"]
    run_dir = ckpt_path.parent.parent
    ckpt_name = ckpt_path.name.removesuffix(".pth.tar")
    data_path = Path(args.data_path or opts["data_path"])
    img_path = Path(args.img_path or opts["img_path"])
    try:
        manifest = read_manifest(data_path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"{err}; pass --data_path (the folder create_lmdb.py wrote)") from None
    languages = list(manifest["languages"]) if args.language == "all" else [parse_language(args.language)]
    missing = [lang for lang in languages if lang not in manifest["languages"]]
    if missing:
        raise SystemExit(f"language {missing[0]} is not in {data_path} (it holds {', '.join(manifest['languages'])})")

    device = resolve_device(args.no_cuda, args.gpu)
    ctx = autocast_context(device, args.amp)
    model = FoodSpaceNet(ArchConfig.from_dict(ckpt["arch"]), image_pretrained="none", text_init="none")
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    encoder_path = ckpt_path.parent / f"{ckpt_name}{ENCODER_SUFFIX}"
    export_image_encoder(model, ckpt, encoder_path)
    print(f"image encoder -> {encoder_path}")

    all_results: dict = {}
    for partition in [p.strip() for p in args.partitions.split(",") if p.strip()]:
        for lang in languages:
            dataset = RecipeImageDataset(data_path, img_path, partition, train=False, language=lang,
                                         textinputs=opts.get("textinputs", "title,ingr,inst"),
                                         max_imgs=opts.get("maxImgs", 5), image_size=opts.get("image_size", 224),
                                         seed=args.seed)
            loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                                collate_fn=collate_skip_bad)
            tracker = BadImageTracker(partition, len(dataset), args.max_bad_images)
            emb = extract_embeddings(model, loader, device, ctx, channels_last=bool(opts.get("channels_last")),
                                     tracker=tracker, desc=f"{partition}/{lang}")
            out = vectors_name(run_dir, ckpt_name, partition, lang)
            save_embeddings(out, emb["img_embeds"], emb["rec_embeds"], emb["rec_ids"])
            results = evaluate_retrieval(emb["img_embeds"], emb["rec_embeds"],
                                         medr=[args.medr] if args.medr else None, seed=args.seed)
            all_results.setdefault(partition, {})[lang] = results
            print(f"{partition}/{lang}: {len(emb['rec_ids'])} recipes -> {out.name}")
            print(format_results(results, title=f"{partition} / {lang}"))
            if args.vis and partition == "test" and lang == languages[0]:
                from utils.vis import retrieval_figures

                written = retrieval_figures(emb, data_path, img_path, partition, lang, run_dir / "vis", args.vis)
                print(f"figures: {', '.join(str(p) for p in written)}")
    print(compact_table(all_results))
    if args.metrics_json:
        atomic_write_json(args.metrics_json, all_results, indent=2)
    return all_results


def compact_table(all_results: dict) -> str:
    """One line per partition, language and bag: im2rec and rec2im medR / R@1 / R@5 / R@10 (%)."""
    lines = [f"{'partition':<9} {'lang':<5} {'bag':<5} | {'im2rec medR  R@1   R@5   R@10':<30} | rec2im medR  R@1   R@5   R@10"]
    for partition, per_lang in all_results.items():
        for lang in sorted(per_lang, key=LANGS.index):
            for bag, entry in per_lang[lang].items():
                cells = []
                for direction in ("im2rec", "rec2im"):
                    m = entry[direction]
                    cells.append(f"{m['medR']:>11.1f} {100 * m['R@1']:5.1f} {100 * m['R@5']:5.1f} {100 * m['R@10']:5.1f}")
                lines.append(f"{partition:<9} {lang:<5} {bag:<5} | {cells[0]:<30} | {cells[1]}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

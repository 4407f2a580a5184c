"""Generate images for every test recipe with a trained G and score them (SPEC sections 1, 5, 6, 8).

    python GAN_test.py --trained_G_model_path runs/<run>/GAN_runs/GAN_<stamp>/G_best.pth.tar
    python GAN_test.py --encoder_dir runs/<run> --trained_G_model_path G.pth.tar --noise_mode BATCH_RANDOM \\
        --num_images 3 --metrics_json gan_metrics.json

G is rebuilt from the configuration stored in its checkpoint (no architecture flags). The image
encoder and the test embeddings come from ``--encoder_dir`` (default: the one G was trained with),
found as GAN_train.py finds them (:mod:`utils.encoder_run`). For every recipe of the test
embedding file (none dropped):

* ``<out_dir>/<recipe id>/generated_<k>.png``: ``--num_images`` images generated from the recipe
  embedding with ``--noise_mode`` (the reference's modes, :mod:`models.gan_sampling`: BATCH_RANDOM
  z per recipe, SINGLE_RANDOM one z for all recipes, ZERO z = 0, each with the conditioning noise
  drawn per recipe; MEAN: z = 0 and c = mu; all seeded with ``--seed + k``), ``real.png`` (the
  real image as D saw it: resize 256, centre crop 224, 128 px) and ``recipe.txt`` (title, ingredients, instructions from ``<r1m_path>/layer1*.json``,
  or decoded from the LMDB tokens when that file is absent). ``<out_dir>`` defaults to
  ``<GAN run>/generated``.
* Scores, from the generated tensors in memory (no image re-read) with ``--score_noise_mode``
  (default ZERO, as the reference scores): generated image -> recipe (``fake2rec``), recipe ->
  generated image (``rec2fake``), generated -> real image (``fake2img``) and real -> generated
  image (``img2fake``), with SPEC section 5's protocol (bags of ``--medr``, seeded with ``--seed``)
  plus ``"all"``, the whole test set ranked in chunks. Real images are test.py's ``img_embeds``
  (the first image of each recipe, as the cycle loss used).
* ``frechet_distance``: the Frechet distance between real and generated images in the FoodSpace
  image-encoder embedding space (:mod:`utils.frechet`). Both sides go through the same path: a
  128 px image, resized to the encoder's input size (bilinear; antialiased when shrinking) and
  encoded, so the distance measures content, not resolution. With fewer images than dimensions a shrunk covariance is used and a note says so.
* ``<GAN run>/synthesis.png``: per recipe its title, the real image, ``--synthesis_k`` images
  generated from its recipe embedding and as many from its real image embedding (same noises).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import BadImageTracker
from data.gan_dataset import GANDataset, collate_gan, read_record
from data.langs import parse_language
from data.lmdb_format import PART_INGR, PART_INST, PART_TITLE, TOKENIZER_DIR, lmdb_dir
from data.recipe1m import Recipe1MError, iter_layer1, layer1_path
from models.gan import GANConfig, Generator, imagenet_to_pixels
from models.gan_sampling import generate, parse_noise_mode
from utils.checkpoint import load_checkpoint
from utils.cli import autocast_context, int_list, str2bool
from utils.encoder_run import (
    GANDataError,
    encode_fake,
    encoder_run_opts,
    find_encoder_files,
    load_image_encoder,
    load_partition_embeddings,
)
from utils.frechet import frechet_distance
from utils.io import atomic_write, atomic_write_json, atomic_write_text
from utils.metrics import evaluate_retrieval, format_results, rank_metrics, ranks_chunked

TILE = 128


def get_parser() -> argparse.ArgumentParser:
    """GAN_test.py's flags (the data flags default to those G was trained with)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trained_G_model_path", required=True, help="G checkpoint written by GAN_train.py")
    p.add_argument("--encoder_dir", default=None, help="train.py run folder (default: the one G was trained with)")
    p.add_argument("--data_path", default=None, help="folder written by create_lmdb.py (default: G's run)")
    p.add_argument("--img_path", default=None, help="root of the images (default: G's run)")
    p.add_argument("--r1m_path", default=None, help="Recipe1M folder for the recipe texts (default: G's run)")
    p.add_argument("--language", default=None, help="language of the recipe embeddings (default: G's)")
    p.add_argument("--noise_mode", type=parse_noise_mode, default="ZERO",
                   help="noise of the saved images: BATCH_RANDOM, SINGLE_RANDOM, ZERO (the reference's) or MEAN")
    p.add_argument("--num_images", type=int, default=1, help="images saved per recipe (with a random noise mode)")
    p.add_argument("--score_noise_mode", type=parse_noise_mode, default="ZERO",
                   help="noise of the scored images (ZERO: z = 0, conditioning noise per recipe, as the reference)")
    p.add_argument("--medr", type=int_list, default=[1000], help="bag sizes (SPEC section 5), e.g. 1000,10000")
    p.add_argument("--seed", type=int, default=1234, help="seed of the noise and of the bags")
    p.add_argument("--metrics_json", default="", help="write the scores to this JSON file")
    p.add_argument("--out_dir", default=None, help="per-recipe folders go here (default: <GAN run>/generated)")
    p.add_argument("--save_images", type=str2bool, default=True, help="write the per-recipe folders")
    p.add_argument("--synthesis_n", type=int, default=8, help="recipes in synthesis.png (0: no figure)")
    p.add_argument("--synthesis_k", type=int, default=3, help="noises per recipe in synthesis.png")
    p.add_argument("--frechet_shrinkage", default="auto",
                   help="covariance shrinkage: auto (Ledoit-Wolf when N <= D), ledoit-wolf, none, or a number")
    p.add_argument("--batch_size", type=int, default=48, help="batch size")
    p.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    p.add_argument("--no_cuda", "--no-cuda", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--device", default=None, help="CUDA device index or 'cpu'")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision (GPU)")
    p.add_argument("--max_bad_images", type=float, default=0.01,
                   help="fraction of unreadable real images that stops the run")
    return p


# --------------------------------------------------------------------------- files


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image."""
    arr = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="PNG")


def _lines(texts) -> list[str]:
    return [t.strip() for t in texts if t and t.strip()]  # empty texts skipped, as everywhere


def recipe_texts(ids: list[str], r1m_path, data_path, lang: str) -> dict[str, tuple]:
    """``{id: (title, ingredients, instructions, source)}`` for ``ids``; ``source`` says where the text came from.

    From ``layer1.json`` (or ``layer1_<lang>.json``) under ``r1m_path`` when it exists; recipes
    it lacks (or all, without it) are decoded from the LMDB's token rows with the saved tokenizer.
    """
    wanted, texts = set(ids), {}
    path = layer1_path(r1m_path, lang) if r1m_path else None
    if path is not None and path.is_file():
        try:
            for recipe in iter_layer1(path, lang):
                if recipe.id in wanted:
                    texts[recipe.id] = (recipe.title.strip(), _lines(recipe.ingredients),
                                        _lines(recipe.instructions), str(path))
        except Recipe1MError as err:
            raise SystemExit(str(err)) from None
    missing = [i for i in ids if i not in texts]
    if missing:
        from data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(Path(data_path) / TOKENIZER_DIR)
        source = f"LMDB tokens decoded with {Path(data_path) / TOKENIZER_DIR} (no {lang} text in layer1)"
        for rid in missing:
            try:
                record = read_record(lmdb_dir(data_path, "test"), rid)
            except GANDataError as err:
                raise SystemExit(f"error: {err}") from None
            row = record.langs.index(lang) if lang in record.langs else 0
            ids_row, parts = record.ids[row], record.parts[row]

            def part(code, ids_row=ids_row, parts=parts) -> str:
                return tokenizer.decode(ids_row[parts == code].tolist()).strip()

            texts[rid] = (part(PART_TITLE).rstrip(". "), _lines(re.split(r"\s*\.\s+", part(PART_INGR))),
                          _lines(re.split(r"\s*\.\s+", part(PART_INST))), source)
    return texts


def recipe_text(rid: str, text: tuple[str, list[str], list[str], str]) -> str:
    """The content of ``recipe.txt``."""
    title, ingredients, instructions, source = text
    lines = [title, "", f"recipe id: {rid}", f"source: {source}", "", "Ingredients:"]
    lines += [f"- {t}" for t in ingredients] + ["", "Instructions:"]
    lines += [f"{n}. {t}" for n, t in enumerate(instructions, 1)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scores


def paired_scores(queries: torch.Tensor, candidates: torch.Tensor, medr, seed: int) -> tuple[dict, dict]:
    """Both directions under SPEC section 5, keyed by bag, plus ``"all"`` (whole set, in chunks)."""
    results = evaluate_retrieval(queries, candidates, medr=medr, seed=seed)
    fwd = {k: {"n": v["n"], "bags": v["bags"], **v["im2rec"]} for k, v in results.items()}
    bwd = {k: {"n": v["n"], "bags": v["bags"], **v["rec2im"]} for k, v in results.items()}
    if "all" not in results:
        n = queries.shape[0]
        fwd["all"] = {"n": n, "bags": 1, **rank_metrics(ranks_chunked(queries, candidates))}
        bwd["all"] = {"n": n, "bags": 1, **rank_metrics(ranks_chunked(candidates, queries))}
    return fwd, bwd


def score_table(metrics: dict) -> str:
    rows = {}
    for direction in ("fake2rec", "rec2fake", "fake2img", "img2fake"):
        for bag, entry in metrics[direction].items():
            row = rows.setdefault(bag, {"n": entry["n"], "bags": entry["bags"]})
            row[direction] = {k: entry[k] for k in ("medR", "R@1", "R@5", "R@10")}
    return format_results(rows, title="generated images, test split")


# --------------------------------------------------------------------------- figure


def _label(text: str, width: int, height: int, lines: int = 6) -> Image.Image:
    cell = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(cell), ImageFont.load_default()
    for k, line in enumerate(textwrap.wrap(text, max(8, width // 7))[:lines]):
        draw.text((4, 4 + 13 * k), line, fill=(0, 0, 0), font=font)
    return cell


def synthesis_figure(rows: list[tuple[str, Image.Image, list[Image.Image], list[Image.Image]]], k: int) -> Image.Image:
    """Header, then per recipe: title, real image, k images from the recipe, k from the image embedding."""
    gap, text_w = 4, 150
    width = text_w + (1 + 2 * k) * (TILE + gap)
    header = [("recipe", text_w), ("real", TILE)] + [(f"from recipe {j + 1}", TILE) for j in range(k)]
    header += [(f"from image {j + 1}", TILE) for j in range(k)]
    sheet = Image.new("RGB", (width, 20 + len(rows) * (TILE + gap)), (235, 235, 235))
    x = 0
    for name, w in header:
        sheet.paste(_label(name, w, 18, 1), (x, 0))
        x += w + gap
    for r, (title, real, from_rec, from_img) in enumerate(rows):
        y = 20 + r * (TILE + gap)
        sheet.paste(_label(title, text_w, TILE, 9), (0, y))
        for c, tile in enumerate([real, *from_rec, *from_img]):
            sheet.paste(tile, (text_w + gap + c * (TILE + gap), y))
    return sheet


# --------------------------------------------------------------------------- main


def pick_device(no_cuda: bool, device: str | None) -> torch.device:
    """CPU when asked or without CUDA, else ``cuda:<device>`` (default 0)."""
    if no_cuda or not torch.cuda.is_available() or str(device).lower() == "cpu":
        return torch.device("cpu")
    try:
        return torch.device("cuda", int(device or 0))
    except ValueError:
        raise SystemExit(f"--device {device!r}: give a CUDA index or 'cpu'") from None


def main(argv=None) -> dict:
    """Generate, save and score; returns the metrics written by ``--metrics_json``."""
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    g_path = Path(args.trained_G_model_path)
    try:
        ckpt = load_checkpoint(g_path)
    except (FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"--trained_G_model_path: {err}") from None
    if ckpt.get("kind") != "gan_G":
        raise SystemExit(f"{g_path} is not a generator checkpoint of GAN_train.py (kind={ckpt.get('kind')!r})")
    opts = ckpt.get("opts", {})
    encoder_dir = args.encoder_dir or opts.get("encoder_dir")
    if not encoder_dir:
        raise SystemExit("--encoder_dir is required (G's checkpoint does not name one)")
    lang = parse_language(args.language if args.language is not None else opts.get("language", "en"))
    files = find_encoder_files(encoder_dir, lang, partitions=("test",))
    trained_with = ckpt.get("encoder", {}).get("ckpt_name")
    if trained_with and trained_with != files.ckpt_name:
        print(f"note: G was trained with the encoder of {trained_with}; scoring with {files.ckpt_name}")
    enc_opts = encoder_run_opts(encoder_dir, files.ckpt_name)
    data_path = Path(args.data_path or opts.get("data_path") or enc_opts.get("data_path") or "data/loader_data")
    img_path = Path(args.img_path or opts.get("img_path") or enc_opts.get("img_path") or "data/Recipe1M/images")
    r1m_path = args.r1m_path or opts.get("r1m_path")
    out_dir = Path(args.out_dir) if args.out_dir else g_path.parent / "generated"
    if not args.medr:
        raise SystemExit("--medr: give at least one bag size, e.g. 1000")
    if args.num_images < 1:
        raise SystemExit(f"--num_images {args.num_images}: give at least 1")
    num_images = args.num_images
    if args.noise_mode == "MEAN" and num_images > 1:
        print("--noise_mode MEAN gives one image per recipe; saving 1")
        num_images = 1
    shrink = args.frechet_shrinkage
    try:
        shrink = float(shrink)
    except ValueError:
        pass

    device = pick_device(args.no_cuda, args.device)
    ctx = autocast_context(device, args.amp)
    cfg = GANConfig.from_dict(ckpt["gan"])
    G = Generator(cfg)
    G.load_state_dict(ckpt["model"])
    G.to(device).eval()
    encoder, _ = load_image_encoder(files.encoder, device)
    emb = load_partition_embeddings(files.embeddings["test"], data_path, "test")
    ids = [str(i) for i in emb["rec_ids"]]
    rec = torch.from_numpy(np.ascontiguousarray(emb["rec_embeds"], dtype=np.float32))  # (N, D)
    img = torch.from_numpy(np.ascontiguousarray(emb["img_embeds"], dtype=np.float32))  # (N, D)
    if rec.shape[1] != cfg.emb_dim:
        raise SystemExit(f"{files.embeddings['test']}: embeddings of size {rec.shape[1]}, G expects {cfg.emb_dim}")
    print(f"G {g_path} (epoch {ckpt.get('epoch')}) | encoder {files.encoder.name} | test {len(ids)} recipes "
          f"({lang}) | device {device}")

    def saver(k: int):
        def on_batch(start: int, pixels: torch.Tensor) -> None:
            for j in range(pixels.shape[0]):
                save_png(to_pil(pixels[j]), out_dir / ids[start + j] / f"generated_{k}.png")
        return on_batch

    # Scored images (and the first saved image when the modes agree).
    same = args.save_images and args.noise_mode == args.score_noise_mode
    fake = generate(G, rec, mode=args.score_noise_mode, seed=args.seed, batch_size=args.batch_size, device=device,
                    ctx=ctx, encoder=encoder, on_batch=saver(0) if same else None, desc="generate")  # (N, D)
    if args.save_images:
        for k in range(1 if same else 0, num_images):
            generate(G, rec, mode=args.noise_mode, seed=args.seed + k, batch_size=args.batch_size, device=device,
                     ctx=ctx, on_batch=saver(k), desc=f"images {k}")

    # Real images: real.png, and their features on the generated images' path (for the Frechet distance).
    dataset = GANDataset(data_path, img_path, "test", emb, train=False, seed=args.seed, num_classes=cfg.num_classes)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate_gan)
    tracker = BadImageTracker("test", len(dataset), args.max_bad_images)
    real_feats, fig_real = [], {}
    try:
        for batch in tqdm(loader, desc="real images", leave=False, dynamic_ncols=True):
            tracker.update(batch.bad)
            if batch.images.shape[0] == 0:
                continue
            pixels = imagenet_to_pixels(batch.images)  # (b, 3, 128, 128)
            for j, index in enumerate(batch.indices.tolist()):
                if args.save_images:
                    save_png(to_pil(pixels[j]), out_dir / ids[index] / "real.png")
                if len(fig_real) < args.synthesis_n:
                    fig_real[index] = to_pil(pixels[j])
            with torch.no_grad(), ctx:
                real_feats.append(encode_fake(encoder, batch.images.to(device), "imagenet").float().cpu())
    except GANDataError as err:
        raise SystemExit(f"error: {err}") from None

    texts = recipe_texts(ids, r1m_path, data_path, lang) if args.save_images or args.synthesis_n > 0 else {}
    if args.save_images:
        for rid in ids:
            atomic_write_text(out_dir / rid / "recipe.txt", recipe_text(rid, texts[rid]))
        print(f"{len(ids)} recipes -> {out_dir} ({num_images} generated image(s) each; {tracker.summary()})")

    metrics: dict = {}
    metrics["fake2rec"], metrics["rec2fake"] = paired_scores(fake, rec, args.medr, args.seed)
    metrics["fake2img"], metrics["img2fake"] = paired_scores(fake, img, args.medr, args.seed)
    if len(real_feats) and sum(f.shape[0] for f in real_feats) >= 2:
        fd = frechet_distance(torch.cat(real_feats), fake, shrinkage=shrink)
        metrics["frechet_distance"] = fd.distance
        metrics["frechet"] = fd.to_dict()
    else:
        metrics["frechet_distance"] = None
        metrics["frechet"] = {"note": "fewer than 2 readable real images: no Frechet distance"}
    metrics.update({"n": len(ids), "score_noise_mode": args.score_noise_mode, "seed": args.seed,
                    "generator": str(g_path), "encoder": str(files.encoder), "language": lang})
    print(score_table(metrics))
    note = metrics["frechet"].get("note")
    print(f"Frechet distance (FoodSpace image features, real vs generated): {metrics['frechet_distance']}"
          + (f"\nnote: {note}" if note else ""))

    if args.synthesis_n > 0 and fig_real:
        sel = sorted(fig_real)[: args.synthesis_n]
        k = max(1, args.synthesis_k)
        tiles: dict[str, list[Image.Image]] = {"rec": [], "img": []}
        for name, source_emb in (("rec", rec), ("img", img)):
            rows = source_emb[sel].repeat_interleave(k, dim=0)  # (n k, D): k noises per recipe
            generate(G, rows, mode="BATCH_RANDOM", seed=args.seed, batch_size=args.batch_size, device=device, ctx=ctx,
                     on_batch=lambda start, px, out=tiles[name]: out.extend(to_pil(p) for p in px))
        fig_rows = [(texts[ids[i]][0], fig_real[i], tiles["rec"][r * k:(r + 1) * k], tiles["img"][r * k:(r + 1) * k])
                    for r, i in enumerate(sel)]
        fig_path = g_path.parent / "synthesis.png"
        save_png(synthesis_figure(fig_rows, k), fig_path)
        print(f"synthesis figure -> {fig_path}")
    if args.metrics_json:
        atomic_write_json(args.metrics_json, metrics, indent=2)
    return metrics


if __name__ == "__main__":
    main()

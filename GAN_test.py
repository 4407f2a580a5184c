"""Generate images for every test recipe with a trained G and score them, or for your recipes; docs/synthesis.md."""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import BadImageTracker
from data.gan_dataset import GANDataset, collate_gan, load_partition_embeddings, read_record
from data.langs import parse_language
from data.lmdb_format import (
    PART_INGR,
    PART_INST,
    PART_TITLE,
    TOKENIZER_DIR,
    RecordReader,
    lmdb_dir,
    part_text,
)
from data.recipe1m import Recipe1MError, iter_layer1, layer1_path
from models.foodspace import image_encoder_from_checkpoint
from models.gan import GANConfig, Generator, imagenet_to_pixels
from models.gan_losses import encode_generated
from models.gan_sampling import generate, noise_mode_help, parse_noise_mode
from pipeline.judge import Judge, load_judge
from utils import lineage
from utils.checkpoint import load_checkpoint
from utils.cli import (
    BOOL,
    IMAGE_BACKEND_HELP,
    IMAGE_BACKENDS,
    WORKERS_HELP,
    HelpFormatter,
    autocast_context,
    default_workers,
    int_list,
    pin_memory,
    resolve_device,
    run_main,
    str2bool,
)
from utils.embeddings import embeddings_lineage
from utils.errors import CheckpointError, InputError
from utils.frechet import frechet_distance
from utils.imagenet import normalize_on_device
from utils.io import atomic_write, atomic_write_json, atomic_write_text
from utils.judge import format_ratios, ratio_rows, spread
from utils.metrics import (
    METRIC_UNITS,
    evaluate_retrieval,
    format_results,
    rank_metrics,
    ranks_chunked,
    results_by_bag,
)
from utils.runs import (
    DEFAULT_DATA_PATH,
    DEFAULT_IMG_PATH,
    GENERATED_DIR,
    RECIPE_FIGURE,
    RECIPE_GEN_DIR,
    SYNTHESIS_FIGURE,
    EncoderFiles,
    checkpoint_path,
    encoder_run_opts,
    find_encoder_files,
    shown,
    vectors_command,
)
from utils.vis import recipes_figure, synthesis_figure

USAGE = "%(prog)s --trained_G_model_path G.pth.tar [--encoder_dir RUN] [--recipe JSON] [options]"


def get_parser() -> argparse.ArgumentParser:
    """GAN_test.py's flags (the data flags default to those G was trained with)."""
    p = argparse.ArgumentParser(usage=USAGE, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--trained_G_model_path", required=True, help="G checkpoint written by GAN_train.py")
    p.add_argument("--encoder_dir", default=None, help="train.py run folder (None: the one G was trained with)")
    p.add_argument("--data_path", default=None, help="folder written by create_lmdb.py (None: G's run)")
    p.add_argument("--img_path", default=None, help="root of the images (None: G's run)")
    p.add_argument("--r1m_path", default=None, help="Recipe1M folder for the recipe texts (None: G's run)")
    p.add_argument("--language", default=None, help="language of the recipe embeddings (None: G's)")
    p.add_argument("--noise_mode", type=parse_noise_mode, default="ZERO",
                   help=f"noise of the saved images: {noise_mode_help()} (MEAN is this project's)")
    p.add_argument("--num_images", type=int, default=1, help="images saved per recipe (with a random noise mode)")
    p.add_argument("--score_noise_mode", type=parse_noise_mode, default="ZERO",
                   help=f"noise of the scored images: {noise_mode_help()} (ZERO: z = 0, conditioning noise per "
                        "recipe, as the reference)")
    p.add_argument("--medr", type=int_list, default=[1000], help="bag sizes (docs/evaluation.md), e.g. 1000,10000")
    p.add_argument("--seed", type=int, default=1234, help="seed of the noise and of the bags")
    p.add_argument("--metrics_json", default="", help="write the scores to this JSON file")
    p.add_argument("--out_dir", default=None,
                   help="per-recipe folders go here (None: <GAN run>/generated, with --recipe <GAN run>/from_recipe)")
    p.add_argument("--recipe", default=None, metavar="JSON",
                   help="generate for the recipes of this file (layer1 format, one or a list) instead of the test split")
    p.add_argument("--nearest", type=int, default=3, help="with --recipe: real photos nearest to each recipe shown")
    p.add_argument("--index_parts", default="available",
                   help="with --recipe: partitions searched for the nearest photos (search.py --index_parts)")
    p.add_argument("--save_images", type=str2bool, metavar=BOOL, default=True, help="write the per-recipe folders")
    p.add_argument("--synthesis_n", type=int, default=8, help="recipes in synthesis.png (0: no figure)")
    p.add_argument("--synthesis_k", type=int, default=3, help="noises per recipe in synthesis.png")
    p.add_argument("--frechet_shrinkage", default="auto",
                   help="covariance shrinkage: auto (Ledoit-Wolf when N <= D), ledoit-wolf, none, or a number")
    p.add_argument("--judge_dir", default=None,
                   help="an independent judge: another train.py run (another seed) on the same LMDB, with test.py's "
                        "outputs; its image encoder also scores the generated images and the real photos against "
                        "its own recipe embeddings (same bags), printed beside the own encoder's scores")
    p.add_argument("--batch_size", type=int, default=48, help="batch size")
    p.add_argument("--workers", type=int, default=default_workers(), help=WORKERS_HELP)
    p.add_argument("--image_backend", choices=IMAGE_BACKENDS, default="fast", help=IMAGE_BACKEND_HELP)
    p.add_argument("--no_cuda", "--no-cuda", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--device", nargs="+", default=None,
                   help="CUDA device index, or 'cpu' (the reference's list of GPUs is accepted; only the first is used)")
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
            raise InputError(str(err)) from None
    missing = [i for i in ids if i not in texts]
    if missing:
        from data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(Path(data_path) / TOKENIZER_DIR)
        source = f"LMDB tokens decoded with {Path(data_path) / TOKENIZER_DIR} (no {lang} text in layer1)"
        records = RecordReader(lmdb_dir(data_path, "test"))
        for rid in missing:
            record = read_record(records, rid)

            def part(code, record=record) -> str:
                return part_text(record, tokenizer, lang, code)

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
    """Both directions under docs/evaluation.md, keyed by bag, plus ``"all"`` (whole set, in chunks)."""
    results = evaluate_retrieval(queries, candidates, medr=medr, seed=seed)
    fwd = {k: {"n": v["n"], "bags": v["bags"], **v["im2rec"]} for k, v in results.items()}
    bwd = {k: {"n": v["n"], "bags": v["bags"], **v["rec2im"]} for k, v in results.items()}
    if "all" not in results:
        n = queries.shape[0]
        fwd["all"] = {"n": n, "bags": 1, **rank_metrics(ranks_chunked(queries, candidates))}
        bwd["all"] = {"n": n, "bags": 1, **rank_metrics(ranks_chunked(candidates, queries))}
    return fwd, bwd


# --------------------------------------------------------------------------- --recipe


def folder_names(ids: list[str]) -> list[str]:
    """A distinct, file-system-safe folder name per recipe id."""
    names: list[str] = []
    for rid in ids:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", rid).strip("._") or "recipe"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def recipe_images(args, ckpt: dict, g_path: Path, encoder_dir: Path, lang: str) -> dict:
    """``--recipe``: images for recipes that are not in the LMDB (docs/synthesis.md#gan_testpy); returns what was written."""
    from data.query import read_recipe_json
    from pipeline.search import RunSearch
    from utils.search_index import parse_parts
    from utils.vis import image_tile

    recipes = read_recipe_json(args.recipe, lang)  # bad input stops before anything is loaded
    num_images = images_per_recipe(args)
    opts = ckpt.get("opts", {})
    device = resolve_device(args.no_cuda, args.device)
    ctx = autocast_context(device, args.amp)
    trained_with = ckpt.get("encoder", {}).get("ckpt_name")
    checkpoint = checkpoint_path(encoder_dir, trained_with) if trained_with else None
    gone = checkpoint if checkpoint is not None and not checkpoint.is_file() else None
    if gone is not None:  # the run's default checkpoint stands in; the check below says whether it may
        checkpoint = None

    def same_encoder(path: Path, fingerprint: str) -> None:  # before the index is read or written
        lineage.require_same("the image encoder of checkpoint",
                             (g_path, (ckpt.get(lineage.KEY) or {}).get("encoder")), (path, fingerprint),
                             encoder_fix(opts))
        if gone is not None:  # said only when the stand-in passed the check: no note before a refusal
            print(f"note: G was trained with the encoder of {trained_with}, whose checkpoint {shown(gone)} is gone; "
                  f"embedding with the run's default checkpoint")

    searcher = RunSearch(encoder_dir, checkpoint=str(checkpoint) if checkpoint else None, lang=lang,
                         parts=parse_parts(args.index_parts), data_path=args.data_path or opts.get("data_path"),
                         img_path=args.img_path or opts.get("img_path"), device=device, check=same_encoder)
    cfg, G = load_generator(ckpt, device)
    rec = torch.from_numpy(searcher.embed_recipes(recipes, args.batch_size))  # (R, D)
    if rec.shape[1] != cfg.emb_dim:
        raise InputError(f"{searcher.ckpt_path}: recipe embeddings of size {rec.shape[1]}, G expects {cfg.emb_dim}")
    out_dir = Path(args.out_dir) if args.out_dir else g_path.parent / RECIPE_GEN_DIR
    folders = folder_names([r.id for r in recipes])
    print(f"G {shown(g_path)} (epoch {ckpt.get('epoch')}) | {len(recipes)} recipe(s) from {shown(args.recipe)} embedded with "
          f"{searcher.ckpt_path.name} ({lang})")

    tiles: list[list[Image.Image]] = [[] for _ in recipes]
    for k in range(num_images):
        def on_batch(start: int, pixels: torch.Tensor, k=k) -> None:
            for j in range(pixels.shape[0]):
                image = to_pil(pixels[j])
                save_png(image, out_dir / folders[start + j] / f"generated_{k}.png")
                tiles[start + j].append(image)
        generate(G, rec, mode=args.noise_mode, seed=args.seed + k, batch_size=args.batch_size, device=device,
                 ctx=ctx, on_batch=on_batch, desc=f"images {k}")
    nearest: list[list[dict]] = [[] for _ in recipes]
    if args.nearest > 0:
        nearest = searcher.hits(*searcher.search(rec.numpy(), "images", args.nearest))

    written, fig_rows = [], []
    for r, (recipe, folder) in enumerate(zip(recipes, folders)):
        folder_path = out_dir / folder
        atomic_write_text(folder_path / "recipe.txt", recipe_text(recipe.id, (
            recipe.title.strip(), _lines(recipe.ingredients), _lines(recipe.instructions), str(args.recipe))))
        lines = [f"{n['rank']}\t{n['score']:.4f}\t{n['recipe_id']}\t{n['title']}\t{n['path']}" for n in nearest[r]]
        atomic_write_text(folder_path / "nearest.txt", "rank\tcosine\trecipe id\ttitle\timage\n"
                          + "".join(line + "\n" for line in lines))
        text = recipe.title.strip() + ": " + ", ".join(_lines(recipe.ingredients))
        fig_rows.append((text, tiles[r], [(image_tile(n["path"]), n["score"]) for n in nearest[r]]))
        written.append({"id": recipe.id, "folder": str(folder_path),
                        "generated": [str(folder_path / f"generated_{k}.png") for k in range(num_images)],
                        "nearest": nearest[r]})
        print(f"{recipe.id}: {num_images} image(s) -> {shown(folder_path)}; nearest photos: "
              + (", ".join(f"{n['recipe_id']} ({n['score']:.3f})" for n in nearest[r]) or "none"))
    figure = out_dir / RECIPE_FIGURE
    save_png(recipes_figure(fig_rows, num_images, len(nearest[0]) if nearest else 0), figure)
    print(f"figure -> {shown(figure)}")
    return {"recipes": written, "figure": str(figure), "checkpoint": str(searcher.ckpt_path),
            "noise_mode": args.noise_mode, "seed": args.seed}


# --------------------------------------------------------------------------- judge


def judge_scores(judge: Judge, fake: torch.Tensor, medr, seed: int) -> dict:
    """The judge's rows: its embeddings of the generated images and of the real photos -> its recipes."""
    out = {"encoder": str(shown(judge.path))}
    out["fake2rec"], out["rec2fake"] = paired_scores(fake, judge.rec, medr, seed)
    out["real2rec"], _ = paired_scores(judge.img, judge.rec, medr, seed)
    out["ratio"] = ratio_rows(out["fake2rec"], out["real2rec"])
    out["spread"] = {"generated": spread(fake), "real": spread(judge.img)}
    return out


def print_judge(metrics: dict) -> None:
    """Own-encoder and judge rows side by side, their generated / real ratios and spreads."""
    judge = metrics["judge"]
    rows = {"own: generated -> recipe": metrics["fake2rec"], "own: real -> recipe": metrics["real2rec"],
            "judge: generated -> recipe": judge["fake2rec"], "judge: real -> recipe": judge["real2rec"]}
    print(format_results(results_by_bag(rows), title="own encoder vs independent judge, test split"))
    print(format_ratios(metrics["ratio"], "own encoder"))
    print(format_ratios(judge["ratio"], "judge"))
    print(f"spread (mean pairwise cosine distance): own encoder generated {metrics['spread']['generated']:.4f} "
          f"real {metrics['spread']['real']:.4f}; judge generated {judge['spread']['generated']:.4f} "
          f"real {judge['spread']['real']:.4f}")


# --------------------------------------------------------------------------- inputs


def encoder_fix(opts: dict) -> str:
    """The remedy for an encoder run that is not G's: the ``--encoder_dir`` G was trained with."""
    trained_in = opts.get("encoder_dir")
    return f"give the --encoder_dir G was trained with ({trained_in})" if trained_in else \
        "give the --encoder_dir G was trained with"


def images_per_recipe(args) -> int:
    """``--num_images``, checked; MEAN noise has a single image per recipe."""
    if args.num_images < 1:
        raise InputError(f"--num_images {args.num_images}: give at least 1")
    if args.noise_mode == "MEAN" and args.num_images > 1:
        print("--noise_mode MEAN gives one image per recipe; saving 1")
        return 1
    return args.num_images


def read_generator(args) -> tuple[Path, dict]:
    """``--trained_G_model_path`` read, after the cheap flag checks; refuses any other checkpoint."""
    for flag, value, low in (("--batch_size", args.batch_size, 1), ("--workers", args.workers, 0)):
        if value < low:
            raise InputError(f"{flag} {value}: give at least {low}")
    g_path = Path(args.trained_G_model_path)
    try:
        ckpt = load_checkpoint(g_path)
    except CheckpointError as err:
        raise CheckpointError(f"--trained_G_model_path: {err}") from None
    if ckpt.get("kind") != "gan_G":
        raise InputError(f"{g_path} is not a generator checkpoint of GAN_train.py (kind={ckpt.get('kind')!r})")
    return g_path, ckpt


def load_generator(ckpt: dict, device) -> tuple[GANConfig, Generator]:
    """G rebuilt from its checkpoint alone, in eval mode on ``device``."""
    cfg = GANConfig.from_dict(ckpt["gan"])
    G = Generator(cfg)
    G.load_state_dict(ckpt["model"])
    G.to(device).eval()
    return cfg, G


def check_encoder(ckpt: dict, g_path: Path, encoder_dir: str, lang: str) -> tuple[EncoderFiles, dict]:
    """The encoder run's export and test embeddings, refused unless G was trained on them (:mod:`utils.lineage`).

    Returns:
        ``(the run's files, the exported encoder's checkpoint)``: read once, for its lineage here
        and its weights in :func:`load_test_run`.
    """
    files = find_encoder_files(encoder_dir, lang, partitions=("test",))
    enc_ckpt = load_checkpoint(files.encoder)
    lineage.check_gan_inputs((files.encoder, enc_ckpt.get(lineage.KEY)),
                             {"test": (files.embeddings["test"], embeddings_lineage(files.embeddings["test"]))},
                             generator=(g_path, ckpt.get(lineage.KEY)), fix_encoder=encoder_fix(ckpt.get("opts", {})),
                             fix_embeddings=f"make them again with: {vectors_command(encoder_dir, lang)}")
    trained_with = ckpt.get("encoder", {}).get("ckpt_name")
    if trained_with and trained_with != files.ckpt_name:
        print(f"note: G was trained with the encoder of {trained_with}; scoring with {files.ckpt_name}")
    return files, enc_ckpt


def parse_shrinkage(value: str) -> float | str:
    """``--frechet_shrinkage``: a number, else the name of a rule (utils/frechet.py checks it)."""
    try:
        return float(value)
    except ValueError:
        return value


@dataclass
class TestRun:
    """What the steps of a test-split run share: G, its encoder, the test embeddings, the folders."""

    g_path: Path
    files: EncoderFiles
    lang: str
    data_path: Path
    img_path: Path
    r1m_path: str | None
    out_dir: Path  # the per-recipe folders
    num_images: int  # saved per recipe
    shrink: float | str  # --frechet_shrinkage
    device: torch.device
    ctx: AbstractContextManager
    cfg: GANConfig
    G: Generator
    encoder: torch.nn.Module
    emb: dict  # test.py's arrays of the test split
    ids: list[str]  # (N,) recipe ids, the rows of rec and img
    rec: torch.Tensor  # (N, D) recipe embeddings
    img: torch.Tensor  # (N, D) real-photo embeddings
    judge: Judge | None  # --judge_dir


def load_test_run(args, ckpt: dict, g_path: Path, encoder_dir: str, lang: str) -> TestRun:
    """Check the inputs (lineage, flags, sizes, the judge), then load G, the encoder and the test embeddings."""
    opts = ckpt.get("opts", {})
    files, enc_ckpt = check_encoder(ckpt, g_path, encoder_dir, lang)
    enc_opts = encoder_run_opts(encoder_dir, files.ckpt_name)
    data_path = Path(args.data_path or opts.get("data_path") or enc_opts.get("data_path") or DEFAULT_DATA_PATH)
    img_path = Path(args.img_path or opts.get("img_path") or enc_opts.get("img_path") or DEFAULT_IMG_PATH)
    out_dir = Path(args.out_dir) if args.out_dir else g_path.parent / GENERATED_DIR
    if not args.medr:
        raise InputError("--medr: give at least one bag size, e.g. 1000")
    num_images = images_per_recipe(args)
    shrink = parse_shrinkage(args.frechet_shrinkage)

    device = resolve_device(args.no_cuda, args.device)
    ctx = autocast_context(device, args.amp)
    cfg, G = load_generator(ckpt, device)
    encoder = image_encoder_from_checkpoint(enc_ckpt, files.encoder, device)
    del enc_ckpt  # its tensors are copied into the encoder
    emb = load_partition_embeddings(files.embeddings["test"], data_path, "test")
    ids = [str(i) for i in emb["rec_ids"]]
    rec = torch.from_numpy(np.ascontiguousarray(emb["rec_embeds"], dtype=np.float32))  # (N, D)
    img = torch.from_numpy(np.ascontiguousarray(emb["img_embeds"], dtype=np.float32))  # (N, D)
    if rec.shape[1] != cfg.emb_dim:
        raise InputError(f"{files.embeddings['test']}: embeddings of size {rec.shape[1]}, G expects {cfg.emb_dim}")
    judge = load_judge(args.judge_dir, "test", encoder_dir, files, enc_opts, data_path, ids, lang, device,
                       photos=True) if args.judge_dir else None
    print(f"G {shown(g_path)} (epoch {ckpt.get('epoch')}) | encoder {files.encoder.name} | test {len(ids)} recipes "
          f"({lang}) | device {device}" + (f" | judge {shown(judge.path)}" if judge else ""))
    return TestRun(g_path, files, lang, data_path, img_path, args.r1m_path or opts.get("r1m_path"), out_dir,
                   num_images, shrink, device, ctx, cfg, G, encoder, emb, ids, rec, img, judge)


# --------------------------------------------------------------------------- steps


def generate_images(args, run: TestRun) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The scored images (saved as ``generated_0`` when the modes agree) and the other saved ones.

    Returns:
        ``(fake (N, D): the encoder's embeddings of the scored images, the judge's (b, D') batches of them)``.
    """
    def saver(k: int):
        def on_batch(start: int, pixels: torch.Tensor) -> None:
            for j in range(pixels.shape[0]):
                save_png(to_pil(pixels[j]), run.out_dir / run.ids[start + j] / f"generated_{k}.png")
        return on_batch

    same = args.save_images and args.noise_mode == args.score_noise_mode
    judged: list[torch.Tensor] = []  # the judge's embeddings of the same generated images

    def judge_batch(start: int, fake_b: torch.Tensor) -> None:
        judged.append(encode_generated(run.judge.encoder, fake_b, run.cfg.output_space).float().cpu())  # (b, D')
    fake = generate(run.G, run.rec, mode=args.score_noise_mode, seed=args.seed, batch_size=args.batch_size,
                    device=run.device, ctx=run.ctx, encoder=run.encoder, on_batch=saver(0) if same else None,
                    on_fake=judge_batch if run.judge else None, desc="generate")  # (N, D)
    if args.save_images:
        for k in range(1 if same else 0, run.num_images):
            generate(run.G, run.rec, mode=args.noise_mode, seed=args.seed + k, batch_size=args.batch_size,
                     device=run.device, ctx=run.ctx, on_batch=saver(k), desc=f"images {k}")
    return fake, judged


def real_images(args, run: TestRun) -> tuple[list[torch.Tensor], dict[int, Image.Image], BadImageTracker]:
    """The real test images: ``real.png``, and their features on the generated images' path (for the Frechet distance).

    Returns:
        ``(the encoder's (b, D) batches of features, {row: picture} of the first --synthesis_n rows, the tracker)``.
    """
    dataset = GANDataset(run.data_path, run.img_path, "test", run.emb, train=False, seed=args.seed,
                         num_classes=run.cfg.num_classes, image_backend=args.image_backend,
                         uint8=True)  # normalised on the device below
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate_gan, pin_memory=pin_memory(run.device))
    tracker = BadImageTracker("test", len(dataset), args.max_bad_images)
    real_feats, fig_real = [], {}
    for batch in tqdm(loader, desc="real images", leave=False, dynamic_ncols=True):
        tracker.update(batch.bad)
        if batch.images.shape[0] == 0:
            continue
        real = normalize_on_device(batch.images.to(run.device, non_blocking=True))  # (b, 3, 128, 128) float32
        pixels = imagenet_to_pixels(real.cpu())  # (b, 3, 128, 128)
        for j, index in enumerate(batch.indices.tolist()):
            if args.save_images:
                save_png(to_pil(pixels[j]), run.out_dir / run.ids[index] / "real.png")
            if len(fig_real) < args.synthesis_n:
                fig_real[index] = to_pil(pixels[j])
        with torch.no_grad(), run.ctx:
            real_feats.append(encode_generated(run.encoder, real, "imagenet").float().cpu())
    return real_feats, fig_real, tracker


def write_recipe_texts(args, run: TestRun, tracker: BadImageTracker) -> dict[str, tuple]:
    """Each folder's ``recipe.txt``; returns the texts (also the figure's titles), ``{}`` when neither needs them."""
    texts = recipe_texts(run.ids, run.r1m_path, run.data_path, run.lang) \
        if args.save_images or args.synthesis_n > 0 else {}
    if args.save_images:
        for rid in run.ids:
            atomic_write_text(run.out_dir / rid / "recipe.txt", recipe_text(rid, texts[rid]))
        print(f"{len(run.ids)} recipes -> {shown(run.out_dir)} ({run.num_images} generated image(s) each; "
              f"{tracker.summary()})")
    return texts


def frechet_entry(real_feats: list[torch.Tensor], fake: torch.Tensor, shrink) -> dict:
    """``frechet_distance`` and ``frechet`` of the metrics; a note instead with fewer than 2 real images."""
    if len(real_feats) and sum(f.shape[0] for f in real_feats) >= 2:
        fd = frechet_distance(torch.cat(real_feats), fake, shrinkage=shrink)
        return {"frechet_distance": fd.distance, "frechet": fd.to_dict()}
    return {"frechet_distance": None, "frechet": {"note": "fewer than 2 readable real images: no Frechet distance"}}


def score_all(args, run: TestRun, fake: torch.Tensor, judged: list[torch.Tensor],
                real_feats: list[torch.Tensor]) -> dict:
    """The metrics of ``--metrics_json``: both directions against recipes and photos, ratios, spread, judge, FD."""
    metrics: dict = {}
    metrics["fake2rec"], metrics["rec2fake"] = paired_scores(fake, run.rec, args.medr, args.seed)
    metrics["fake2img"], metrics["img2fake"] = paired_scores(fake, run.img, args.medr, args.seed)
    metrics["real2rec"], _ = paired_scores(run.img, run.rec, args.medr, args.seed)
    metrics["ratio"] = ratio_rows(metrics["fake2rec"], metrics["real2rec"])
    metrics["spread"] = {"generated": spread(fake), "real": spread(run.img)}
    if run.judge is not None:
        metrics["judge"] = judge_scores(run.judge, torch.cat(judged), args.medr, args.seed)
    metrics.update(frechet_entry(real_feats, fake, run.shrink))
    metrics.update({"n": len(run.ids), "score_noise_mode": args.score_noise_mode, "seed": args.seed,
                    "generator": str(run.g_path), "encoder": str(run.files.encoder), "language": run.lang})
    return metrics


def print_scores(metrics: dict) -> None:
    """The own encoder's table, the judge's beside it, and the Frechet distance."""
    directions = ("fake2rec", "rec2fake", "fake2img", "img2fake")
    print(format_results(results_by_bag({d: metrics[d] for d in directions}), title="generated images, test split"))
    if "judge" in metrics:
        print_judge(metrics)
    note = metrics["frechet"].get("note")
    print(f"Frechet distance (FoodSpace image features, real vs generated): {metrics['frechet_distance']}"
          + (f"\nnote: {note}" if note else ""))


def write_synthesis(args, run: TestRun, fig_real: dict[int, Image.Image], texts: dict[str, tuple]) -> None:
    """``synthesis.png`` beside G: the first ``--synthesis_n`` recipes, ``--synthesis_k`` noises each."""
    sel = sorted(fig_real)[: args.synthesis_n]
    k = max(1, args.synthesis_k)
    tiles: dict[str, list[Image.Image]] = {"rec": [], "img": []}
    for name, source_emb in (("rec", run.rec), ("img", run.img)):
        rows = source_emb[sel].repeat_interleave(k, dim=0)  # (n k, D): k noises per recipe
        generate(run.G, rows, mode="BATCH_RANDOM", seed=args.seed, batch_size=args.batch_size, device=run.device,
                 ctx=run.ctx, on_batch=lambda start, px, out=tiles[name]: out.extend(to_pil(p) for p in px))
    fig_rows = [(texts[run.ids[i]][0], fig_real[i], tiles["rec"][r * k:(r + 1) * k], tiles["img"][r * k:(r + 1) * k])
                for r, i in enumerate(sel)]
    fig_path = run.g_path.parent / SYNTHESIS_FIGURE
    save_png(synthesis_figure(fig_rows, k), fig_path)
    print(f"synthesis figure -> {shown(fig_path)}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    """Generate, save and score; returns the metrics written by ``--metrics_json``."""
    return run_main(lambda: _main(argv))


def _main(argv) -> dict:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    g_path, ckpt = read_generator(args)
    opts = ckpt.get("opts", {})
    encoder_dir = args.encoder_dir or opts.get("encoder_dir")
    if not encoder_dir:
        raise InputError("--encoder_dir is required (G's checkpoint does not name one)")
    lang = parse_language(args.language if args.language is not None else opts.get("language", "en"))
    if args.recipe:
        return recipe_images(args, ckpt, g_path, Path(encoder_dir), lang)

    run = load_test_run(args, ckpt, g_path, encoder_dir, lang)
    fake, judged = generate_images(args, run)
    real_feats, fig_real, tracker = real_images(args, run)
    texts = write_recipe_texts(args, run, tracker)
    metrics = score_all(args, run, fake, judged, real_feats)
    print_scores(metrics)
    if args.synthesis_n > 0 and fig_real:
        write_synthesis(args, run, fig_real, texts)
    if args.metrics_json:
        atomic_write_json(args.metrics_json, {"units": METRIC_UNITS, **metrics}, indent=2)
        print(f"metrics -> {shown(args.metrics_json)} (recalls as fractions in [0, 1], medR as a rank; see its \"units\")")
    return metrics


if __name__ == "__main__":
    main()

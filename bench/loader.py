"""The image loader per core: today's PIL path against the fast path (``--image_backend``), side by side.

    python bench/loader.py                  # 200 real photographs, both paths, one thread
    python bench/loader.py --photos 40      # a quicker run

The photographs are made offline from the photos that ship inside the scikit-image wheel
(``pip install scikit-image``; a bench-only dependency): random crops resized to Recipe1M's sizes
(300x300 to 1024x768), saved as JPEG quality 90. Synthetic pictures decode unrealistically fast,
so they are not used here.

Rows, each timed for both paths in alternating rounds (the best round counts), on one thread, as
images per second of this process's CPU time (a core's rate, whatever else loads the machine):
decode alone (PIL open + load + RGB beside them as the bare decode), the train and eval transforms
with the decode, and the dataset's whole ``__getitem__`` (LMDB record, draws, tokens, image) as
train.py builds it. Then a DataLoader with 1 and 2 workers: samples per CPU second of its
processes (main and workers, from ``/proc``) and, in brackets, by the wall clock (which only
means something on an otherwise idle machine with a core per worker), the largest
pixel difference between the paths (uint8, before normalisation) over every photo and several
parameter draws each, the bytes per sample handed to the device, and the cores that feed
2,000 samples/s (an H100's pace for X-MRS).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import run_with_threads  # noqa: E402
from data.dataset import RecipeImageDataset, collate_skip_bad  # noqa: E402
from data.lmdb_format import MANIFEST, PART_CLS, PART_TITLE, Record, encode_record, keys_file, lmdb_dir  # noqa: E402
from data.recipe1m import image_path, write_keys  # noqa: E402
from data.transforms import (  # noqa: E402
    decode_image,
    draw_train_params,
    eval_transform,
    eval_transform_pil,
    load_image,
    load_transformed,
    train_transform,
    train_transform_pil,
)

# The colour photographs bundled in scikit-image's wheel (no download).
SOURCES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
           "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png")
TARGET_RATE = 2000  # samples/s an H100 trains X-MRS at (an estimate)
IMAGE_SIZE = 224


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=200, help="photographs in the bench set")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per row (the best counts)")
    p.add_argument("--draws", type=int, default=4, help="train parameter draws per photo in the pixel check")
    p.add_argument("--batch_size", type=int, default=20, help="DataLoader batch size (train.py's default)")
    p.add_argument("--workers", default="1,2", help="DataLoader worker counts timed, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the photo set and the draws")
    p.add_argument("--source", choices=["skimage", "generated"], default="skimage",
                   help="the photographs: scikit-image's (real) or generated shapes and noise (only checks that "
                        "the bench runs where scikit-image is not installed; their figures mean little)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: a core's rate)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p


def build_photos(folder: Path, n: int, seed: int, source: str = "skimage") -> list[Path]:
    """``n`` JPEG photographs (quality 90, 300x300 to 1024x768) cut from scikit-image's bundled photos
    (``source="generated"``: from generated shapes and noise instead)."""
    rng = np.random.default_rng(seed)
    sources = skimage_photos() if source == "skimage" else [generated_picture(rng) for _ in range(4)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = (int(rng.integers(300, 1025)), int(rng.integers(300, 769)))
        photo = src.crop((left, top, left + cw, top + ch)).resize(size, Image.BICUBIC)
        paths.append(folder / f"{i:04d}.jpg")
        photo.save(paths[-1], quality=90)
    return paths


def skimage_photos() -> list[Image.Image]:
    """The colour photographs in scikit-image's wheel (no download)."""
    try:
        import skimage
    except ImportError:
        raise SystemExit("bench/loader.py needs scikit-image for its real photographs (a bench-only dependency): "
                         "pip install scikit-image") from None
    data_dir = Path(skimage.data_dir)
    sources = [Image.open(data_dir / name).convert("RGB") for name in SOURCES if (data_dir / name).is_file()]
    if not sources:
        raise SystemExit(f"no bundled photo of {', '.join(SOURCES)} in scikit-image's data folder; "
                         f"reinstall scikit-image")
    return sources


def generated_picture(rng: np.random.Generator, size: tuple[int, int] = (800, 600)) -> Image.Image:
    """Shaded background, soft discs, sensor noise: a stand-in where scikit-image is absent."""
    from PIL import ImageDraw, ImageFilter

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = Image.fromarray(np.stack([120 + 80 * xx, 90 + 60 * yy, 60 + 100 * xx * yy], -1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(5, h // 4))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), np.int16) + rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def build_partition(root: Path, photos: list[Path]) -> tuple[Path, Path]:
    """An LMDB train partition of one recipe per photo (short token rows), as create_lmdb.py lays it out."""
    import json

    import lmdb

    data, imgs = root / "data", root / "images"
    data.mkdir(parents=True)
    ids = [f"{i:010x}" for i in range(len(photos))]
    env = lmdb.open(str(lmdb_dir(data, "train")), map_size=1 << 26, subdir=True)
    with env.begin(write=True) as txn:
        for i, (rid, photo) in enumerate(zip(ids, photos)):
            image_id = f"{i:08x}.jpg"
            target = image_path(imgs, "train", image_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
            tokens = np.zeros((1, 64), np.int32)
            parts = np.zeros((1, 64), np.int8)
            tokens[0, :40] = [2] + list(range(100, 139))
            parts[0, :40] = [PART_CLS] + [PART_TITLE] * 39
            record = Record(langs=["en"], ids=tokens, parts=parts, cls=1 + i % 10, images=[image_id])
            txn.put(rid.encode(), encode_record(record))
    env.close()
    write_keys(keys_file(data, "train"), ids)
    manifest = {"format_version": 1, "counts": {"train": len(ids)}, "languages": ["en"], "tokenizer": "bench",
                "vocab_size": 1000, "max_len": 64, "max_imgs": 5,
                "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}, "dropped": {}}
    (data / MANIFEST).write_text(json.dumps(manifest))
    return data, imgs


def rate(work: Callable[[int], object], n: int) -> float:
    """Items per second of this process's CPU time for ``work(i)``, i < n."""
    start = time.process_time()
    for i in range(n):
        work(i)
    return n / max(time.process_time() - start, 1e-9)


def compare(paths: dict[str, Callable[[int], object]], n: int, rounds: int) -> dict[str, float]:
    """The best rate of each path over ``rounds`` alternating rounds (one warm-up call each first)."""
    for work in paths.values():
        work(0)
    best = dict.fromkeys(paths, 0.0)
    for _ in range(rounds):
        for name, work in paths.items():
            best[name] = max(best[name], rate(work, n))
    return best


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes ``pids`` so far (Linux ``/proc``; 0 elsewhere)."""
    import os

    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def loader_rate(dataset, workers: int, batch_size: int, epochs: int = 2) -> dict[str, float]:
    """A DataLoader's samples/s after one warm-up epoch (workers started): by the wall clock, and per
    CPU second of the loader's processes (main + workers; the rate that counts on a shared machine)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collate_skip_bad, persistent_workers=workers > 0)
    for _ in loader:
        pass
    # The persistent workers' process ids (a private attribute: this bench reads it, no code relies on it).
    pids = [w.pid for w in getattr(loader._iterator, "_workers", [])] if workers else []
    cpu0, wall0, count = _cpu_seconds(pids) + time.process_time(), time.perf_counter(), 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch + 1)
        for batch in loader:
            count += batch.images.shape[0]
    wall = time.perf_counter() - wall0
    cpu = _cpu_seconds(pids) + time.process_time() - cpu0
    del loader
    return {"wall": count / wall, "per_cpu_s": count / max(cpu, 1e-9)}


def pixel_check(photos: list[Path], draws: int, seed: int) -> dict:
    """Largest |fast - pil| (uint8) over every photo: the eval transform and ``draws`` train draws each."""
    rng = np.random.default_rng(seed + 1)
    worst, ones, total = 0, 0, 0
    for path in photos:
        pil = load_image(path)
        assert np.array_equal(decode_image(path), np.asarray(pil)), f"{path.name}: the decoders differ"
        pairs = [(eval_transform_pil(pil, IMAGE_SIZE), load_transformed(path, None, IMAGE_SIZE, backend="fast",
                                                                        uint8=True))]
        for _ in range(draws):
            params = draw_train_params(rng, IMAGE_SIZE)
            pairs.append((train_transform_pil(pil, params, IMAGE_SIZE),
                          load_transformed(path, params, IMAGE_SIZE, backend="fast", uint8=True)))
        for ref, fast in pairs:
            diff = np.abs(np.asarray(ref, np.int16) - fast.permute(1, 2, 0).numpy().astype(np.int16))
            worst = max(worst, int(diff.max()))
            ones += int((diff > 0).sum())
            total += diff.size
    return {"max_diff": worst, "fraction_differing": ones / total, "images": len(photos) * (draws + 1),
            "decode_bit_equal": True}


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="xmrs_loader_bench_"))
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp: Path) -> dict:
    photos = build_photos(tmp / "photos", args.photos, args.seed, args.source)
    n = len(photos)
    rng = np.random.default_rng(args.seed)
    params = [draw_train_params(rng, IMAGE_SIZE) for _ in range(n)]

    def bare(i):
        with Image.open(photos[i]) as img:
            img.load()
            return img.convert("RGB")

    rows = {
        "decode": compare({"bare": bare, "pil": lambda i: load_image(photos[i]),
                           "fast": lambda i: decode_image(photos[i])}, n, args.rounds),
        "train": compare({"pil": lambda i: train_transform(load_image(photos[i]), params[i], IMAGE_SIZE),
                          "fast": lambda i: load_transformed(photos[i], params[i], IMAGE_SIZE, backend="fast",
                                                             uint8=True)}, n, args.rounds),
        "eval": compare({"pil": lambda i: eval_transform(load_image(photos[i]), IMAGE_SIZE),
                         "fast": lambda i: load_transformed(photos[i], None, IMAGE_SIZE, backend="fast", uint8=True)},
                        n, args.rounds),
    }
    data, imgs = build_partition(tmp / "set", photos)
    sets = {"pil": RecipeImageDataset(data, imgs, "train", train=True, image_size=IMAGE_SIZE, text_aug="none"),
            "fast": RecipeImageDataset(data, imgs, "train", train=True, image_size=IMAGE_SIZE, text_aug="none",
                                       image_backend="fast", uint8=True)}  # as train.py builds them
    rows["getitem"] = compare({name: ds.__getitem__ for name, ds in sets.items()}, n, args.rounds)
    loaders = {}
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        loaders[workers] = {name: loader_rate(ds, workers, args.batch_size) for name, ds in sets.items()}
    pixels = pixel_check(photos, args.draws, args.seed)
    sample = {name: ds[0].image for name, ds in sets.items()}
    bytes_per_sample = {name: t.numel() * t.element_size() for name, t in sample.items()}
    results = {"photos": n, "source": args.source, "rows": rows, "loaders": loaders, "pixels": pixels, "bytes_per_sample": bytes_per_sample,
               "cores_for_2000": {name: TARGET_RATE / rows["getitem"][name] for name in ("pil", "fast")}}
    print_table(results)
    return results


def print_table(r: dict) -> None:
    rows = r["rows"]
    lines = ["| path | today's (PIL) | fast | ratio |", "|---|---|---|---|"]
    d = rows["decode"]
    lines.append(f"| decode alone (images/s per core; bare PIL decode {d['bare']:.0f}) | {d['pil']:.0f} | "
                 f"{d['fast']:.0f} | {d['fast'] / d['pil']:.2f}x (fast / bare {d['fast'] / d['bare']:.2f}) |")
    for key, what in (("train", "decode + train transform"), ("eval", "decode + eval transform"),
                      ("getitem", "whole `__getitem__` (train)")):
        lines.append(f"| {what} (images/s per core) | {rows[key]['pil']:.0f} | {rows[key]['fast']:.0f} | "
                     f"{rows[key]['fast'] / rows[key]['pil']:.2f}x |")
    for workers, rates in r["loaders"].items():
        pil, fast = rates["pil"], rates["fast"]
        lines.append(f"| DataLoader, {workers} worker(s) (samples per CPU second; wall samples/s) | "
                     f"{pil['per_cpu_s']:.0f} ({pil['wall']:.0f}) | {fast['per_cpu_s']:.0f} ({fast['wall']:.0f}) | "
                     f"{fast['per_cpu_s'] / pil['per_cpu_s']:.2f}x ({fast['wall'] / pil['wall']:.2f}x) |")
    b = r["bytes_per_sample"]
    lines.append(f"| bytes per sample to the device | {b['pil']:,} | {b['fast']:,} | {b['fast'] / b['pil']:.2f} |")
    c = r["cores_for_2000"]
    lines.append(f"| cores to feed {TARGET_RATE:,} samples/s | {c['pil']:.1f} | {c['fast']:.1f} | |")
    p = r["pixels"]
    print("\n".join(lines))
    print(f"\npixels: max |fast - pil| = {p['max_diff']} level(s) over {p['images']} transformed images of "
          f"{r['photos']} {'photos' if r['source'] == 'skimage' else 'generated pictures'} "
          f"({100 * p['fraction_differing']:.2f}% of values differ); decoders bit-equal")


def main(argv=None) -> dict:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_with_threads(run, args)


if __name__ == "__main__":
    main()

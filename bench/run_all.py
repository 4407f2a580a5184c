"""Run every benchmark of bench/ and print one table (work, this project, the reference's way, ratio).

    python bench/run_all.py            # the benchmarks at their default sizes (long on a CPU)
    python bench/run_all.py --quick    # fewer timed steps and reference bags, GAN batch 16, search 50k: minutes
    python bench/run_all.py --smoke    # tiny sizes, seconds: checks that every benchmark runs (tests)

Each benchmark measures both ways side by side in one run; this script only calls them in turn
(``main(argv)`` of each module, in this process) and collects what they return. The table is
printed as Markdown so it can be pasted into bench/README.md. The training rows time the scripts' own
step functions (train.py's ``train_step``, GAN_train.py's ``gan_step``) at the scripts' defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _create_lmdb(r: dict) -> list[tuple]:
    ours, ref = r["create_lmdb"], r["reference"]
    return [
        ("create_lmdb text indexing (recipes/s)", f"{ours['recipes_per_s']:.0f}", f"{ref['recipes_per_s']:.0f}",
         f"{r['speed_ratio']:.1f}x", "goal >= 5x"),
        ("create_lmdb peak memory (MB per 1,000 recipes)", f"{ours['peak_mb_per_1000']:.2f}",
         f"{ref['peak_mb_per_1000']:.2f}", f"{r['memory_ratio']:.3f}", "goal <= 1/3"),
    ]


def _eval(r: dict) -> list[tuple]:
    note = "reference extrapolated from fewer bags" if r["reference_extrapolated"] else "both measured in full"
    return [
        ("retrieval protocol, 1k+10k bags (s)", f"{r['protocol_s']:.1f}", f"{r['reference_s']:.1f}",
         f"{r['speedup']:.2f}x", note),
        ("protocol / its bare similarity products", f"{r['ratio']:.2f}", "", "", "limit: 1.0 (the products); goal < 2"),
    ]


def _translate(r: dict) -> list[tuple]:
    return [("translation (sentences/s, tiny random FSMT)", f"{r['ours_sps']:.1f}", f"{r['reference_sps']:.1f}",
             f"{r['ratio']:.2f}x", f"{r['sentences']} sentences, {r['unique']} unique; goal >= 2x")]


def _train_step(r: dict) -> list[tuple]:
    ours, ref = r["paths"]["ours"], r["paths"]["reference"]
    peak = r["peak_matmul_flops"] / 1e9
    return [("retrieval train step (images/s)", f"{ours['images_per_s']:.2f}", f"{ref['images_per_s']:.2f}",
             f"{r['speedup']:.2f}x",
             f"CPU s/step {ours['median_cpu_s']:.1f} / {ref['median_cpu_s']:.1f}; "
             f"{100 * ours['fraction_of_peak']:.0f}% / {100 * ref['fraction_of_peak']:.0f}% of {peak:.0f} GFLOP/s "
             "matmul peak; goal >= 1.2x")]


def _gan_step(r: dict) -> list[tuple]:
    ours, ref = r["paths"]["ours"], r["paths"]["reference"]
    return [(f"GAN G+D step, batch {r['batch_size']} (images/s)", f"{ours['images_per_s']:.2f}",
             f"{ref['images_per_s']:.2f}", f"{r['speedup']:.2f}x",
             f"CPU s/step {ours['median_cpu_s']:.1f} / {ref['median_cpu_s']:.1f}")]


def _loader(r: dict) -> list[tuple]:
    rows, pix = r["rows"], r["pixels"]
    src = "" if r["source"] == "skimage" else "; generated pictures, not photos"
    out = [(f"image loader, {what} (images/s per core)", f"{rows[key]['fast']:.0f}", f"{rows[key]['pil']:.0f}",
            f"{rows[key]['fast'] / rows[key]['pil']:.2f}x", note + src)
           for key, what, note in (
               ("train", "decode + train transform", f"max pixel difference {pix['max_diff']} level; goal >= 2x"),
               ("eval", "decode + eval transform", "goal >= 2x"),
               ("decode", "decode", f"bare PIL decode {rows['decode']['bare']:.0f}; goal >= 0.8x of it"),
               ("getitem", "whole __getitem__", f"cores for 2,000 samples/s: {r['cores_for_2000']['fast']:.1f} "
                                                f"/ {r['cores_for_2000']['pil']:.1f}"))]
    for workers, rates in r["loaders"].items():
        fast, pil = rates["fast"]["per_cpu_s"], rates["pil"]["per_cpu_s"]
        out.append((f"DataLoader, {workers} worker(s) (samples per CPU second)", f"{fast:.0f}", f"{pil:.0f}",
                    f"{fast / pil:.2f}x", f"uint8: 1/4 of the bytes per sample{src}"))
    return out


def _search(rows: list[dict]) -> list[tuple]:
    """One row per index size: exact search's queries/s; faiss's beside it in the note (no reference way)."""
    out = []
    for n in dict.fromkeys(r["n"] for r in rows):
        exact = next(r for r in rows if r["n"] == n and r["method"] == "exact")
        ivf = [r for r in rows if r["n"] == n and r["method"] != "exact"]
        note = "; ".join(f"{r['method'].split(' ', 1)[1]}: {r['queries_per_s']:,.0f}/s, recall {r['recall']:.3f}"
                         for r in ivf)
        out.append((f"search.py exact top-10, {n:,} items (queries/s)", f"{exact['queries_per_s']:,.0f}", "", "",
                    f"the reference has no search; {note}"))
    return out


# (module, arguments at default sizes, with --quick, with --smoke, adapter)
BENCHES = [
    ("bench.create_lmdb", [], ["--recipes", "20000"], ["--recipes", "200", "--vocab_size", "500"], _create_lmdb),
    ("bench.eval", ["--no_progress"], ["--n", "12000", "--ref_bags", "1", "--no_progress"],
     ["--n", "1200", "--dim", "16", "--bags", "2", "--ref_bags", "1", "--no_progress"], _eval),
    ("bench.translate", [], [], ["--recipes", "4", "--d_model", "16", "--layers", "1", "--beam", "2",
                                 "--max_length", "4", "--batch_size", "8", "--no_cuda"], _translate),
    ("bench.train_step", [], ["--steps", "2"], ["--quick", "--lengths", "normal", "--length_samples", "20"],
     _train_step),
    ("bench.gan_step", [], ["--batch_size", "16", "--steps", "2"], ["--quick", "--warmup", "0"], _gan_step),
    ("bench.search", [], ["--sizes", "50000"], ["--quick", "--nprobe", "8"], _search),
    ("bench.loader", [], ["--photos", "60", "--rounds", "2"],
     ["--photos", "3", "--rounds", "1", "--draws", "1", "--workers", "1", "--source", "generated"], _loader),
]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer steps and bags (see BENCHES in this file)")
    size.add_argument("--smoke", action="store_true",
                      help="tiny sizes: checks that every benchmark runs; the figures mean nothing")
    p.add_argument("--only", default="", help="comma-separated benchmark names to run (e.g. eval,train_step)")
    p.add_argument("--json", default="", help="also write every benchmark's full results to this JSON file")
    return p


def main(argv=None) -> list[tuple]:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - {module.split(".", 1)[1] for module, *_ in BENCHES}
    if unknown:
        raise SystemExit(f"--only: no benchmark named {', '.join(sorted(unknown))}")
    rows, full = [], {}
    for module, default_args, quick_args, smoke_args, adapter in BENCHES:
        name = module.split(".", 1)[1]
        if only and name not in only:
            continue
        bench_args = quick_args if args.quick else smoke_args if args.smoke else default_args
        print(f"\n### {module} {' '.join(bench_args)}", flush=True)
        start = time.time()
        result = importlib.import_module(module).main(bench_args)
        full[name] = result
        rows += adapter(result)
        print(f"### {module}: {time.time() - start:.0f} s", flush=True)
    header = ("work", "this project", "reference's way", "ratio", "note / machine limit")
    lines = [f"Machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}; "
             f"`python bench/run_all.py{' --quick' if args.quick else ' --smoke' if args.smoke else ''}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    print("\n" + "\n".join(lines))
    if args.json:
        from utils.io import atomic_write_json

        atomic_write_json(args.json, full, indent=1, default=str)
    return rows


if __name__ == "__main__":
    main()

"""Cost of the retrieval protocol against the similarity products it needs and the reference loop.

The whole protocol (1k and 10k bags, both directions, 10 bags each) should cost less than twice
the bare similarity-matrix products of its bags. This script times, side by side in one run on
random paired embeddings:

1. the bare products ``img[bag] @ rec[bag].T`` of every bag in float64 (the precision the
   protocol uses), with whichever of torch and numpy is faster here, and the same in float32 for
   the cost of float64;
2. ``utils.metrics.evaluate_retrieval`` (normalisation, bags, tiled products, both directions);
3. the reference test code's way: per bag and direction a float32 ``np.dot`` and, per query, an
   argsort of the negated similarity row and the position of the pair in it.

Usage: ``python bench/eval.py [--n 12000] [--dim 1024]``.

``--memory`` measures instead the peak memory of ``evaluate_retrieval`` on ``--memory_n`` random
float32 pairs (default the test and train splits' 51,304 and 238,408) for each ``--medr`` bag size,
this checkout's ``utils/metrics.py`` against the version at ``--old_rev`` (the last one that copied
the whole split to float64 before drawing the bags), each run in its own child process: peak
resident memory (``ru_maxrss``) minus the resident memory once the embeddings exist, so the
interpreter, the imports and the inputs are not counted. It also checks that both versions return
the very same numbers. Linux only (it reads ``/proc/self/statm``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

try:
    from utils.metrics import RECALL_KS, draw_bags, evaluate_retrieval, format_results, resolve_bag_sizes
except ModuleNotFoundError:  # run as `python bench/eval.py`: the checkout is not on sys.path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from utils.metrics import RECALL_KS, draw_bags, evaluate_retrieval, format_results, resolve_bag_sizes

ROOT = Path(__file__).resolve().parents[1]
# The last utils/metrics.py that converted the whole split to float64 before drawing the bags.
OLD_REV = "ee286157bafc2c1f8300d1db0d7e62569c42af10"
SPLIT_SIZES = (51304, 238408)  # Recipe1M's test and train retrieval splits


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=12000, help="number of random embedding pairs (default 12000)")
    p.add_argument("--dim", type=int, default=1024, help="embedding dimension (default 1024)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the bags and of the random data")
    p.add_argument("--medr", type=int, nargs="+", default=None,
                   help="bag sizes (default 1000 10000, the test protocol's)")
    p.add_argument("--bags", type=int, default=10, help="bags per size (default 10)")
    p.add_argument("--noise", type=float, default=None,
                   help="std of the noise added to an image embedding to make its recipe (default "
                        "sqrt(dim)/3.6, which gives recalls near the paper's on 1k bags)")
    p.add_argument("--ref_bags", type=int, default=None,
                   help="time the reference loop on this many bags per size and extrapolate "
                        "(default: all bags, measured)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    p.add_argument("--memory", action="store_true",
                   help="measure peak memory of evaluate_retrieval, this checkout against --old_rev")
    p.add_argument("--memory_n", type=int, nargs="+", default=list(SPLIT_SIZES),
                   help="with --memory: numbers of pairs (default 51304 238408, the test and train splits)")
    p.add_argument("--old_rev", default=OLD_REV,
                   help="with --memory: the git revision of utils/metrics.py to compare with "
                        "(default: the last one converting whole splits)")
    p.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    return p


def make_embeddings(n: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 paired embeddings (recipe = image + noise), as test.py saves them."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, dim), dtype=np.float32)
    rec = img + np.float32(noise) * rng.standard_normal((n, dim), dtype=np.float32)
    return img, rec


def _unit(x: np.ndarray, dtype) -> np.ndarray:
    x = x.astype(dtype)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _time_products(a, b, bag_lists, matmul, desc, quiet) -> float:
    """Seconds spent in ``matmul(a[bag], b[bag])`` over all bags (gathers not counted)."""
    total = 0.0
    for bag in tqdm([bag for bags in bag_lists for bag in bags], desc=desc, disable=quiet, leave=False):
        x, y = a[bag], b[bag]
        t0 = time.perf_counter()
        matmul(x, y)
        total += time.perf_counter() - t0
    return total


def _torch_mm(x, y):
    return x @ y.T


def _numpy_mm(x, y):
    return x @ y.T


def reference_protocol(img: np.ndarray, rec: np.ndarray, bag_lists, quiet: bool):
    """The reference's way, per bag and direction; returns (seconds, results by bag key)."""
    total, results = 0.0, {}
    for key, bags in bag_lists.items():
        entry = {}
        for direction in ("im2rec", "rec2im"):
            glob_rank, glob_recall = [], dict.fromkeys(RECALL_KS, 0.0)
            for ids in tqdm(bags, desc=f"reference {key} {direction}", disable=quiet, leave=False):
                t0 = time.perf_counter()
                im_sub, instr_sub = img[ids, :], rec[ids, :]
                if direction == "im2rec":
                    sims = np.dot(im_sub, instr_sub.T)
                else:
                    sims = np.dot(instr_sub, im_sub.T)
                med_rank, recall = [], dict.fromkeys(RECALL_KS, 0.0)
                for ii in range(len(ids)):
                    sorting = np.argsort(-sims[ii, :]).tolist()
                    pos = sorting.index(ii)  # where the pair ended up
                    for k in RECALL_KS:
                        if pos + 1 <= k:
                            recall[k] += 1
                    med_rank.append(pos + 1)
                for k in RECALL_KS:
                    glob_recall[k] += recall[k] / len(ids)
                glob_rank.append(np.median(med_rank))
                total += time.perf_counter() - t0
            entry[direction] = {"medR": float(np.average(glob_rank))}
            entry[direction].update({f"R@{k}": v / len(bags) for k, v in glob_recall.items()})
        results[key] = entry
    return total, results


# --------------------------------------------------------------------------------------------
# --memory
# --------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    """The current resident memory of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fill_embeddings(n: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_embeddings``' kind of data, drawn by blocks of rows so that no temporary outgrows a block."""
    rng = np.random.default_rng(seed)
    img = np.empty((n, dim), dtype=np.float32)
    rec = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 8192):
        e = min(s + 8192, n)
        img[s:e] = rng.standard_normal((e - s, dim), dtype=np.float32)
        rec[s:e] = img[s:e] + np.float32(noise) * rng.standard_normal((e - s, dim), dtype=np.float32)
    return img, rec


def _memory_child(spec: str) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    job = json.loads(spec)
    module_spec = importlib.util.spec_from_file_location("metrics_under_test", job["module"])
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    img, rec = _fill_embeddings(job["n"], job["dim"], job["noise"], job["seed"])
    base = _rss_bytes()
    t0 = time.perf_counter()
    results = module.evaluate_retrieval(img, rec, medr=job["medr"], seed=job["seed"], bags=job["bags"])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux
    print(json.dumps({"extra_bytes": peak - base, "inputs_bytes": img.nbytes + rec.nbytes,
                      "seconds": seconds, "results": results}))


def _old_metrics(rev: str, folder: Path) -> Path:
    """``utils/metrics.py`` at ``rev`` written into ``folder``."""
    try:
        text = subprocess.run(["git", "show", f"{rev}:utils/metrics.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        raise SystemExit(f"error: --old_rev {rev}: cannot read utils/metrics.py from git "
                         f"({str(detail).strip()})") from None
    path = folder / "metrics_old.py"
    path.write_text(text, encoding="utf-8")
    return path


def memory_main(args) -> list[dict]:
    """``--memory``: peak memory of evaluate_retrieval, old and new, for each N and bag size."""
    if not Path("/proc/self/statm").exists():
        raise SystemExit("error: --memory reads /proc/self/statm (Linux only)")
    noise = args.dim**0.5 / 3.6 if args.noise is None else args.noise
    sizes = args.medr or [1000, 10000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        modules = {"old": _old_metrics(args.old_rev, Path(tmp)), "new": ROOT / "utils" / "metrics.py"}
        print(f"evaluate_retrieval peak memory: dim {args.dim}, {args.bags} bags per size, float32 inputs; "
              f"old = utils/metrics.py at {args.old_rev[:12]}, new = this checkout")
        for n in args.memory_n:
            for size in sizes:
                row = {"n": n, "bag": size}
                for name, module in modules.items():
                    job = {"module": str(module), "n": n, "dim": args.dim, "noise": noise, "seed": args.seed,
                           "medr": size, "bags": args.bags}
                    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
                    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory_child",
                                          json.dumps(job)], cwd=ROOT, env=env, capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(f"error: the {name} measurement (N {n}, bag {size}) failed:\n"
                                         f"{out.stderr[-2000:]}")
                    row[name] = json.loads(out.stdout.strip().splitlines()[-1])
                row["identical"] = row["old"]["results"] == row["new"]["results"]
                rows.append(row)
                mb = 1 << 20
                print(f"N {n:>7}  bag {size:>6}  inputs {row['new']['inputs_bytes'] / mb:8.0f} MB | peak above "
                      f"inputs: old {row['old']['extra_bytes'] / mb:8.0f} MB, new {row['new']['extra_bytes'] / mb:7.0f} MB"
                      f" | old {row['old']['seconds']:6.1f} s, new {row['new']['seconds']:6.1f} s | "
                      f"same numbers: {'yes' if row['identical'] else 'NO'}", flush=True)
    return rows


def main(argv=None) -> dict:
    """Run the benchmark, print the times and ratios; return them as a dict."""
    args = get_parser().parse_args(argv)
    if args.memory_child is not None:
        _memory_child(args.memory_child)
        return {}
    if args.memory:
        if args.dim < 1 or args.bags < 1 or min(args.memory_n) < 1:
            raise SystemExit("--dim, --bags and --memory_n must be positive")
        return {"memory": memory_main(args)}
    if args.n < 1 or args.dim < 1 or args.bags < 1 or (args.ref_bags is not None and args.ref_bags < 1):
        raise SystemExit("--n, --dim, --bags and --ref_bags must be positive")
    quiet = args.no_progress
    noise = args.dim**0.5 / 3.6 if args.noise is None else args.noise
    img, rec = make_embeddings(args.n, args.dim, noise, args.seed)
    sizes = resolve_bag_sizes(args.medr, args.n)
    bag_lists = {
        key: [list(range(args.n))] if key == "all" else draw_bags(args.n, size, args.seed, args.bags)
        for key, size in sizes
    }
    print(f"{args.n} random pairs, dim {args.dim}, bags {[(k, len(b)) for k, b in bag_lists.items()]}, "
          f"torch threads {torch.get_num_threads()}")

    # Which library multiplies float64 faster here: try both on the largest bag.
    u64 = _unit(img, np.float64), _unit(rec, np.float64)
    t64 = torch.from_numpy(u64[0]), torch.from_numpy(u64[1])
    largest = [[max((b for bags in bag_lists.values() for b in bags), key=len)]]
    trial = {
        "torch": _time_products(*t64, largest, _torch_mm, "trial torch", True),
        "numpy": _time_products(*u64, largest, _numpy_mm, "trial numpy", True),
    }
    backend = min(trial, key=trial.get)
    a64, b64, mm = (t64[0], t64[1], _torch_mm) if backend == "torch" else (u64[0], u64[1], _numpy_mm)
    lists = list(bag_lists.values())

    products_s = _time_products(a64, b64, lists, mm, f"products float64 ({backend})", quiet)
    t0 = time.perf_counter()
    results = evaluate_retrieval(img, rec, medr=args.medr, seed=args.seed, bags=args.bags)
    protocol_s = time.perf_counter() - t0
    u32 = _unit(img, np.float32), _unit(rec, np.float32)
    t32 = torch.from_numpy(u32[0]), torch.from_numpy(u32[1])
    a32, b32 = (t32 if backend == "torch" else u32)
    products32_s = _time_products(a32, b32, lists, mm, f"products float32 ({backend})", quiet)

    ref_lists = bag_lists if args.ref_bags is None else {k: b[: args.ref_bags] for k, b in bag_lists.items()}
    ref_measured_s, ref_results = reference_protocol(u32[0], u32[1], ref_lists, quiet)
    scale = sum(len(b) for b in bag_lists.values()) / sum(len(b) for b in ref_lists.values())
    reference_s = ref_measured_s * scale  # per-bag cost is the same for every bag of a size
    diff = None
    if args.ref_bags is None or all(len(b) <= args.ref_bags for b in bag_lists.values()):
        diff = max(abs(results[k][d][m] - ref_results[k][d][m])
                   for k in results for d in ("im2rec", "rec2im") for m in results[k][d])

    print(format_results(results, title="evaluate_retrieval"))
    print(f"float64 products, trial on one {len(largest[0][0])}-bag: "
          + ", ".join(f"{k} {v:.3f} s" for k, v in trial.items()) + f" -> {backend}")
    print(f"bare float64 products ({backend}):      {products_s:9.2f} s")
    print(f"bare float32 products ({backend}):      {products32_s:9.2f} s   "
          f"(float64 costs {products_s / products32_s:.2f}x)")
    print(f"evaluate_retrieval (whole protocol): {protocol_s:9.2f} s")
    print(f"ratio protocol / float64 products:   {protocol_s / products_s:9.2f}   (goal < 2)")
    label = "measured" if scale == 1 else f"extrapolated x{scale:.1f} from {ref_measured_s:.2f} s measured"
    print(f"reference per-row argsort loop:      {reference_s:9.2f} s   ({label})")
    print(f"speed-up vs reference:               {reference_s / protocol_s:9.2f}x")
    if diff is not None:
        print(f"largest metric difference vs reference (float32 sims): {diff:.2e}")
    return {
        "backend": backend, "products_s": products_s, "products32_s": products32_s,
        "protocol_s": protocol_s, "ratio": protocol_s / products_s, "reference_s": reference_s,
        "reference_extrapolated": scale != 1, "speedup": reference_s / protocol_s,
        "max_metric_diff": diff, "results": results,
    }


if __name__ == "__main__":
    main()

"""The whole X-MRS pipeline on the synthetic Recipe1M, on a CPU, in one command; docs/pipeline.md."""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from utils.host import matmul_flops
from utils.io import atomic_write_text
from utils.metrics import format_results, results_by_bag
from utils.runs import (
    GENERATED_DIR,
    MODELS_DIR,
    SYNTHESIS_FIGURE,
    VIS_DIR,
    best_glob,
    gan_ckpt_name,
    gan_run_glob,
    run_dir_glob,
    shown,
)

ROOT = Path(__file__).resolve().parent

# Sizes that fit a 2-core CPU in minutes while leaving retrieval learnable (README: "Demo"). From
# random weights the paper's hardest-negative loss alone collapses the space, so the demo averages
# over negatives for its first epochs (--ohem_warmup), then takes the hardest at a tenth of the lr.
# Three epochs of mean negatives and two of the hardest: val medR 37.5 and 42 on data seeds 1 and 2
# (one thread), where two and one gave 50 on seed 1 (docs/synthesis.md, "a five-epoch FoodSpace").
CURRICULUM = 3  # epochs of mean negatives before the hardest ones (and the lr decay)
MODEL_FLAGS = ["--image_backbone", "resnet18", "--image_pretrained", "none", "--text_init", "none",
               "--image_size", "64", "--BERT_hidden", "128", "--BERT_layers", "2", "--BERT_heads", "2",
               "--BERT_intermediate", "256", "--embDim", "128"]
# The generator at CPU scale (docs/synthesis.md): a small G and D, and the departures from the
# paper's settings that let it learn in a few hundred steps: G's input whitened by the train recipe and
# image embeddings' within-class covariance (--G_whiten), because in the demo's short FoodSpace the
# directions that tell one dish from another hold a tiny share of the variance, too small for G to
# pick up, so the recipe would be drowned by the conditioning noise; outputs read as pixels; the
# cycle terms' encoder sees a random view of G's images (--cycle_aug all), so that G draws what an
# encoder it never saw recognises rather than what only its own encoder reads, and on the image
# itself (--cycle_both); the cycle terms compare whitened embeddings (--cycle_whiten), because the
# space is nearly collapsed and plain cosines barely tell one dish from another; D sees views of
# both images (--D_aug all); G's image, shrunk to 16 px, is pulled towards the recipe's photo
# shrunk alike (--W_LAYOUT_LOSS 1000): the plate and ground any encoder sees; and G reads which dish
# its input is, as one code per class weighted by the posterior in the whitened space, plus a tenth
# of the whitened input for the recipe's own details (--G_class_posterior --G_class_residual 0.1,
# unit codes scaled by --G_emb_scale 2*sqrt), because in a few hundred steps G cannot learn to read
# the dish out of the embedding itself, and the dish sets the plate and the ground; and G's last layer
# gets a 16 px image that is linear in its conditioning mean (--G_coarse_rgb 16), which the layout
# term trains in one step, because through the convolutions a few hundred steps drew the plate in
# few rows.
GAN_FLAGS = ["--embDim", "128", "--Z_DIM", "32", "--GF_DIM", "16", "--DF_DIM", "16", "--EMBEDDING_DIM", "64",
             "--R_NUM", "1", "--G_whiten", "1e-4", "--G_class_posterior", "--G_class_residual", "0.1",
             "--G_emb_scale", "2*sqrt", "--G_output_space", "pixel", "--cycle_aug", "all",
             "--cycle_both", "--cycle_whiten", "1e-4", "--D_aug", "all", "--W_LAYOUT_LOSS", "1000",
             "--G_coarse_rgb", "16"]

# Seconds each stage took at the defaults on the machine this demo was sized on (2 cores, fp32
# matmul MEASURED_GFLOPS), used to estimate the total on another machine by its matmul speed.
MEASURED_GFLOPS = 265.0  # python demo.py --seed 1 alone on the project's 2-core machine, 2026-12-07, its GAN stages
# rerun alike with the current GAN_FLAGS (README: "Demo")
MEASURED_SECONDS = {"synthetic": 13, "create_lmdb": 6, "train": 204, "test": 19, "judge_train": 183, "judge_test": 15,
                    "gan_train": 110, "gan_test": 18}
JUDGE_SEED = 4321  # the judge's train.py --seed (the main run keeps train.py's default)
GAN_BATCH, GAN_LR = 16, "5e-4"
DRAW_PROCESSES = min(os.cpu_count() or 1, 8)  # drawing the synthetic images; the files are the same for any number
BUDGET_MINUTES = 12.0  # the demo is sized to finish within this on the project's 2-core machine


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(usage="%(prog)s [--out DIR] [--seed S] [--force] [options]", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    p.add_argument("--force", action="store_true", help="redo every stage, even those already finished")
    p.add_argument("--recipes", type=int, default=3000, help="recipes in the synthetic data set")
    p.add_argument("--epochs", type=int, default=5, help="retrieval training epochs")
    p.add_argument("--gan_epochs", type=int, default=2, help="synthesis training epochs")
    p.add_argument("--train_iters", type=int, default=0, help="cap on retrieval iterations per epoch (0: no cap)")
    p.add_argument("--gan_iters", type=int, default=86, help="cap on GAN iterations per epoch (0: no cap)")
    p.add_argument("--judge_iters", type=int, default=0,
                   help="cap on the judge's retrieval iterations per epoch (0: no cap)")
    # 0: on the 2-core machine the demo was sized on, starting loader processes every epoch cost more
    # than the decoding of its small images they take off the main process (train.py epoch 38.8 s -> 37.1 s)
    p.add_argument("--workers", type=int, default=0, help="data loader workers for every stage")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data set")
    return p


def printable(args: list[str]) -> str:
    """A stage's command as it can be pasted in the repository root: ``python`` and relative paths."""
    return shlex.join(["python", *(shown(a) for a in args)])


class Pipeline:
    """Runs stages as subprocesses, skipping those whose marker exists."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out, self.force = out, force
        self.timings: dict[str, float] = {}

    def stage(self, name: str, args: list[str]) -> None:
        marker = self.out / f".done_{name}"
        if marker.exists() and not self.force:
            print(f"[demo] {name}: done before, reused ({shown(marker)})", flush=True)
            return
        cmd = [sys.executable, *args]
        print(f"[demo] {name}: {printable(args)}", flush=True)
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"[demo] stage {name} failed (exit {proc.returncode}): {printable(args)}")
        self.timings[name] = time.time() - start
        atomic_write_text(marker, f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        print(f"[demo] {name}: finished in {self.timings[name]:.0f} s", flush=True)


def latest(pattern: str) -> Path:
    """The last (newest, by the timestamped name) path matching ``pattern``."""
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise SystemExit(f"[demo] expected output missing: {pattern}")
    return Path(matches[-1])


def estimate(gflops: float) -> str:
    """One line: this host's matmul speed and the demo's expected total here."""
    measured = sum(MEASURED_SECONDS.values()) / 60  # minutes at MEASURED_GFLOPS
    total = measured * MEASURED_GFLOPS / gflops
    line = (f"[demo] host: fp32 matmul {gflops:.0f} GFLOP/s; the demo took {measured:.1f} min on a "
            f"{MEASURED_GFLOPS:.0f} GFLOP/s 2-core machine, so expect about {total:.0f} min here")
    if total > BUDGET_MINUTES:
        line += f" (more than the {BUDGET_MINUTES:.0f} min it is sized for; --gan_epochs 1 shortens it)"
    return line


def main(argv=None) -> dict:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    r1m, data, runs = out / "Recipe1M", out / "loader_data", out / "runs"
    run = Pipeline(out, args.force)
    workers = str(args.workers)
    print(estimate(matmul_flops() / 1e9), flush=True)
    start = time.time()

    run.stage("synthetic", ["-m", "data.synthetic", "--out", str(r1m), "--recipes", str(args.recipes),
                            "--seed", str(args.seed), "--image_size", "96", "--workers", str(DRAW_PROCESSES),
                            "--force"])  # the stage runs again only to replace the set
    run.stage("create_lmdb", ["create_lmdb.py", "--r1m_path", str(r1m), "--data_path", str(data),
                              "--tokenizer", "train", "--vocab_size", "3000", "--workers", workers])
    if args.force or not (out / ".done_train").exists():
        for stale in (out / ".done_test", out / ".done_gan_train", out / ".done_gan_test"):
            stale.unlink(missing_ok=True)  # later stages must follow a new training run
    train_flags = [*MODEL_FLAGS, "--data_path", str(data), "--img_path", str(r1m / "images"), "--runs_dir", str(runs),
                   "--epochs", str(args.epochs), "--batch_size", "32", "--lr", "5e-4", "--ohem", "true",
                   "--ohem_warmup", str(CURRICULUM), "--decayLR", str(CURRICULUM), "--workers", workers, "--no_cuda",
                   "--medr", "500", "--log_every", "20"]
    run.stage("train", ["train.py", *train_flags, "--max_iters", str(args.train_iters), "--experiment_sufix", "_demo"])
    run_dir = latest(run_dir_glob(runs, "_demo"))
    ckpt = latest(glob.escape(str(run_dir / MODELS_DIR)) + "/" + best_glob("REC"))
    run.stage("test", ["test.py", "--model_init_path", str(ckpt), "--partitions", "test,val,train",
                       "--workers", workers, "--no_cuda", "--vis", "6",
                       "--metrics_json", str(out / "retrieval.json")])
    judge_flags = [*train_flags, "--max_iters", str(judge_cap(args.train_iters, args.judge_iters))]
    judge_dir = train_judge(run, out, runs, judge_flags, workers, args.force)
    gan_flags = ["--encoder_dir", str(run_dir), "--no_cuda", "--workers", workers, "--judge_dir", str(judge_dir)]
    if not (out / ".done_gan_train").exists():
        (out / ".done_gan_test").unlink(missing_ok=True)
    run.stage("gan_train", ["GAN_train.py", *gan_flags, *GAN_FLAGS, "--epochs", str(args.gan_epochs),
                            "--batch_size", str(GAN_BATCH), "--lr", GAN_LR, "--medr", "100",
                            "--max_iters", str(args.gan_iters)])
    gan_run = latest(gan_run_glob(run_dir))
    run.stage("gan_test", ["GAN_test.py", *gan_flags, "--trained_G_model_path", str(gan_run / gan_ckpt_name("G", "last")),
                           "--synthesis_n", "8", "--metrics_json", str(out / "synthesis.json")])
    return summary(out, run_dir, gan_run, time.time() - start, run.timings)


def judge_cap(train_iters: int, judge_iters: int) -> int:
    """The judge's --max_iters: the smaller of the two caps (0: no cap)."""
    caps = [c for c in (train_iters, judge_iters) if c > 0]
    return min(caps) if caps else 0


def train_judge(run: Pipeline, out: Path, runs: Path, train_flags: list[str], workers: str, force: bool) -> Path:
    """The judge: the same retrieval training with another seed, and test.py's outputs for test and val."""
    if force or not (out / ".done_judge_train").exists():
        for stale in (out / ".done_judge_test", out / ".done_gan_train", out / ".done_gan_test"):
            stale.unlink(missing_ok=True)  # the synthesis stages are judged by the new judge
    run.stage("judge_train", ["train.py", *train_flags, "--experiment_sufix", "_judge", "--seed", str(JUDGE_SEED)])
    judge_dir = latest(run_dir_glob(runs, "_judge"))
    ckpt = latest(glob.escape(str(judge_dir / MODELS_DIR)) + "/" + best_glob("REC"))
    run.stage("judge_test", ["test.py", "--model_init_path", str(ckpt), "--partitions", "test,val", "--workers", workers,
                             "--no_cuda", "--vis", "0"])
    return judge_dir


def judge_lines(synthesis: dict) -> list[str]:
    """The judge's rows (generated and real photo -> recipe, same bags) beside the own encoder's, and the spreads."""
    judge = synthesis.get("judge")
    if judge is None:
        return []
    lines = ["synthesis scored by G's own encoder and by the independent judge (another seed; test split):"]
    rows = {"own: generated -> recipe": synthesis["fake2rec"], "own: real -> recipe": synthesis["real2rec"],
            "judge: generated -> recipe": judge["fake2rec"], "judge: real -> recipe": judge["real2rec"]}
    lines.append(format_results(results_by_bag(rows)))
    for who, ratios in (("own encoder", synthesis["ratio"]), ("judge", judge["ratio"])):
        lines += [f"{who} ({bag}): generated / real medR x{r['medR']:.2f}, R@10 x{r['R@10']:.2f}"
                  for bag, r in ratios.items()]
    lines.append(f"judge's spread (mean pairwise cosine distance): generated {judge['spread']['generated']:.4f}, "
                 f"real photos {judge['spread']['real']:.4f}")
    return lines


def bag_rows(bag: str, entry: dict, synthesis: dict) -> dict:
    """One bag's real and generated scores as :func:`utils.metrics.format_results` rows, directions side by side."""
    rows = {"n": entry["n"], "bags": entry["bags"], "real image -> recipe": entry["im2rec"]}
    fake = synthesis["fake2rec"].get(bag)
    if fake is not None:
        rows["generated -> recipe"] = fake
    rows["recipe -> real image"] = entry["rec2im"]
    if fake is not None:
        rows["recipe -> generated"] = synthesis["rec2fake"][bag]
        rows["generated -> real image"] = synthesis["fake2img"][bag]
    return {bag: rows}


def summary(out: Path, run_dir: Path, gan_run: Path, seconds: float, timings: dict[str, float]) -> dict:
    """Print retrieval and synthesis scores side by side, with the chance level."""
    retrieval = json.loads((out / "retrieval.json").read_text())["test"]["en"]
    synthesis = json.loads((out / "synthesis.json").read_text())
    lines = ["", "=" * 78, "X-MRS demo on the synthetic Recipe1M (test split, English)", "=" * 78]
    for bag, entry in retrieval.items():
        n = entry["n"]
        lines.append(f"bags of {n} ({entry['bags']} bag(s)): chance R@1 {100 / n:.2f}%, chance medR {(n + 1) / 2:.1f}")
        lines.append(format_results(bag_rows(bag, entry, synthesis)))
        fake = synthesis["fake2rec"].get(bag)
        if fake is not None:
            real = entry["im2rec"]
            lines.append(f"generated / real: medR x{fake['medR'] / real['medR']:.2f}, "
                         f"R@10 x{fake['R@10'] / max(real['R@10'], 1e-12):.2f}")
    lines += judge_lines(synthesis)
    lines.append(f"Frechet distance, real vs generated FoodSpace image features: {synthesis['frechet_distance']:.4f} "
                 f"(generated with --score_noise_mode {synthesis.get('score_noise_mode', '?')})")
    if timings:
        lines.append("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    lines += [f"TensorBoard: tensorboard --logdir {shown(run_dir)}   (synthesis: {shown(gan_run)})",
              f"retrieval figures: {shown(run_dir / VIS_DIR)}",
              f"synthesis images: {shown(gan_run / GENERATED_DIR)}  figure: {shown(gan_run / SYNTHESIS_FIGURE)}",
              f"total {seconds / 60:.1f} min"]
    print("\n".join(lines), flush=True)
    return {"retrieval": retrieval, "synthesis": synthesis, "run_dir": str(run_dir), "gan_run": str(gan_run),
            "timings": timings}


if __name__ == "__main__":
    main()

"""Check the GPU paths of the pipeline in a few minutes: AMP, NCCL collectives, torchrun.

    python bench/gpu_check.py                 # on a machine with CUDA; exits 0 when every check passes
    python bench/gpu_check.py --keep --out /tmp/gpu_check   # keep the data and runs for a look

Without a CUDA device it prints ``skipped: no CUDA device`` and exits 0. With one, it builds a tiny
synthetic Recipe1M and runs the real scripts on it as subprocesses (what a user runs):

* ``synthetic``, ``create_lmdb``: the data (``python -m data.synthetic``, ``create_lmdb.py --tokenizer train``);
* ``nccl_collectives``: every helper of ``utils/distributed.py`` under a real NCCL group (one rank
  per visible GPU, launched by torchrun), fed CPU and CUDA tensors: sums, uneven gathers with
  gradients, objects, barrier;
* ``train_bf16``, ``train_fp16``: ``train.py`` steps with ``--amp bf16`` / ``--amp fp16`` on a tiny
  model; the saved weights must be finite;
* ``test_fp16``: ``test.py --amp fp16`` embeds every split; the embeddings must be finite;
* ``gan_bf16``, ``gan_fp16``: ``GAN_train.py`` (tiny G and D, two iterations) on those embeddings;
* ``torchrun_train``: ``torchrun --nproc_per_node <visible GPUs> train.py`` (DDP over NCCL when
  there are two GPUs or more);
* ``loader_throughput``: is train.py loader-bound? Its own step (``train.train_step`` after the
  device normalisation, ResNet-50 at 224, bf16 where supported) fed by its own dataset and loader
  settings (``--image_backend fast``, uint8, pinned memory, persistent workers) at ``--workers`` 4,
  8 and cores-1, against the same steps fed from a batch already in GPU memory. The images are
  photo-sized JPEGs (scikit-image's photos when it is installed, else the synthetic pictures
  enlarged with noise). Prints samples/s of each and their ratio; it fails only on an error.

Each check prints ``PASS``, ``FAIL`` (with the end of its output) or ``SKIP`` (a check it needs
failed, or bf16 is not supported) and its time; the exit status is 1 when any check failed.
``--cpu`` runs the same checks on the CPU (gloo instead of NCCL, two torchrun processes): a test of
this script on a machine without a GPU, not of the GPU paths.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A tiny FoodSpaceNet: the checks are about devices and precision, not about learning.
TINY_MODEL = ["--image_backbone", "resnet18", "--image_pretrained", "none", "--text_init", "none",
              "--image_size", "64", "--BERT_hidden", "32", "--BERT_layers", "1", "--BERT_heads", "2",
              "--BERT_intermediate", "64", "--embDim", "32"]
TINY_GAN = ["--Z_DIM", "8", "--GF_DIM", "4", "--DF_DIM", "4", "--EMBEDDING_DIM", "8", "--R_NUM", "1",
            "--embDim", "32", "--batch_size", "8", "--epochs", "1", "--max_iters", "2", "--grid_n", "4",
            "--medr", "1000"]


class CheckFailed(RuntimeError):
    """A check's command failed or its result is wrong; the message says what and shows the output."""


@dataclass
class Check:
    """One named check; ``run`` raises :class:`CheckFailed` or returns a short note."""

    name: str
    run: Callable[[], str]
    needs: tuple[str, ...] = ()
    skip_reason: str = ""  # non-empty: skipped up front (e.g. no bf16 on this GPU)


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    seconds: float
    note: str


def run_checks(checks: Sequence[Check], echo: Callable[[str], None] = print) -> list[Result]:
    """Run the checks in order; a check whose ``needs`` did not pass is skipped. Prints one line each."""
    results: dict[str, Result] = {}
    for check in checks:
        start = time.perf_counter()
        failed_needs = [n for n in check.needs if n not in results or results[n].status != "PASS"]
        if check.skip_reason or failed_needs:
            note = check.skip_reason or f"needs {', '.join(failed_needs)}"
            result = Result(check.name, "SKIP", 0.0, note)
        else:
            try:
                note = check.run() or ""
                result = Result(check.name, "PASS", time.perf_counter() - start, note)
            except CheckFailed as err:
                result = Result(check.name, "FAIL", time.perf_counter() - start, str(err))
            except Exception as err:  # a bug or an unexpected state still yields a FAIL line, not a crash
                result = Result(check.name, "FAIL", time.perf_counter() - start, f"{type(err).__name__}: {err}")
        results[check.name] = result
        first, *rest = (result.note or "").splitlines() or [""]
        echo(f"{result.status} {result.name} ({result.seconds:.1f}s){': ' + first if first else ''}")
        for line in rest:
            echo(f"    {line}")
    return list(results.values())


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command from the repository root; returns its output, raises CheckFailed on failure."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                **(env or {})}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise CheckFailed(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from err
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise CheckFailed(f"exit status {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return output


def _only_child(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise CheckFailed(f"expected one {pattern} in {folder}, found {len(found)}")
    return found[0]


def _finite_weights(path: Path) -> int:
    """Number of tensors in the checkpoint's ``model``; raises CheckFailed on a NaN or an inf."""
    import torch

    from utils.checkpoint import load_checkpoint

    model = load_checkpoint(path)["model"]
    bad = [k for k, v in model.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise CheckFailed(f"{path}: non-finite weights in {bad[:5]}")
    return len(model)


# Runs under torchrun, one process per GPU (--cpu: two gloo processes): each helper of
# utils/distributed.py fed CPU and device tensors. With one rank, init_distributed starts no
# group (nothing to talk to), so the worker starts a one-rank group the same way.
NCCL_WORKER = r"""
import json, sys
import torch
import torch.distributed as dist
from utils import distributed as du

cuda = sys.argv[1] == "cuda"
info = du.init_distributed(use_cuda=cuda)
if not du.is_dist():
    if cuda:
        torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", info.local_rank))
    else:
        dist.init_process_group("gloo")
device = torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")
rank, world = dist.get_rank(), dist.get_world_size()
out = {"rank": rank, "local": info.local_rank, "backend": dist.get_backend(),
       "collective_device": str(du.collective_device())}
for name, where in (("cpu", torch.device("cpu")), ("device", device)):
    flag = torch.tensor([float(rank + 1)], device=where)
    total = du.all_reduce_sum(flag)
    out[f"sum_from_{name}"] = [total.item(), str(total.device), flag.item()]
x = torch.full((rank + 1, 3), float(rank), device=device, requires_grad=True)  # uneven rows per rank
gathered = du.gather_with_grad(x)
(gathered * 2).sum().backward()
out["gather"] = [list(gathered.shape), str(gathered.device), gathered[:, 0].tolist(), x.grad.sum().item()]
out["object"] = du.broadcast_object({"from": rank})
out["objects"] = du.all_gather_object(rank)
du.barrier()
print("WORKER " + json.dumps(out), flush=True)
dist.destroy_process_group()
"""


def nccl_expected(rank: int, local: int, world: int, cuda: bool) -> dict:
    """What rank ``rank`` of NCCL_WORKER must print when ``world`` ranks run."""
    device = f"cuda:{local}" if cuda else "cpu"
    total = float(world * (world + 1) // 2)
    column = [float(r) for r in range(world) for _ in range(r + 1)]
    return {"rank": rank, "local": local, "backend": "nccl" if cuda else "gloo", "collective_device": device,
            "sum_from_cpu": [total, "cpu", rank + 1.0], "sum_from_device": [total, device, rank + 1.0],
            # every local element gets gradient 2; the other ranks' rows send none back
            "gather": [[len(column), 3], device, column, 2.0 * 3 * (rank + 1)],
            "object": {"from": 0}, "objects": list(range(world))}


class GpuChecks:
    """The checks of one run, sharing the data folder and the runs they make."""

    def __init__(self, out: Path, cpu: bool, nproc: int, recipes: int, timeout: float):
        self.out, self.cpu, self.nproc, self.recipes, self.timeout = out, cpu, nproc, recipes, timeout
        self.r1m, self.data = out / "Recipe1M", out / "loader_data"
        self.runs: dict[str, Path] = {}

    def _py(self, *args: str) -> str:
        # --cpu hides any GPU, so the scripts take their CPU paths even on a GPU machine.
        return _run([sys.executable, *args], self.timeout, {"CUDA_VISIBLE_DEVICES": ""} if self.cpu else None)

    def _torchrun(self, nproc: int, *args: str) -> str:
        """Run under torchrun; returns each rank's stdout in rank order (then torchrun's own output).

        The ranks share torchrun's stdout, where their lines can interleave mid-line; with
        ``--redirects 3`` each rank writes to its own file instead, read back here.
        """
        log_dir = Path(tempfile.mkdtemp(prefix="torchrun_logs_", dir=self.out))
        own = self._py("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                       "--log_dir", str(log_dir), "--redirects", "3", *args)
        ranks = [f.read_text(encoding="utf-8", errors="replace")
                 for rank in range(nproc) for f in sorted(log_dir.glob(f"**/attempt_0/{rank}/stdout.log"))]
        return "".join(ranks) + own

    def synthetic(self) -> str:
        self._py("-m", "data.synthetic", "--out", str(self.r1m), "--recipes", str(self.recipes), "--seed", "3",
                 "--image_size", "64", "--workers", "2", "--no_progress")
        return f"{self.recipes} recipes in {self.r1m}"

    def create_lmdb(self) -> str:
        self._py("create_lmdb.py", "--r1m_path", str(self.r1m), "--data_path", str(self.data), "--tokenizer",
                 "train", "--vocab_size", "400", "--workers", "1")
        counts = json.loads((self.data / "manifest.json").read_text(encoding="utf-8"))["counts"]
        return f"counts {counts}"

    def nccl_collectives(self) -> str:
        script = self.out / "nccl_worker.py"
        script.write_text(NCCL_WORKER, encoding="utf-8")
        out = self._torchrun(self.nproc, str(script), "cpu" if self.cpu else "cuda")
        reports = [json.loads(line[len("WORKER "):]) for line in out.splitlines() if line.startswith("WORKER ")]
        if sorted(r.get("rank") for r in reports) != list(range(self.nproc)):
            raise CheckFailed(f"{len(reports)} of {self.nproc} ranks reported\n{out[-3000:]}")
        for got in reports:
            want = nccl_expected(got["rank"], got["local"], self.nproc, not self.cpu)
            if got != want:
                wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
                raise CheckFailed(f"rank {got['rank']}: (got, expected) {wrong}")
        return f"{self.nproc} rank(s), backend {reports[0]['backend']}, collective device " \
               f"{reports[0]['collective_device']}"

    def train(self, amp: str, nproc: int = 0) -> str:
        runs = self.out / f"runs_{amp}{'_torchrun' if nproc else ''}"
        args = [*TINY_MODEL, "--data_path", str(self.data), "--img_path", str(self.r1m / "images"),
                "--runs_dir", str(runs), "--batch_size", "8", "--workers", "2", "--epochs", "1", "--max_iters", "3",
                "--medr", "20", "--projector_every", "0", "--amp", amp]
        out = self._torchrun(nproc, "train.py", *args) if nproc else self._py("train.py", *args)
        run = _only_child(runs, "*__train*")
        tensors = _finite_weights(run / "models" / "model.pth.tar")
        if nproc:
            ranks = sum(f"rank {r}/{nproc}: trained on" in out for r in range(nproc))
            if ranks != nproc:
                raise CheckFailed(f"{ranks} of {nproc} ranks reported training\n{out[-3000:]}")
        else:
            self.runs[amp] = run
        return f"{run.name}: {tensors} finite tensors" + (f", {nproc} rank(s)" if nproc else "")

    def test(self, amp: str) -> str:
        import numpy as np

        run = self.runs["fp16"]
        ckpt = _only_child(run / "models", "model_BEST_REC_e*[0-9].pth.tar")
        self._py("test.py", "--model_init_path", str(ckpt), "--partitions", "test,val,train", "--workers", "2",
                 "--medr", "20", "--amp", amp)
        files = sorted(run.glob("foodSpace_vectors_*.npz"))
        if not files:
            raise CheckFailed(f"no foodSpace_vectors_*.npz in {run}")
        for path in files:
            with np.load(path, allow_pickle=False) as emb:
                for key in ("img_embeds", "rec_embeds"):
                    if not np.isfinite(emb[key]).all():
                        raise CheckFailed(f"{path}: non-finite {key}")
        return f"{len(files)} embedding files, all finite"

    def gan(self, amp: str) -> str:
        run = self.runs["fp16"]
        before = set((run / "GAN_runs").glob("GAN_*")) if (run / "GAN_runs").is_dir() else set()
        self._py("GAN_train.py", *TINY_GAN, "--encoder_dir", str(run), "--workers", "2", "--amp", amp)
        new = sorted(set((run / "GAN_runs").glob("GAN_*")) - before)
        if len(new) != 1:
            raise CheckFailed(f"expected one new GAN run in {run / 'GAN_runs'}, found {len(new)}")
        return f"{new[0].name}: G {_finite_weights(new[0] / 'G_last.pth.tar')}, " \
               f"D {_finite_weights(new[0] / 'D_last.pth.tar')} finite tensors"

    def loader_throughput(self, workers: Sequence[int] = (), steps: int = 40, batch_size: int = 64) -> str:
        """samples/s of train.py's step fed by its loader at each worker count, and fed from memory."""
        import torch

        img = photo_image_root(self.data, self.r1m / "images", self.out / "images_photo")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
        counts = sorted({w for w in (*(workers or (4, 8)), max(1, cores - 1)) if w <= max(1, cores - 1)})
        device = torch.device("cpu" if self.cpu else "cuda")
        amp = "none" if self.cpu else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        model = THROUGHPUT_CPU_MODEL if self.cpu else THROUGHPUT_MODEL
        rates = measure_throughput(self.data, img, counts, steps, batch_size, device, amp, model)
        memory = rates.pop("memory")
        lines = [f"fed from memory: {memory:.1f} samples/s (batch {batch_size}, {amp}, {device})"]
        for w, r in rates.items():
            bound = "loader-bound" if r < 0.9 * memory else "not loader-bound"
            lines.append(f"--workers {w}: {r:.1f} samples/s, {r / memory:.2f} of memory's: {bound}")
        return "\n".join(lines)

    def checks(self, bf16: bool) -> list[Check]:
        no_bf16 = "" if bf16 else "bf16 not supported on this device"
        data = ("synthetic", "create_lmdb")
        return [
            Check("synthetic", self.synthetic),
            Check("create_lmdb", self.create_lmdb, needs=("synthetic",)),
            Check("nccl_collectives", self.nccl_collectives),
            Check("train_bf16", lambda: self.train("bf16"), needs=data, skip_reason=no_bf16),
            Check("train_fp16", lambda: self.train("fp16"), needs=data),
            Check("test_fp16", lambda: self.test("fp16"), needs=("train_fp16",)),
            Check("gan_bf16", lambda: self.gan("bf16"), needs=("test_fp16",), skip_reason=no_bf16),
            Check("gan_fp16", lambda: self.gan("fp16"), needs=("test_fp16",)),
            Check("torchrun_train", lambda: self.train("bf16" if bf16 else "fp16", nproc=self.nproc), needs=data),
            Check("loader_throughput", self.loader_throughput, needs=data),
        ]


# train.py's architecture at the paper's sizes for the throughput check (weights random: only speed counts).
THROUGHPUT_MODEL = ["--image_backbone", "resnet50", "--image_pretrained", "none", "--text_init", "none",
                    "--image_size", "224"]
THROUGHPUT_CPU_MODEL = TINY_MODEL  # --cpu and the tests: the same code, a tiny model


def photo_image_root(data: Path, images: Path, out: Path) -> Path:
    """An image root holding, for every image of ``data``'s train partition, a photo-sized JPEG.

    Real photographs from scikit-image's wheel when it is installed (bench/loader.py's set, made
    offline), else the synthetic picture enlarged to 640x480 with noise: tiny synthetic pictures
    decode unrealistically fast, and the check is about the decode and transform cost.
    """
    import numpy as np
    from PIL import Image

    from data.lmdb_format import RecordReader, keys_file, lmdb_dir
    from data.recipe1m import image_path, load_keys

    try:
        from bench.loader import build_photos

        photos = build_photos(out.parent / "bench_photos", 50, seed=0)
    except SystemExit:  # no scikit-image
        photos = []
    reader = RecordReader(lmdb_dir(data, "train"))
    rng = np.random.default_rng(0)
    for k, rid in enumerate(load_keys(keys_file(data, "train"))):
        for image_id in reader.get(rid).images:
            target = image_path(out, "train", image_id)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if photos:
                shutil.copyfile(photos[k % len(photos)], target)
                continue
            small = Image.open(image_path(images, "train", image_id)).convert("RGB").resize((640, 480))
            noisy = np.asarray(small, np.int16) + rng.integers(-10, 11, (480, 640, 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(target, quality=90)
    return out


def measure_throughput(data: Path, img: Path, workers: Sequence[int], steps: int, batch_size: int, device,
                       amp: str, model_args: Sequence[str]) -> dict:
    """train.py's step fed by its loader (per worker count) and from memory: ``{workers: samples/s, "memory": ...}``.

    The dataset, the DataLoader settings, the model, the optimiser, the device normalisation and
    the step are train.py's own; only the sampler draws with replacement, so any set size gives
    ``steps`` full batches. Two warm-up steps are not timed.
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    import train
    from data.dataset import collate_skip_bad, read_manifest
    from utils.cli import autocast_context, pin_memory
    from utils.imagenet import normalize_on_device

    manifest = read_manifest(data)
    base = [*model_args, "--data_path", str(data), "--img_path", str(img), "--batch_size", str(batch_size),
            "--amp", amp]
    args = train.get_parser().parse_args(base)
    net = train.build_model(args, manifest["vocab_size"], manifest["max_len"], manifest["special_ids"]["pad"])
    net = net.to(device).to(memory_format=torch.channels_last)
    opt = train.build_optimizer(net, lr=1e-5, weight_decay=0.0, w2v_train=True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    ctx = autocast_context(device, args.amp)

    def step(images, tokens):
        images = normalize_on_device(images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))
        train.train_step(net, opt, scaler, images, tokens.to(device, non_blocking=True), ctx=ctx, alpha=0.3,
                         intra_modal=True, ohem=True)

    def timed(batches) -> float:
        count, start = 0, 0.0
        for k, batch in enumerate(batches):
            if k == 2:  # after two warm-up steps
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, count = time.perf_counter(), 0
            step(batch.images, batch.tokens)
            count += batch.images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return count / (time.perf_counter() - start)

    rates = {}
    for w in workers:
        args.workers = w
        dataset = train.make_dataset(args, "train", True)
        sampler = RandomSampler(dataset, replacement=True, num_samples=(steps + 2) * batch_size)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=w,
                            collate_fn=collate_skip_bad, drop_last=True, pin_memory=pin_memory(device),
                            persistent_workers=w > 0)
        rates[w] = timed(loader)
    first = next(iter(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skip_bad,
                                 sampler=RandomSampler(dataset, replacement=True, num_samples=batch_size))))
    on_device = first._replace(images=first.images.to(device), tokens=first.tokens.to(device))
    rates["memory"] = timed([on_device] * (steps + 2))
    return rates


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Check the GPU paths (AMP, NCCL, torchrun) on a tiny synthetic set.")
    p.add_argument("--out", default=None, help="working folder (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    p.add_argument("--recipes", type=int, default=120, help="recipes in the synthetic set")
    p.add_argument("--nproc", type=int, default=0,
                   help="processes for the torchrun checks (default: the visible GPUs; --cpu: 2)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds each command may take")
    p.add_argument("--cpu", action="store_true",
                   help="run the checks on the CPU (gloo): tests this script where there is no GPU")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; returns the exit status (0: every check passed or no CUDA device)."""
    args = get_parser().parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("skipped: no CUDA device (torch.cuda.is_available() is False); nothing was checked", flush=True)
        return 0
    if args.cpu:
        nproc, bf16 = args.nproc or 2, True
        print(f"--cpu: torch {torch.__version__}, checks on the CPU with gloo (not a GPU check)", flush=True)
    else:
        count = torch.cuda.device_count()
        nproc, bf16 = args.nproc or count, torch.cuda.is_bf16_supported()
        names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(count)}))
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {count} GPU(s): {names}; bf16 {bf16}",
              flush=True)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="xmrs_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        checks = GpuChecks(out.resolve(), args.cpu, nproc, args.recipes, args.timeout)
        results = run_checks(checks.checks(bf16))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    failed = [r.name for r in results if r.status == "FAIL"]
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
          f"{time.perf_counter() - start:.0f}s" + (f"; kept {out}" if args.keep else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run folders: every file-naming rule of a run folder, the options file and text logs (docs/run_folders.md).

A train.py run folder::

    <runs_dir>/<%Y%m%d-%H%M%S>__train<suffix>/           new_run_dir, run_dir_glob
        opts.json                                         OPTS_NAME (older runs: opts.txt, OLD_OPTS_NAME)
        models/model.pth.tar                              MODELS_DIR, LATEST_NAME
        models/model_BEST_<VAL|REC>_e..._cr-....pth.tar   best_name, best_glob
        models/<ckpt>_image_encoder.pth.tar               ENCODER_SUFFIX, image_encoder_path
        foodSpace_vectors_<stamp>_<ckpt>_<partition>_<lang>.npz   vectors_name, vectors_glob
        vis/                                              VIS_DIR (test.py's figures)
        search_index_<ckpt>_<parts>_<lang>[.faiss-<target>].npz   search_index_name (search.py)
        GAN_runs/GAN_<%Y%m%d-%H%M%S>/                     new_gan_run_dir, gan_run_glob
            {G,D}_{best,last}.pth.tar                     gan_ckpt_name
            opts.json                                     OPTS_NAME
            generated/, synthesis.png                     GENERATED_DIR, SYNTHESIS_FIGURE (GAN_test.py)

:func:`find_encoder_files` finds, for the synthesis stage, the exported image encoder and the
embedding files of one checkpoint; what is missing raises :class:`utils.errors.RunFolderError`
naming the test.py command that makes it.
"""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from utils.checkpoint import load_checkpoint
from utils.errors import RunFolderError
from utils.io import atomic_write_text

MODELS_DIR = "models"
OPTS_NAME = "opts.json"  # every option of a train.py or GAN_train.py run (write_opts)
OLD_OPTS_NAME = "opts.txt"  # train.py's before: one "key: <JSON value>" line per option (still read)
LATEST_NAME = "model.pth.tar"
CKPT_SUFFIX = ".pth.tar"
ENCODER_SUFFIX = "_image_encoder.pth.tar"
VIS_DIR = "vis"
GAN_RUNS_DIR = "GAN_runs"
GENERATED_DIR = "generated"
SYNTHESIS_FIGURE = "synthesis.png"
SEARCH_INDEX_PREFIX = "search_index_"
RECIPE_GEN_DIR = "from_recipe"  # GAN_test.py --recipe: <GAN run>/from_recipe/<recipe id>/
RECIPE_FIGURE = "recipes.png"  # GAN_test.py --recipe: <out_dir>/recipes.png
# Where create_lmdb.py writes and the later stages read when neither a flag nor the run names a folder.
DEFAULT_DATA_PATH = "data/loader_data"
DEFAULT_IMG_PATH = "data/Recipe1M/images"  # the image root, by the same rule


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------- folders


def new_run_dir(runs_dir: str | Path, suffix: str = "", kind: str = "train") -> Path:
    """Create ``<runs_dir>/<%Y%m%d-%H%M%S>__<kind><suffix>/``, adding ``_2``, ``_3``... when taken."""
    return unique_dir(Path(runs_dir) / f"{_stamp()}__{kind}{suffix}")


def run_dir_glob(runs_dir: str | Path, suffix: str = "", kind: str = "train") -> str:
    """Glob of the run folders :func:`new_run_dir` makes in ``runs_dir`` (sorted: oldest first)."""
    return glob.escape(str(Path(runs_dir))) + f"/*__{glob.escape(kind + suffix)}*"


def new_gan_run_dir(encoder_dir: str | Path) -> Path:
    """Create ``<encoder_dir>/GAN_runs/GAN_<%Y%m%d-%H%M%S>`` (``_2``, ``_3``... when taken)."""
    return unique_dir(Path(encoder_dir) / GAN_RUNS_DIR / f"GAN_{_stamp()}")


def gan_run_glob(encoder_dir: str | Path) -> str:
    """Glob of the GAN run folders :func:`new_gan_run_dir` makes under ``encoder_dir``."""
    return glob.escape(str(Path(encoder_dir) / GAN_RUNS_DIR)) + "/GAN_*"


def unique_dir(base: Path) -> Path:
    """Create the folder ``base`` (parents too), or ``base_2``, ``base_3``... when it exists."""
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


# --------------------------------------------------------------------------- files of a run


def best_name(kind: str, epoch: int, medr: float, recall_sum: float) -> str:
    """``model_BEST_<kind>_e<epoch:03d>_v-<medR:.3f>_cr-<sum of recalls:.4f>.pth.tar`` (kind VAL or REC)."""
    return f"model_BEST_{kind}_e{epoch:03d}_v-{medr:.3f}_cr-{recall_sum:.4f}{CKPT_SUFFIX}"


def best_glob(kind: str, image_encoder: bool = False) -> str:
    """Glob (inside ``models/``) of the BEST_<kind> checkpoints, or of their exported image encoders.

    The checkpoint glob never takes an image encoder: :func:`best_name` ends in a digit before
    ``.pth.tar``, an export in ``_image_encoder.pth.tar``.
    """
    return f"model_BEST_{kind}_e*[0-9]" + (ENCODER_SUFFIX if image_encoder else CKPT_SUFFIX)


def gan_ckpt_name(net: str, which: str) -> str:
    """``<net>_<which>.pth.tar`` in a GAN run: net ``G`` or ``D``, which ``best`` or ``last``."""
    return f"{net}_{which}{CKPT_SUFFIX}"


def ckpt_name(path: str | Path) -> str:
    """A checkpoint's name: its file name without ``.pth.tar``."""
    return Path(path).name.removesuffix(CKPT_SUFFIX)


def is_image_encoder_file(path: str | Path) -> bool:
    """True for an exported image encoder (``<ckpt>_image_encoder.pth.tar``), never a training checkpoint."""
    return Path(path).name.endswith(ENCODER_SUFFIX)


def image_encoder_path(ckpt_path: str | Path) -> Path:
    """``models/<ckpt>_image_encoder.pth.tar``: where test.py exports the image branch of ``ckpt_path``."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent / f"{ckpt_name(ckpt_path)}{ENCODER_SUFFIX}"


def encoder_checkpoint_path(encoder_path: str | Path) -> Path:
    """The training checkpoint an exported image encoder was taken from (the inverse of :func:`image_encoder_path`)."""
    encoder_path = Path(encoder_path)
    return encoder_path.parent / (encoder_path.name[: -len(ENCODER_SUFFIX)] + CKPT_SUFFIX)


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run folder holding ``models/<ckpt>.pth.tar``."""
    return Path(ckpt_path).parent.parent


def vectors_name(run_dir: str | Path, ckpt: str, partition: str, lang: str) -> Path:
    """``<run>/foodSpace_vectors_<run timestamp>_<ckpt>_<partition>_<lang>.npz``: test.py's embeddings."""
    run_dir = Path(run_dir)
    stamp = run_dir.name.split("__")[0]
    return run_dir / f"foodSpace_vectors_{stamp}_{ckpt}_{partition}_{lang}.npz"


def vectors_glob(run_dir: str | Path, ckpt: str, partition: str, lang: str) -> str:
    """Glob of :func:`vectors_name` files of checkpoint ``ckpt`` (any run timestamp)."""
    return glob.escape(str(Path(run_dir))) + f"/foodSpace_vectors_*_{glob.escape(ckpt)}_{partition}_{lang}.npz"


def checkpoint_path(run_dir: str | Path, ckpt: str) -> Path:
    """``<run>/models/<ckpt>.pth.tar``: the training checkpoint named ``ckpt`` (see :func:`ckpt_name`)."""
    return Path(run_dir) / MODELS_DIR / f"{ckpt}{CKPT_SUFFIX}"


def checkpoint_vectors(run_dir: str | Path, ckpt: str, lang: str,
                       partitions=("test", "val", "train")) -> dict[str, Path]:
    """The newest :func:`vectors_name` file of checkpoint ``ckpt`` per partition, for those that have one."""
    found = {}
    for partition in partitions:
        matches = sorted(glob.glob(vectors_glob(run_dir, ckpt, partition, lang)))
        if matches:
            found[partition] = Path(matches[-1])
    return found


def search_index_name(run_dir: str | Path, ckpt: str, partitions, lang: str, target: str | None = None) -> Path:
    """``<run>/search_index_<ckpt>_<partitions joined by '-'>_<lang>.npz``: search.py's index of test.py's embeddings.

    With ``target`` (``images`` or ``recipes``), ``...<lang>.faiss-<target>.npz``: its approximate index.
    """
    kind = f".faiss-{target}" if target else ""
    return Path(run_dir) / f"{SEARCH_INDEX_PREFIX}{ckpt}_{'-'.join(partitions)}_{lang}{kind}.npz"


# --------------------------------------------------------------------------- encoder run (synthesis inputs)


class EncoderFiles(NamedTuple):
    encoder: Path  # models/<ckpt>_image_encoder.pth.tar
    ckpt_name: str
    embeddings: dict[str, Path]  # partition -> npz


def checkpoint_vectors_command(ckpt_path: str | Path, partitions, lang: str) -> str:
    """The test.py command that writes the embedding files of ``ckpt_path`` (a path or a glob) for ``partitions``.

    The one spelling of that command, named in every message about a missing or stale embedding file.
    """
    return f"python test.py --model_init_path {ckpt_path} --partitions {','.join(partitions)} --language {lang}"


def vectors_command(encoder_dir: str | Path, lang: str) -> str:
    """:func:`checkpoint_vectors_command` for a run's BEST_REC checkpoint: the image encoder and embeddings
    GAN_train.py needs."""
    return checkpoint_vectors_command(Path(encoder_dir) / MODELS_DIR / "model_BEST_REC_*.pth.tar",
                                      ("test", "val", "train"), lang)


def find_encoder_files(encoder_dir: str | Path, lang: str, partitions=("train", "val", "test")) -> EncoderFiles:
    """The BEST_REC image encoder of ``encoder_dir`` and the embedding files of its checkpoint.

    Raises:
        RunFolderError: the folder, the encoder or an embedding file is missing (naming test.py's command).
    """
    root = Path(encoder_dir)
    if not root.is_dir():
        raise RunFolderError(f"--encoder_dir {encoder_dir}: no such folder (give a train.py run folder)")
    models = root / MODELS_DIR
    found = sorted(glob.glob(glob.escape(str(models)) + "/" + best_glob("REC", image_encoder=True)))
    if not found:
        raise RunFolderError(f"{models}: no exported image encoder model_BEST_REC*{ENCODER_SUFFIX}; "
                             f"make it with: {vectors_command(root, lang)}")
    # Several exports stay when BEST_REC moved on; prefer the one whose checkpoint still exists.
    live = [f for f in found if encoder_checkpoint_path(f).is_file()]
    encoder = Path((live or found)[-1])
    checkpoints = glob.glob(glob.escape(str(models)) + "/" + best_glob("REC"))
    unexported = sorted(p for p in checkpoints if not image_encoder_path(p).is_file())
    if unexported:
        print(f"note: {unexported[-1]} has no exported image encoder; using {encoder.name}. To use the newer "
              f"checkpoint run: {vectors_command(root, lang)}")
    name = encoder.name[: -len(ENCODER_SUFFIX)]
    embeddings = {}
    for partition in partitions:
        matches = sorted(glob.glob(vectors_glob(root, name, partition, lang)))
        if not matches:
            raise RunFolderError(f"{root}: no embedding file foodSpace_vectors_*_{name}_{partition}_{lang}.npz "
                                 f"for the image encoder {encoder.name}; make it with: {vectors_command(root, lang)}")
        embeddings[partition] = Path(matches[-1])
    return EncoderFiles(encoder, name, embeddings)


def encoder_run_opts(encoder_dir: str | Path, ckpt: str) -> dict:
    """The encoder run's options (its options file, else its checkpoint's), or {} when neither exists."""
    for name in (OPTS_NAME, OLD_OPTS_NAME):  # a run resumed since it was made has both: opts.json is newer
        path = Path(encoder_dir) / name
        if path.is_file():
            return read_opts(path)
    ckpt_path = Path(encoder_dir) / MODELS_DIR / f"{ckpt}{CKPT_SUFFIX}"
    return dict(load_checkpoint(ckpt_path).get("opts", {})) if ckpt_path.is_file() else {}


# --------------------------------------------------------------------------- options and logs


def write_opts(path: str | Path, opts: dict) -> None:
    """Write a run's options as one JSON object, keys sorted (``opts.json``: train.py and GAN_train.py)."""
    atomic_write_text(path, json.dumps(opts, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_opts(path: str | Path) -> dict:
    """Read an options file: the JSON object of :func:`write_opts`, or an older run's ``opts.txt``.

    ``opts.txt`` (train.py before the one format) holds one ``key: <JSON value>`` line per option;
    a JSON object always starts with ``{``, a line of that format never does.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        return json.loads(text)
    opts = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise ValueError(f"{path}: line {number} is not 'key: value': {line!r}")
        opts[key] = json.loads(value)
    return opts


class TextLog:
    """Append lines to a text file (and echo them) on the main process; silent elsewhere."""

    def __init__(self, path: str | Path | None, echo: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.echo = echo

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"[{stamp}] {message}\n")
        if self.echo:
            print(message, flush=True)


def shown(path: str | os.PathLike) -> str:
    """``path`` as a script prints it: relative to the current folder when it lies under it, else as given.

    Runs record absolute paths (demo.py passes them); printed relative, a command's output holds
    no machine's paths and can be pasted elsewhere. Symlinks are not resolved.
    """
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    cwd = os.getcwd()
    absolute = os.path.abspath(text)
    if absolute == cwd or not absolute.startswith(cwd.rstrip(os.sep) + os.sep):
        return text
    return os.path.relpath(absolute, cwd)

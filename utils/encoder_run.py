"""Find and load what train.py and test.py left in a run folder, for the synthesis stage (SPEC sections 6, 8).

From a train.py run folder (``--encoder_dir``): the exported BEST_REC image encoder
``models/model_BEST_REC*_image_encoder.pth.tar`` (:func:`find_encoder_files`, loaded frozen by
:func:`load_image_encoder`), the embedding files test.py wrote for the same checkpoint,
``foodSpace_vectors_*_<ckpt>_<partition>_<lang>.npz`` (checked against the LMDB keys by
:func:`load_partition_embeddings`), and the run's options (:func:`encoder_run_opts`).
:func:`encode_fake` embeds 128 px images (generated or real) with that encoder at its own input
size. Missing files stop with ``SystemExit`` naming the test.py command that makes them; bad data
raises :class:`GANDataError`, which GAN_train.py and GAN_test.py turn into ``SystemExit``.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from data.lmdb_format import keys_file
from data.recipe1m import load_keys
from models.foodspace import ArchConfig, ImageEmbedder
from models.gan import to_imagenet
from models.gan_losses import ENCODER_SIZE, encode_generated, freeze_encoder
from utils.checkpoint import ENCODER_SUFFIX, load_checkpoint
from utils.embeddings import load_embeddings
from utils.runs import read_opts


class GANDataError(ValueError):
    """Bad input data (an embedding file that does not match the LMDB, a class out of range)."""


class EncoderFiles(NamedTuple):
    encoder: Path  # models/<ckpt>_image_encoder.pth.tar
    ckpt_name: str
    embeddings: dict[str, Path]  # partition -> npz


def vectors_command(encoder_dir, lang: str) -> str:
    return (f"python test.py --model_init_path {Path(encoder_dir) / 'models' / 'model_BEST_REC_*.pth.tar'} "
            f"--partitions test,val,train --language {lang}")


def find_encoder_files(encoder_dir, lang: str, partitions=("train", "val", "test")) -> EncoderFiles:
    """The BEST_REC image encoder of ``encoder_dir`` and the embedding files of its checkpoint.

    Raises:
        SystemExit: the folder, the encoder or an embedding file is missing (naming test.py's command).
    """
    root = Path(encoder_dir)
    if not root.is_dir():
        raise SystemExit(f"--encoder_dir {encoder_dir}: no such folder (give a train.py run folder)")
    found = sorted(glob.glob(glob.escape(str(root / "models")) + "/model_BEST_REC*" + ENCODER_SUFFIX))
    if not found:
        raise SystemExit(f"{root / 'models'}: no exported image encoder model_BEST_REC*{ENCODER_SUFFIX}; "
                         f"make it with: {vectors_command(root, lang)}")
    # Several exports stay when BEST_REC moved on; prefer the one whose checkpoint still exists.
    live = [f for f in found if Path(f[: -len(ENCODER_SUFFIX)] + ".pth.tar").is_file()]
    encoder = Path((live or found)[-1])
    checkpoints = [p for p in glob.glob(glob.escape(str(root / "models")) + "/model_BEST_REC*.pth.tar")
                   if not p.endswith(ENCODER_SUFFIX)]
    unexported = sorted(p for p in checkpoints if not Path(p[: -len(".pth.tar")] + ENCODER_SUFFIX).is_file())
    if unexported:
        print(f"note: {unexported[-1]} has no exported image encoder; using {encoder.name}. To use the newer "
              f"checkpoint run: {vectors_command(root, lang)}")
    ckpt_name = encoder.name[: -len(ENCODER_SUFFIX)]
    embeddings = {}
    for partition in partitions:
        pattern = glob.escape(str(root)) + f"/foodSpace_vectors_*_{glob.escape(ckpt_name)}_{partition}_{lang}.npz"
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise SystemExit(f"{root}: no embedding file foodSpace_vectors_*_{ckpt_name}_{partition}_{lang}.npz "
                             f"for the image encoder {encoder.name}; make it with: {vectors_command(root, lang)}")
        embeddings[partition] = Path(matches[-1])
    return EncoderFiles(encoder, ckpt_name, embeddings)


def encoder_run_opts(encoder_dir, ckpt_name: str) -> dict:
    """The encoder run's options (``opts.txt``, else its checkpoint's), or {} when neither exists."""
    path = Path(encoder_dir) / "opts.txt"
    if path.is_file():
        return read_opts(path)
    ckpt = Path(encoder_dir) / "models" / f"{ckpt_name}.pth.tar"
    return dict(load_checkpoint(ckpt).get("opts", {})) if ckpt.is_file() else {}


def load_image_encoder(path, device) -> tuple[ImageEmbedder, dict]:
    """Build the frozen :class:`ImageEmbedder` (eval mode, no gradients) from test.py's export.

    Its ``input_size`` attribute is the crop size it was trained and evaluated at (224 in the paper),
    the size :func:`encode_fake` upsamples generated images to.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "image_encoder":
        raise SystemExit(f"{path} is not an exported image encoder (kind={ckpt.get('kind')!r})")
    encoder = ImageEmbedder(ArchConfig.from_dict(ckpt["arch"]))
    encoder.load_state_dict(ckpt["model"])
    encoder.input_size = int(ckpt.get("image_size") or ENCODER_SIZE)
    return freeze_encoder(encoder.to(device)), ckpt


def encode_fake(encoder: torch.nn.Module, images: torch.Tensor, space: str) -> torch.Tensor:
    """Embed 128 px images (G output in ``space``, or ``"imagenet"`` for normalised real images).

    :func:`models.gan_losses.encode_generated` with one difference: the images are upsampled to the
    encoder's own input size (``encoder.input_size``, default 224) rather than always 224, so an
    encoder trained on smaller crops sees generated images at the scale its cycle targets (the
    real-image embeddings test.py made) were computed at. For the paper's 224 px encoder it *is*
    ``encode_generated``.
    """
    size = int(getattr(encoder, "input_size", ENCODER_SIZE))
    if size == ENCODER_SIZE:
        return encode_generated(encoder, images, space)
    if encoder.training or any(p.requires_grad for p in encoder.parameters()):
        raise ValueError("the image encoder must be frozen: call models.gan_losses.freeze_encoder(encoder) first")
    # Smaller encoders (demo sizes) are fed by shrinking: antialias it as PIL's resize did for the
    # real images the targets come from, or the encoder sees (and G is taught through) aliased samples.
    x = to_imagenet(images, space)
    if size < x.shape[-1]:
        # in float32: the antialiased kernel has no half-precision CPU version (fp16/bf16 autocast)
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).to(x.dtype)
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    return encoder(x)  # (B, D)


def load_partition_embeddings(path: Path, data_path, partition: str) -> dict[str, np.ndarray]:
    """test.py's npz, checked against the LMDB keys of ``partition``."""
    emb = load_embeddings(path)
    if len(emb["rec_ids"]) == 0:
        raise SystemExit(f"{path}: no recipes")
    keys = keys_file(data_path, partition)
    if not keys.is_file():
        raise SystemExit(f"{keys} not found: is --data_path {data_path} the folder create_lmdb.py wrote?")
    known = set(load_keys(keys))
    missing = [str(i) for i in emb["rec_ids"] if str(i) not in known]
    if missing:
        raise SystemExit(f"{path}: recipe {missing[0]} (and {len(missing) - 1} more) is not in {keys}; "
                         f"the embeddings were made from another data set")
    return emb

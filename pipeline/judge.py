"""Loading an independent judge of synthesis: what GAN_train.py and GAN_test.py ``--judge_dir`` share.

A judge is another train.py run on G's LMDB (another seed) with test.py's embeddings
(docs/synthesis.md): GAN_train.py watches G with it on the val split, GAN_test.py scores the test
split with it, and there also the judge's embeddings of the real photos, the yardstick of its
generated / real ratios. Both refuse the same runs, so both load it here; the refusals themselves
are pure checks in :mod:`utils.judge`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from data.gan_dataset import load_partition_embeddings
from models.foodspace import load_image_encoder
from utils.judge import check_judge_run, check_same_recipes
from utils.runs import EncoderFiles, encoder_run_opts, find_encoder_files


class Judge(NamedTuple):
    """The judge run's frozen image encoder and its embeddings of one split, rows in G's order."""

    encoder: torch.nn.Module
    rec: torch.Tensor  # (N, D') the judge's recipe embeddings
    img: torch.Tensor | None  # (N, D') its real-photo embeddings (test.py's img_embeds); None unless asked for
    path: Path  # the judge's exported image encoder


def load_judge(judge_dir: str | Path, split: str, encoder_dir: str | Path, files: EncoderFiles, enc_opts: dict,
               data_path: str | Path, own_ids, lang: str, device, *, photos: bool = False) -> Judge:
    """Check ``--judge_dir`` (not G's run, same LMDB, same ``split`` recipes) and load its encoder and embeddings.

    Args:
        judge_dir: the judge's train.py run folder.
        split: the partition G is scored on (GAN_train.py: ``"val"``, GAN_test.py: ``"test"``).
        encoder_dir, files, enc_opts: G's encoder run folder, its files and its options (a judge
            must differ from it but share its LMDB).
        data_path: the LMDB the embeddings are checked against.
        own_ids: the recipe ids of G's ``split`` embeddings, in their order (the judge must have the same bags).
        lang: the language of the embeddings.
        device: where the judge's encoder goes.
        photos: also keep the judge's real-photo embeddings (GAN_test.py's generated / real ratios).

    Raises:
        JudgeError: the judge is G's own run, was trained on another LMDB, or scored other recipes.
        RunFolderError: the judge lacks test.py's outputs for ``split`` (naming the command).
    """
    judge_files = find_encoder_files(judge_dir, lang, partitions=(split,))
    judge_data = encoder_run_opts(judge_dir, judge_files.ckpt_name).get("data_path")
    check_judge_run(judge_dir, encoder_dir, judge_files.encoder, files.encoder, judge_data,
                    enc_opts.get("data_path") or data_path)
    emb = load_partition_embeddings(judge_files.embeddings[split], data_path, split)
    check_same_recipes(emb["rec_ids"], own_ids, judge_files.embeddings[split], files.embeddings[split])
    with torch.random.fork_rng(devices=[]):  # building it draws init weights: leave the caller's random stream
        encoder, _ = load_image_encoder(judge_files.encoder, device)
    rec = torch.from_numpy(np.ascontiguousarray(emb["rec_embeds"], dtype=np.float32))  # (N, D')
    img = torch.from_numpy(np.ascontiguousarray(emb["img_embeds"], dtype=np.float32)) if photos else None  # (N, D')
    return Judge(encoder, rec, img, judge_files.encoder)

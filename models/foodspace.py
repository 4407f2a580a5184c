"""FoodSpaceNet: the shared image/recipe embedding model of X-MRS (docs/model.md).

::

    image  -> ResNet trunk (F) -> BN(F) -> Linear(F, 1024) -> Tanh  --\\
                                                                       Linear(1024, emb_dim) (shared)
    tokens -> BERT pooled [CLS] (H) -> BN(H) -> Linear(H, 1024) -> Tanh --/
    then, per branch, BN(emb_dim) -> Tanh -> L2 normalisation.

The image path (trunk, image head, shared linear, image BN) lives in :class:`ImageEmbedder`, a
module that can be built from an :class:`ArchConfig` alone, so test.py can export it and the GAN
can load it without BERT (:func:`load_image_encoder`); :class:`FoodSpaceNet` holds one and shares
its weights.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.gan_losses import ENCODER_SIZE, freeze_encoder
from models.image_encoder import ImageEncoder, check_backbone, feature_dim
from models.text_encoder import TextEncoder, init_embeddings
from utils.checkpoint import PlainConfig, load_checkpoint
from utils.errors import CheckpointError

HEAD_DIM = 1024  # width of the per-branch heads, the input of the shared linear (paper: 1024)


@dataclass
class ArchConfig(PlainConfig):
    """Everything needed to rebuild the network's shapes; stored in every checkpoint as a dict.

    Defaults are the paper's model (ResNet-50, BERT 2 layers x 2 heads x 768, mBERT's vocabulary).
    """

    image_backbone: str = "resnet50"
    emb_dim: int = 1024
    bert_layers: int = 2
    bert_heads: int = 2
    bert_hidden: int = 768
    bert_intermediate: int = 3072
    vocab_size: int = 119547
    max_len: int = 512
    pad_id: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            want = str if field.name == "image_backbone" else int
            if not isinstance(value, want) or isinstance(value, bool):
                raise ValueError(f"ArchConfig.{field.name} must be {want.__name__}, got {value!r}")
            if want is int and field.name != "pad_id" and value <= 0:
                raise ValueError(f"ArchConfig.{field.name} must be positive, got {value}")
        check_backbone(self.image_backbone)
        if self.bert_hidden % self.bert_heads:
            raise ValueError(f"ArchConfig.bert_hidden {self.bert_hidden} is not a multiple of "
                             f"bert_heads {self.bert_heads}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"ArchConfig.pad_id {self.pad_id} is outside the vocabulary (size {self.vocab_size})")

    @property
    def image_feat_dim(self) -> int:
        """Pooled feature size of the backbone (the image head's input)."""
        return feature_dim(self.image_backbone)


def _head(in_dim: int, out_dim: int) -> nn.Sequential:
    """BN -> Linear -> Tanh (the per-branch head)."""
    return nn.Sequential(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, out_dim), nn.Tanh())


def _out(dim: int) -> nn.Sequential:
    """BN -> Tanh after the shared linear (one per branch)."""
    return nn.Sequential(nn.BatchNorm1d(dim), nn.Tanh())


class ImageEmbedder(nn.Module):
    """Images to L2-normalised FoodSpace embeddings.

    Args:
        cfg: the architecture.
        image_pretrained: ``"none"``, ``"imagenet"`` or a path to a backbone state dict.
    """

    def __init__(self, cfg: ArchConfig, image_pretrained: str | os.PathLike = "none"):
        super().__init__()
        self.cfg = cfg
        self.backbone = ImageEncoder(cfg.image_backbone, image_pretrained)
        self.head = _head(cfg.image_feat_dim, HEAD_DIM)
        self.shared = nn.Linear(HEAD_DIM, cfg.emb_dim)  # also used by FoodSpaceNet's recipe branch
        self.out = _out(cfg.emb_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` images (NCHW or channels_last) -> ``(B, emb_dim)`` unit vectors."""
        feat = self.backbone(images)  # (B, F)
        z = self.out(self.shared(self.head(feat)))  # (B, D)
        return F.normalize(z, dim=1)


class FoodSpaceNet(nn.Module):
    """The two-branch retrieval model.

    Args:
        cfg: the architecture.
        image_pretrained: backbone initialisation, ``"none"``, ``"imagenet"`` or a state dict path.
        text_init: source of the BERT embedding tables, ``"none"``, a hub name or a local folder.
    """

    def __init__(self, cfg: ArchConfig, image_pretrained: str | os.PathLike = "none",
                 text_init: str | os.PathLike = "none"):
        super().__init__()
        self.cfg = cfg
        self.visual = ImageEmbedder(cfg, image_pretrained)
        self.text_encoder = TextEncoder(vocab_size=cfg.vocab_size, hidden=cfg.bert_hidden, layers=cfg.bert_layers,
                                        heads=cfg.bert_heads, intermediate=cfg.bert_intermediate,
                                        max_len=cfg.max_len, pad_id=cfg.pad_id)
        self.text_head = _head(cfg.bert_hidden, HEAD_DIM)
        self.text_out = _out(cfg.emb_dim)
        self.text_init_report = init_embeddings(self.text_encoder, str(text_init))

    @property
    def shared(self) -> nn.Linear:
        """The projection shared by both branches."""
        return self.visual.shared

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, D)`` L2-normalised image embeddings."""
        return self.visual(images)

    def embed_recipes(self, tokens: torch.Tensor, output_attentions: bool = False):
        """``(B, T)`` token ids -> ``(B, D)`` L2-normalised recipe embeddings.

        With ``output_attentions`` returns ``(embeddings, attentions)``, one ``(B, heads, T', T')``
        attention tensor per BERT layer (see :class:`TextEncoder`).
        """
        enc = self.text_encoder(tokens, output_attentions=output_attentions)
        pooled, attentions = enc if output_attentions else (enc, None)  # (B, H)
        z = self.text_out(self.shared(self.text_head(pooled)))  # (B, D)
        emb = F.normalize(z, dim=1)
        return (emb, attentions) if output_attentions else emb

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed paired images ``(B, 3, S, S)`` and recipes ``(B, T)``; returns two ``(B, D)`` tensors."""
        return self.embed_images(images), self.embed_recipes(tokens)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The four optimiser groups; every parameter is in exactly one, in registration order.

        ``heads``: both branch heads, the shared linear and both output BNs; ``vision``: the image
        trunk; ``wordemb``: every tensor under BERT's ``embeddings`` module (word, position and
        token-type tables and their LayerNorm), the group the reference's ``w2vTrain`` and
        ``freeWordEmb`` act on; ``text``: the rest of BERT (the layers and the pooler). This is
        the reference's split: it puts every name containing ``embeddings`` under the text model in
        the word-embedding group.
        """
        embeddings = self.text_encoder.bert.embeddings
        in_embeddings = {id(p) for p in embeddings.parameters()}
        heads = [*self.visual.head.parameters(), *self.visual.shared.parameters(),
                 *self.visual.out.parameters(), *self.text_head.parameters(), *self.text_out.parameters()]
        return {
            "heads": heads,
            "vision": list(self.visual.backbone.parameters()),
            "wordemb": list(embeddings.parameters()),
            "text": [p for p in self.text_encoder.parameters() if id(p) not in in_embeddings],
        }

    def image_embedder(self) -> ImageEmbedder:
        """The image path as a module sharing this model's weights (exported by test.py)."""
        return self.visual

    def image_embedder_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict loadable into ``ImageEmbedder(cfg)`` (tensors only, detached copies)."""
        return {k: v.detach().clone() for k, v in self.visual.state_dict().items()}


def load_image_encoder(path: str | os.PathLike, device: torch.device | str) -> tuple[ImageEmbedder, dict]:
    """Build the frozen :class:`ImageEmbedder` (eval mode, no gradients) from test.py's export.

    Its ``input_size`` attribute is the crop size it was trained and evaluated at (224 in the paper),
    the size :func:`models.gan_losses.encode_generated` resizes generated images to.

    Returns:
        ``(encoder on device, the checkpoint dict)``.

    Raises:
        CheckpointError: the file is missing or unreadable, or is not an exported image encoder.
    """
    ckpt = load_checkpoint(path)
    return image_encoder_from_checkpoint(ckpt, path, device), ckpt


def image_encoder_from_checkpoint(ckpt: dict, path: str | os.PathLike, device: torch.device | str) -> ImageEmbedder:
    """:func:`load_image_encoder` from a checkpoint already read (``path`` only names it in errors).

    For a caller that reads the export's lineage before building the encoder (GAN_test.py), so the
    file is read once.

    Raises:
        CheckpointError: ``ckpt`` is not an exported image encoder.
    """
    if ckpt.get("kind") != "image_encoder":
        raise CheckpointError(f"{path} is not an exported image encoder (kind={ckpt.get('kind')!r})")
    encoder = ImageEmbedder(ArchConfig.from_dict(ckpt["arch"]))
    encoder.load_state_dict(ckpt["model"])
    encoder.input_size = int(ckpt.get("image_size") or ENCODER_SIZE)
    return freeze_encoder(encoder.to(device))


def load_foodspace(path: str | os.PathLike, device: torch.device | str) -> tuple[FoodSpaceNet, dict]:
    """Rebuild a train.py checkpoint's :class:`FoodSpaceNet` from its stored architecture, in eval mode.

    Returns:
        ``(model on device, the checkpoint dict)`` (its ``opts`` hold ``data_path``, ``image_size``...).

    Raises:
        CheckpointError: the file is missing or unreadable, or is not a FoodSpaceNet training checkpoint.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "foodspace":
        raise CheckpointError(f"{path} is not a FoodSpaceNet training checkpoint (kind={ckpt.get('kind')!r})")
    model = FoodSpaceNet(ArchConfig.from_dict(ckpt["arch"]), image_pretrained="none", text_init="none")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt

"""The image branch's backbone: a torchvision ResNet without its classifier (docs/model.md).

``--image_backbone`` picks the network (``resnet50`` in the paper; ``resnet18``, ``resnet34`` and
``resnet101`` too) and ``--image_pretrained`` its initial weights:

- ``imagenet``: torchvision's ``IMAGENET1K_V1`` weights (the original ResNet training recipe, the
  weights of the paper's era; torchvision's newer ``V2`` weights come from a different recipe and
  are not used). They are downloaded once into torch's hub cache; when that fails the error says
  to pass ``--image_pretrained none`` or a path.
- ``none``: torchvision's random initialisation.
- a path: a state dict saved with ``torch.save`` (loaded with ``weights_only=True``), holding every
  backbone key; ``fc.*`` entries (the classifier) are ignored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

# backbone name -> (torchvision builder name, weights enum name, pooled feature size)
BACKBONES: dict[str, tuple[str, str, int]] = {
    "resnet18": ("resnet18", "ResNet18_Weights", 512),
    "resnet34": ("resnet34", "ResNet34_Weights", 512),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048),
    "resnet101": ("resnet101", "ResNet101_Weights", 2048),
}
IMAGENET_WEIGHTS = "IMAGENET1K_V1"


def check_backbone(name: str) -> None:
    """Raise ``ValueError`` naming the choices when ``name`` is not a supported backbone."""
    if name not in BACKBONES:
        raise ValueError(f"unknown image backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def feature_dim(name: str) -> int:
    """Size of the pooled feature of backbone ``name`` (2048 for ResNet-50)."""
    check_backbone(name)
    return BACKBONES[name][2]


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Fetch torchvision's ImageNet weights for ``name`` (from the hub cache or the network)."""
    weights = getattr(torchvision.models, BACKBONES[name][1])[IMAGENET_WEIGHTS]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, OSError, hash mismatch...: all mean "no weights here"
        raise RuntimeError(
            f"could not obtain the ImageNet weights of {name} ({weights.url}): {exc}. "
            "Without network access pass `--image_pretrained none` (random initialisation) or "
            "`--image_pretrained PATH` with a state dict saved by torch.save."
        ) from exc


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict (tensors only) from ``path``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"--image_pretrained {path}: no such file (use `imagenet`, `none` or a state dict path)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"--image_pretrained {path}: not a readable torch state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"--image_pretrained {path}: expected a dict of tensors (a state dict)")
    return state


class ImageEncoder(nn.Module):
    """A ResNet trunk returning its globally average-pooled feature.

    Args:
        backbone: one of :data:`BACKBONES`.
        pretrained: ``"imagenet"``, ``"none"`` or a path to a state dict.
    """

    def __init__(self, backbone: str = "resnet50", pretrained: str | os.PathLike = "none"):
        super().__init__()
        check_backbone(backbone)
        self.backbone_name = backbone
        self.feat_dim = BACKBONES[backbone][2]
        net = getattr(torchvision.models, BACKBONES[backbone][0])(weights=None)
        net.fc = nn.Identity()  # the classifier goes; avgpool + flatten stay
        self.net = net
        self.load_pretrained(pretrained)

    def load_pretrained(self, pretrained: str | os.PathLike) -> None:
        """Initialise the trunk from ``"imagenet"``, ``"none"`` (keep as is) or a state dict path."""
        spec = str(pretrained)
        if spec.lower() == "none":
            return
        if spec.lower() == "imagenet":
            state, origin = _imagenet_state_dict(self.backbone_name), f"ImageNet ({IMAGENET_WEIGHTS})"
        else:
            state, origin = _file_state_dict(Path(spec)), spec
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.net.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or mismatched:
            raise RuntimeError(
                f"--image_pretrained {origin}: not a {self.backbone_name} state dict (missing keys: "
                f"{missing[:5]}, unexpected keys: {unexpected[:5]}, other shapes: {mismatched[:5]})"
            )
        self.net.load_state_dict(state, strict=True)
        log.info("image backbone %s initialised from %s", self.backbone_name, origin)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, 3, S, S)`` (NCHW or channels_last) to pooled features ``(B, F)``."""
        return self.net(images)  # (B, F)

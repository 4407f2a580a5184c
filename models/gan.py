"""StackGAN-style recipe-to-image synthesis networks, as in ACME / X-MRS (docs/synthesis.md#the-method).

::

    emb (B, embDim) -> CondAugment -> mu, logvar (B, ef); c = mu + exp(logvar / 2) * eps
    [c, z] -> InitStageG: fc + BN + GLU -> (16 gf, 4, 4) -> 4 x upBlock -> (gf, 64, 64)
    [c tiled, h] -> NextStageG: joint 3x3 block, R_NUM ResBlocks, upBlock -> (gf / 2, 128, 128)
    -> 3x3 conv to RGB (+ --G_coarse_rgb's linear image of mu, upsampled) + tanh -> fake (B, 3, 128, 128)

    image (B, 3, 128, 128) -> 4 stride-2 convs -> down block -> 3x3 block -> code (8 df, 4, 4)
    [mu tiled, code] -> 3x3 block -> conv4x4/4 -> conditional real/fake logit (B,)
    code -> conv4x4/4 + leaky -> Linear -> class logits (B, numClasses)

Module and attribute names follow the reference (``ca_net``, ``h_net1``, ``h_net2``, ``img_net2``,
``img_code_s16``, ``jointConv``, ...) and the ``nn.Sequential`` indices match too, so a reference
state dict loads after stripping DataParallel's ``module.`` prefix.

Parameter count of the default generator (Z_DIM 100, GF_DIM 64, EMBEDDING_DIM 128, R_NUM 2,
embDim 1024); BN counts its affine weight and bias (running statistics are buffers), convs have
no bias:

=====================================================  ==========
CA_NET: Linear(1024, 512) with bias                       524,800
stage 1 fc: Linear(228, 32768, no bias) + BN1d(32768)   7,536,640
stage 1 upBlocks 1024->512->256->128->64 (conv+BN)     12,538,112
  (each conv3x3 in -> 2 * out: 9,437,184 / 2,359,296 / 589,824 / 147,456; BN 2,048/1,024/512/256)
stage 2 jointConv: conv3x3 192 -> 128 + BN                221,440
stage 2 two ResBlocks (conv 64->128, BN, conv 64->64, BN) 221,952
stage 2 upBlock 64 -> 32 (conv3x3 64 -> 64 + BN)           36,992
128 px image head: conv3x3 32 -> 3                            864
=====================================================  ==========
total                                                  21,080,288

This is ACME's ``G_NET`` with ``BRANCH_NUM`` 2 *without* its 64 px image head ``img_net1``
(conv3x3 64 -> 3, 1,728 parameters): with it the count would be 21,082,016, so the reference X-MRS
generator does not have it (no loss would train it).

**Output space.** D compares G's tanh output with ImageNet-normalised real images, and the frozen
FoodSpace image encoder expects ImageNet-normalised input. ``GANConfig.output_space`` says how a
tanh output maps into that space (:func:`to_imagenet`):

- ``"imagenet"`` (default, the reference bit for bit): the tanh output is used as an
  ImageNet-normalised image as it is. The reachable pixel range is then only ``mean +- std`` per
  channel (about 0.26-0.71 for red), so saved images are low in contrast.
- ``"pixel"`` (``--G_output_space pixel``, this project's option): the tanh output is an RGB image
  with [-1, 1] standing for pixel values [0, 1] (the StackGAN convention), mapped by
  ``((x + 1) / 2 - mean) / std`` before D and the encoder see it. Every colour is reachable.

The training script must feed D with ``to_imagenet(fake, cfg.output_space)`` (or
``Generator.to_imagenet``), the same space the encoder gets in :func:`models.gan_losses.encode_generated`,
and save images with :func:`to_pixels`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import PlainConfig
from utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

OUTPUT_SPACES = ("imagenet", "pixel")
# --G_coarse_rgb's image is its weights' output x this (StyleGAN's equalised learning rate): Adam moves
# each weight about lr per step whatever its scale, so the image moves this much faster than a plain
# linear layer's (docs/synthesis.md: 1, 10, 30 measured; 10 adopted)
COARSE_GAIN = 10.0
CLASS_CODE_SEED = 7  # seeds the fixed code of each class (--G_class_posterior); saved in G anyway
INPUT_BUFFERS = ("in_mean", "in_w", "cls_means", "cls_mask", "cls_codes")  # G's, computed from a run's data
COARSE_PARAMS = ("coarse_w", "coarse_b")  # --G_coarse_rgb's weights; zeros: G as without them
INT_FIELD_MIN = {"r_num": 0, "coarse_rgb": 0}  # GANConfig's integers that may be 0; the others start at 1
INT_FIELD_FLAGS = {"z_dim": "--Z_DIM", "gf_dim": "--GF_DIM", "df_dim": "--DF_DIM", "ef_dim": "--EMBEDDING_DIM",
                   "r_num": "--R_NUM", "emb_dim": "--embDim", "num_classes": "--numClasses", "coarse_rgb": "--G_coarse_rgb"}


@dataclass
class GANConfig(PlainConfig):
    """Shapes of G and D; stored in GAN checkpoints as a dict (``to_dict`` / ``from_dict``).

    Field <- command-line flag (:func:`add_gan_arch_args`): ``z_dim`` <- ``--Z_DIM``, ``gf_dim`` <-
    ``--GF_DIM``, ``df_dim`` <- ``--DF_DIM``, ``ef_dim`` <- ``--EMBEDDING_DIM``, ``r_num`` <-
    ``--R_NUM``, ``emb_dim`` <- ``--embDim``, ``num_classes`` <- ``--numClasses``, ``output_space``
    <- ``--G_output_space``, ``emb_scale`` <- ``--G_emb_scale``, ``input_whiten`` <- ``--G_whiten``,
    ``class_posterior`` <- ``--G_class_posterior``, ``class_residual`` <- ``--G_class_residual``,
    ``coarse_rgb`` <- ``--G_coarse_rgb``.
    """

    z_dim: int = 100
    gf_dim: int = 64
    df_dim: int = 64
    ef_dim: int = 128
    r_num: int = 2
    emb_dim: int = 1024
    num_classes: int = 1048
    output_space: str = "imagenet"
    emb_scale: float = 1.0
    input_whiten: float = 0.0  # ridge of G's input whitening (0: none, the reference)
    class_posterior: bool = False  # G reads the class posterior of its whitened input (needs input_whiten)
    class_residual: float = 0.0  # ... plus this times the whitened input itself
    coarse_rgb: int = 0  # side of a linear mu -> RGB image added before G's tanh (0: none, the reference)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "output_space":
                if value not in OUTPUT_SPACES:
                    raise ValueError(f"GANConfig.output_space must be one of {OUTPUT_SPACES}, got {value!r}")
            elif field.name == "emb_scale":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"GANConfig.emb_scale must be a positive number, got {value!r}")
            elif field.name == "input_whiten":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise ValueError(f"GANConfig.input_whiten (--G_whiten) must be a number >= 0, got {value!r}")
            elif field.name == "class_posterior":
                if not isinstance(value, bool):
                    raise ValueError(f"GANConfig.class_posterior must be True or False, got {value!r}")
            elif field.name == "class_residual":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise ValueError(f"GANConfig.class_residual (--G_class_residual) must be a number >= 0, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < (low := INT_FIELD_MIN.get(field.name, 1)):
                raise ValueError(f"GANConfig.{field.name} ({INT_FIELD_FLAGS[field.name]}) must be an integer >= {low}, "
                                 f"got {value!r}")
        if self.class_posterior and not self.input_whiten > 0:
            raise ValueError("--G_class_posterior reads the class means in G's whitened input space: give --G_whiten "
                             "too (e.g. --G_whiten 1e-4)")
        if self.class_residual and not self.class_posterior:
            raise ValueError("--G_class_residual weighs the whitened input beside the class posterior: give "
                             "--G_class_posterior too")
        if self.gf_dim % 2:
            raise ValueError(f"GANConfig.gf_dim (GF_DIM) must be even (stage 2 halves it), got {self.gf_dim}")

    @classmethod
    def from_dict(cls, d: dict) -> GANConfig:
        """As :meth:`PlainConfig.from_dict`; also reads older checkpoints, which stored ``head64: False``.

        The optional 64 px image head is gone (no loss trained it): ``head64: True`` is refused.
        """
        if isinstance(d, dict) and "head64" in d:
            if d["head64"] is not False:
                raise ValueError(f"this GAN checkpoint has head64={d['head64']!r}: a generator with the 64 px "
                                 "image head (--G_head64), which this version no longer builds (no loss trained "
                                 "it); only checkpoints written without --G_head64 load")
            d = {k: v for k, v in d.items() if k != "head64"}
        return super().from_dict(d)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GANConfig:
        """Build from the flags of :func:`add_gan_arch_args`."""
        return cls(z_dim=args.Z_DIM, gf_dim=args.GF_DIM, df_dim=args.DF_DIM, ef_dim=args.EMBEDDING_DIM,
                   r_num=args.R_NUM, emb_dim=args.embDim, num_classes=args.numClasses,
                   output_space=args.G_output_space,
                   emb_scale=emb_scale_value(args.G_emb_scale, args.embDim), input_whiten=args.G_whiten,
                   class_posterior=args.G_class_posterior, class_residual=args.G_class_residual,
                   coarse_rgb=args.G_coarse_rgb)


def add_gan_arch_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the reference's architecture flags (``--Z_DIM`` ... ``--numClasses``) plus ours."""
    d = GANConfig()
    g = parser.add_argument_group("GAN architecture")
    g.add_argument("--Z_DIM", type=int, default=d.z_dim, help="noise dimension of the generator")
    g.add_argument("--GF_DIM", type=int, default=d.gf_dim, help="generator width (stage 1 starts at 16x)")
    g.add_argument("--DF_DIM", type=int, default=d.df_dim, help="discriminator width")
    g.add_argument("--EMBEDDING_DIM", type=int, default=d.ef_dim,
                   help="conditioning dimension (size of mu, logvar and c)")
    g.add_argument("--R_NUM", type=int, default=d.r_num, help="number of residual blocks in stage 2")
    g.add_argument("--embDim", type=int, default=d.emb_dim, help="FoodSpace embedding size (G's input)")
    g.add_argument("--numClasses", type=int, default=d.num_classes,
                   help="number of semantic classes of D's class head (1048 with background)")
    g.add_argument("--G_output_space", choices=OUTPUT_SPACES, default=d.output_space,
                   help="how G's tanh output maps to ImageNet-normalised space: 'imagenet' (used as is, "
                        "the reference) or 'pixel' ([-1,1] = pixels [0,1], then normalised)")
    g.add_argument("--G_emb_scale", default="1",
                   help="multiply G's input embeddings by this: a number, 'sqrt' (sqrt(embDim): unit-variance "
                        "components) or 'K*sqrt'; 1 is the reference (docs/synthesis.md)")
    g.add_argument("--G_whiten", type=float, default=d.input_whiten, metavar="RIDGE",
                   help="G's input embeddings are whitened by the within-class covariance of the train recipe and "
                        "image embeddings (classes from the LMDB, background left out), this ridge x its "
                        "largest eigenvalue added; stored in G (0: off, the reference; docs/synthesis.md)")
    g.add_argument("--G_class_posterior", action="store_true",
                   help="G reads the posterior over the classes of its whitened input (Gaussian, one mean per "
                        "class and modality from the train embeddings) as a fixed code per class; needs "
                        "--G_whiten (off: the reference; docs/synthesis.md)")
    g.add_argument("--G_class_residual", type=float, default=d.class_residual, metavar="W",
                   help="with --G_class_posterior: add W x the whitened input to the class code (0: the code alone)")
    g.add_argument("--G_coarse_rgb", type=int, default=d.coarse_rgb, metavar="SIDE",
                   help="add a linear map of G's conditioning mean mu to a SIDE x SIDE RGB image, upsampled, to G's "
                        "last layer before its tanh; starts at zero (0: none, the reference; docs/synthesis.md)")
    return parser


def emb_scale_value(text: str | float, emb_dim: int) -> float:
    """``--G_emb_scale``: a positive number, ``sqrt`` for ``sqrt(embDim)`` or ``K*sqrt`` for ``K sqrt(embDim)``."""
    value = str(text).strip().lower().replace(" ", "")
    factor = 1.0
    if value.endswith("sqrt"):
        factor, value = float(emb_dim) ** 0.5, value[:-4].rstrip("*") or "1"
    try:
        scale = float(value) * factor
    except ValueError:
        scale = -1.0
    if not scale > 0:
        raise ValueError(f"--G_emb_scale {text!r}: give a positive number, 'sqrt' or 'K*sqrt'")
    return scale


# ----------------------------------------------------------------------------- building blocks

class GLU(nn.Module):
    """Gated linear unit over channels: ``x[:, :C/2] * sigmoid(x[:, C/2:])`` (fused ``F.glu``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(x, dim=1)


def conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)


def up_block(in_planes: int, out_planes: int) -> nn.Sequential:
    """Nearest x2, conv3x3 to ``2 * out_planes``, BN, GLU: doubles the size, ends at ``out_planes``."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(in_planes, out_planes * 2),
                         nn.BatchNorm2d(out_planes * 2), GLU())


def block3x3_glu(in_planes: int, out_planes: int) -> nn.Sequential:
    """conv3x3 to ``2 * out_planes``, BN, GLU (the reference's ``Block3x3_relu``)."""
    return nn.Sequential(conv3x3(in_planes, out_planes * 2), nn.BatchNorm2d(out_planes * 2), GLU())


def block3x3_leaky(in_planes: int, out_planes: int) -> nn.Sequential:
    """conv3x3, BN, LeakyReLU(0.2) (the reference's ``Block3x3_leakRelu``)."""
    return nn.Sequential(conv3x3(in_planes, out_planes), nn.BatchNorm2d(out_planes),
                         nn.LeakyReLU(0.2, inplace=True))


def down_block(in_planes: int, out_planes: int) -> nn.Sequential:
    """conv4x4 stride 2, BN, LeakyReLU(0.2): halves the size."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 4, 2, 1, bias=False), nn.BatchNorm2d(out_planes),
                         nn.LeakyReLU(0.2, inplace=True))


def encode_image_by_16times(ndf: int) -> nn.Sequential:
    """Four stride-2 conv4x4 (3 -> ndf -> 2 ndf -> 4 ndf -> 8 ndf); no BN after the first."""
    return nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
    )


class ResBlock(nn.Module):
    """conv3x3 (C -> 2C), BN, GLU, conv3x3 (C -> C), BN, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(conv3x3(channels, channels * 2), nn.BatchNorm2d(channels * 2), GLU(),
                                   conv3x3(channels, channels), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x  # (B, C, H, W)


def _is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is stored channels_last (and not also plain contiguous, as 1x1 maps are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _join_code(code: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``[code tiled over space, h]`` on channels: ``(B, E)``, ``(B, C, S, S)`` -> ``(B, E + C, S, S)``.

    Keeps ``h``'s dtype and memory format (``torch.cat`` falls back to NCHW unless every input is
    channels_last, so the tiled code is laid out like ``h`` first).
    """
    b, _, hh, ww = h.shape
    tiled = code.to(h.dtype).view(b, code.shape[1], 1, 1).expand(-1, -1, hh, ww)  # (B, E, S, S) view
    if _is_channels_last(h):
        tiled = tiled.contiguous(memory_format=torch.channels_last)
    return torch.cat((tiled, h), dim=1)


# ----------------------------------------------------------------------------- generator

def conditioning_sample(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Conditioning augmentation sample ``c = mu + exp(logvar / 2) * eps``.

    Args:
        mu: ``(B, E)`` means.
        logvar: ``(B, E)`` log-variances.
        eps: ``(B, E)`` standard normal noise to use (zeros give ``c = mu``); drawn when None.
        generator: draws ``eps`` reproducibly. It may live on another device than ``mu`` (e.g. a
            CPU generator for a CUDA model): the draw is made on the generator's device and moved,
            so the same seed gives the same noise on CPU and GPU.

    Returns:
        ``(B, E)`` conditioning codes.
    """
    if eps is None:
        dev = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=dev, dtype=torch.float32)
    elif eps.shape != mu.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)}, expected {tuple(mu.shape)}")
    eps = eps.to(device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps  # (B, E)


class CondAugment(nn.Module):
    """``Linear(embDim, 4 ef)`` + GLU -> ``mu``, ``logvar`` (``ef`` each); the reference's CA_NET."""

    def __init__(self, emb_dim: int, ef_dim: int):
        super().__init__()
        self.ef_dim = ef_dim
        self.fc = nn.Linear(emb_dim, ef_dim * 4, bias=True)
        self.relu = GLU()  # the reference's attribute name

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.fc(emb))  # (B, 2 ef)
        return x[:, :self.ef_dim], x[:, self.ef_dim:]


class InitStageG(nn.Module):
    """``[c, z]`` -> fc + BN1d + GLU -> ``(ngf, 4, 4)`` -> four upBlocks -> ``(ngf / 16, 64, 64)``."""

    def __init__(self, ngf: int, in_dim: int):
        super().__init__()
        self.gf_dim = ngf
        self.fc = nn.Sequential(nn.Linear(in_dim, ngf * 4 * 4 * 2, bias=False), nn.BatchNorm1d(ngf * 4 * 4 * 2),
                                GLU())
        self.upsample1 = up_block(ngf, ngf // 2)
        self.upsample2 = up_block(ngf // 2, ngf // 4)
        self.upsample3 = up_block(ngf // 4, ngf // 8)
        self.upsample4 = up_block(ngf // 8, ngf // 16)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat((c, z), dim=1).to(self.fc[0].weight.dtype))  # (B, 16 ngf)
        h = h.view(-1, self.gf_dim, 4, 4)  # (B, ngf, 4, 4)
        if _is_channels_last(self.upsample1[1].weight):
            h = h.contiguous(memory_format=torch.channels_last)  # follow the model's memory format
        h = self.upsample1(h)  # (B, ngf/2, 8, 8)
        h = self.upsample2(h)  # (B, ngf/4, 16, 16)
        h = self.upsample3(h)  # (B, ngf/8, 32, 32)
        return self.upsample4(h)  # (B, ngf/16, 64, 64)


class NextStageG(nn.Module):
    """``[c tiled, h]`` -> joint block -> ResBlocks -> upBlock: ``(ngf, S, S)`` -> ``(ngf / 2, 2S, 2S)``."""

    def __init__(self, ngf: int, ef_dim: int, num_residual: int):
        super().__init__()
        self.gf_dim, self.ef_dim = ngf, ef_dim
        self.jointConv = block3x3_glu(ngf + ef_dim, ngf)
        self.residual = nn.Sequential(*[ResBlock(ngf) for _ in range(num_residual)])
        self.upsample = up_block(ngf, ngf // 2)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        hc = _join_code(c, h)  # (B, ef + ngf, S, S), order [c, h] as the reference
        out = self.jointConv(hc)  # (B, ngf, S, S)
        out = self.residual(out)
        return self.upsample(out)  # (B, ngf/2, 2S, 2S)


class GetImageG(nn.Module):
    """conv3x3 to RGB + tanh."""

    def __init__(self, ngf: int):
        super().__init__()
        self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.img(h)  # (B, 3, H, W)


class Generator(nn.Module):
    """Recipe (or image) FoodSpace embedding + noise -> 128 px image (the reference's G_NET).

    Args:
        cfg: the shapes; the default is the reference's generator (21,080,288 parameters).
    """

    def __init__(self, cfg: GANConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GANConfig()
        self.ca_net = CondAugment(cfg.emb_dim, cfg.ef_dim)
        self.h_net1 = InitStageG(cfg.gf_dim * 16, cfg.z_dim + cfg.ef_dim)
        self.h_net2 = NextStageG(cfg.gf_dim, cfg.ef_dim, cfg.r_num)
        self.img_net2 = GetImageG(cfg.gf_dim // 2)
        if cfg.input_whiten > 0:  # (x - mean) @ W, set by set_input_whitening; saved with the weights
            self.register_buffer("in_mean", torch.zeros(cfg.emb_dim))
            self.register_buffer("in_w", torch.eye(cfg.emb_dim))
        if cfg.coarse_rgb:  # zeros, and no draw from the global RNG: G starts as without it (--G_coarse_rgb)
            n = 3 * cfg.coarse_rgb ** 2
            self.coarse_w = nn.Parameter(torch.zeros(n, cfg.ef_dim))
            self.coarse_b = nn.Parameter(torch.zeros(n))
        if cfg.class_posterior:  # rows c and C + c: class c's mean recipe and image; set by set_class_means
            n = 2 * cfg.num_classes
            self.register_buffer("cls_means", torch.zeros(n, cfg.emb_dim))
            self.register_buffer("cls_mask", torch.zeros(n, dtype=torch.bool))  # which means are set
            codes = torch.randn(cfg.num_classes, cfg.emb_dim, generator=torch.Generator().manual_seed(CLASS_CODE_SEED))
            self.register_buffer("cls_codes", F.normalize(codes, dim=1))  # (C, D): a fixed unit vector per class

    def set_input_whitening(self, mean: torch.Tensor, w: torch.Tensor) -> None:
        """Set the input whitening ``(mean (embDim,), W (embDim, embDim))`` of a G built with ``input_whiten``."""
        if self.cfg.input_whiten <= 0:
            raise ValueError("this generator has no input whitening (GANConfig.input_whiten is 0)")
        d = self.cfg.emb_dim
        if tuple(mean.shape) != (d,) or tuple(w.shape) != (d, d):
            raise ValueError(f"expected whitening of shapes ({d},), ({d}, {d}), got {tuple(mean.shape)}, {tuple(w.shape)}")
        self.in_mean.copy_(mean)
        self.in_w.copy_(w)

    def set_class_means(self, means: torch.Tensor, mask: torch.Tensor) -> None:
        """Set the whitened class means ``(2 numClasses, embDim)`` (recipes, then images) and which are known."""
        if not self.cfg.class_posterior:
            raise ValueError("this generator reads no class posterior (GANConfig.class_posterior is False)")
        if tuple(means.shape) != tuple(self.cls_means.shape) or tuple(mask.shape) != tuple(self.cls_mask.shape):
            raise ValueError(f"expected class means {tuple(self.cls_means.shape)} and mask {tuple(self.cls_mask.shape)}, "
                             f"got {tuple(means.shape)} and {tuple(mask.shape)}")
        if not mask.any():
            raise ValueError("no class mean is known (the train set has no labelled embedding)")
        self.cls_means.copy_(means)
        self.cls_mask.copy_(mask)

    def class_code(self, x: torch.Tensor) -> torch.Tensor:
        """``--G_class_posterior``: whitened ``x (B, D)`` -> the posterior-weighted class codes (+ residual).

        The within-class covariance is the identity after --G_whiten, so ``-|x - m|^2 / 2`` is the
        log-likelihood under each class mean ``m`` (equal priors); a class's recipe and image means
        are two components of one class, so G reads recipes and photos alike.
        """
        logits = -0.5 * torch.cdist(x.float(), self.cls_means) ** 2  # (B, 2C)
        p = logits.masked_fill(~self.cls_mask, float("-inf")).softmax(dim=1)
        p = p[:, :self.cfg.num_classes] + p[:, self.cfg.num_classes:]  # (B, C)
        return (p @ self.cls_codes).to(x.dtype) + self.cfg.class_residual * x  # (B, D)

    def forward(self, emb: torch.Tensor, z: torch.Tensor, *, eps: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generate images.

        Args:
            emb: ``(B, embDim)`` FoodSpace embeddings (recipe or image).
            z: ``(B, Z_DIM)`` noise (see :func:`models.gan_sampling.draw_noise`).
            eps: ``(B, EMBEDDING_DIM)`` conditioning noise (zeros: ``c = mu``); drawn when None.
            generator: draws ``eps`` reproducibly when it is None (see :func:`conditioning_sample`).

        Returns:
            ``(fake (B, 3, 128, 128), mu (B, E), logvar (B, E))``; ``fake`` is tanh output, in the
            space of ``cfg.output_space``.
        """
        if emb.dim() != 2 or emb.shape[1] != self.cfg.emb_dim:
            raise ValueError(f"expected embeddings (B, {self.cfg.emb_dim}), got {tuple(emb.shape)}")
        if z.shape != (emb.shape[0], self.cfg.z_dim):
            raise ValueError(f"expected noise ({emb.shape[0]}, {self.cfg.z_dim}), got {tuple(z.shape)}")
        # The embeddings are L2-normalised, so each of their D components is ~1/sqrt(D): far below
        # the unit scale the CA layer's init assumes, which leaves mu ~0 beside eps ~1 (emb_scale).
        if self.cfg.input_whiten > 0:  # the directions that tell dishes apart made the large ones (--G_whiten)
            emb = (emb - self.in_mean.to(emb.dtype)) @ self.in_w.to(emb.dtype)  # (B, D)
        if self.cfg.class_posterior:  # which dish, read once for G (--G_class_posterior)
            emb = self.class_code(emb)  # (B, D)
        mu, logvar = self.ca_net(emb * self.cfg.emb_scale)  # (B, E) each; x 1.0 is exact
        c = conditioning_sample(mu, logvar, eps=eps, generator=generator)  # (B, E)
        h1 = self.h_net1(z.to(c.dtype), c)  # (B, gf, 64, 64)
        h2 = self.h_net2(h1, c)  # (B, gf/2, 128, 128)
        if not self.cfg.coarse_rgb:
            return self.img_net2(h2), mu, logvar  # (B, 3, 128, 128)
        pre = self.img_net2.img[0](h2) + self.coarse_image(mu, h2.shape[-1])  # (B, 3, 128, 128), before the tanh
        return self.img_net2.img[1](pre), mu, logvar

    def coarse_image(self, mu: torch.Tensor, size: int) -> torch.Tensor:
        """``--G_coarse_rgb``: ``mu (B, E)`` -> a linear RGB image ``(B, 3, size, size)``, pre-tanh.

        The dish's plate and ground from its conditioning mean in one linear step, which the layout
        term (--W_LAYOUT_LOSS) reaches directly; from ``mu``, not the noisy ``c``, so every noise
        draw of one recipe shares it and the noise varies only what the convolutions draw on top.
        """
        s = self.cfg.coarse_rgb
        img = F.linear(mu, self.coarse_w.to(mu.dtype), self.coarse_b.to(mu.dtype)) * COARSE_GAIN  # (B, 3 s s)
        return F.interpolate(img.view(-1, 3, s, s), size=size, mode="bilinear", align_corners=False)

    def to_imagenet(self, fake: torch.Tensor) -> torch.Tensor:
        """Map this G's output into ImageNet-normalised space (what D and the encoder take)."""
        return to_imagenet(fake, self.cfg.output_space)

    def to_pixels(self, fake: torch.Tensor) -> torch.Tensor:
        """Map this G's output to RGB in [0, 1] (for saving images)."""
        return to_pixels(fake, self.cfg.output_space)


# ----------------------------------------------------------------------------- discriminator

class Discriminator128(nn.Module):
    """Discriminator for 128 px images with a conditional logit and a class head (ACME's D_NET128).

    ``logits_class`` exists, as in the reference, only so that reference state dicts load; it is
    never used in ``forward`` (docs/synthesis.md#the-method), so it gets no gradient (Adam skips it; under DDP use
    ``find_unused_parameters`` or leave it out of the wrapped module's graph by freezing it).
    The reference's sigmoid after ``logits`` is gone: the logit goes to ``BCEWithLogitsLoss``.

    Args:
        cfg: the shapes (``df_dim``, ``ef_dim``, ``num_classes``).
    """

    def __init__(self, cfg: GANConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GANConfig()
        ndf, efg = cfg.df_dim, cfg.ef_dim
        self.ef_dim = efg
        self.img_code_s16 = encode_image_by_16times(ndf)
        self.img_code_s32 = down_block(ndf * 8, ndf * 16)
        self.img_code_s32_1 = block3x3_leaky(ndf * 16, ndf * 8)
        self.logits = nn.Sequential(nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=4))
        self.logits_class = nn.Sequential(nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=4))  # unused
        self.jointConv = block3x3_leaky(ndf * 8 + efg, ndf * 8)
        self.uncond_branch = nn.Sequential(nn.Conv2d(ndf * 8, ndf * 4, kernel_size=4, stride=4),
                                           nn.LeakyReLU(0.2, inplace=True))
        self.semantic_branch = nn.Linear(ndf * 4, cfg.num_classes)

    def forward(self, images: torch.Tensor, mu: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score images.

        Args:
            images: ``(B, 3, 128, 128)`` ImageNet-normalised images (real, or ``to_imagenet(fake)``).
            mu: ``(B, EMBEDDING_DIM)`` conditioning means (detach them for the D step), or None for
                the unconditional logit (the reference's ``B_CONDITION`` off).

        Returns:
            ``(cond_logit (B,), class_logits (B, numClasses))``.
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (128, 128):
            raise ValueError(f"expected images (B, 3, 128, 128), got {tuple(images.shape)}")
        x = self.img_code_s16(images)  # (B, 8 ndf, 8, 8)
        x = self.img_code_s32(x)  # (B, 16 ndf, 4, 4)
        x = self.img_code_s32_1(x)  # (B, 8 ndf, 4, 4)
        if mu is not None:
            hc = _join_code(mu, x)  # (B, ef + 8 ndf, 4, 4)
            hc = self.jointConv(hc)  # (B, 8 ndf, 4, 4)
        else:
            hc = x
        cond_logit = self.logits(hc).reshape(-1)  # (B,)
        u = self.uncond_branch(x).flatten(1)  # (B, 4 ndf)
        return cond_logit, self.semantic_branch(u)  # (B,), (B, numClasses)


# ----------------------------------------------------------------------------- image spaces

def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return mean, std


def to_imagenet(fake: torch.Tensor, space: str = "imagenet") -> torch.Tensor:
    """Map G's tanh output ``(B, 3, H, W)`` into ImageNet-normalised space (see the module docs)."""
    if space == "imagenet":
        return fake
    if space != "pixel":
        raise ValueError(f"unknown output space {space!r}; choose one of {', '.join(OUTPUT_SPACES)}")
    mean, std = _stats(fake)
    return ((fake + 1.0) * 0.5 - mean) / std  # per-channel affine, keeps the memory format


def to_pixels(fake: torch.Tensor, space: str = "imagenet") -> torch.Tensor:
    """Map G's tanh output ``(B, 3, H, W)`` to RGB in [0, 1] for saving (clamped)."""
    if space == "pixel":
        return ((fake + 1.0) * 0.5).clamp(0.0, 1.0)
    return imagenet_to_pixels(to_imagenet(fake, space))


def imagenet_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation of ``(B, 3, H, W)`` images: RGB in [0, 1] (clamped)."""
    mean, std = _stats(images)
    return (images * std + mean).clamp(0.0, 1.0)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (BN affine weights included, running statistics excluded)."""
    return sum(p.numel() for p in module.parameters())

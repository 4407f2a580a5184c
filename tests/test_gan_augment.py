"""models/gan_augment.py: the random views of G's images (GAN_train.py --cycle_aug, --D_aug)."""

import argparse

import pytest
import torch

from models.gan_augment import (
    AUG_OPS,
    COLOR_RANGE,
    instance_noise,
    parse_aug,
    random_view,
    random_view_imagenet,
)


def test_parse_aug():
    assert parse_aug("none") == parse_aug("") == ()
    assert parse_aug("all") == AUG_OPS
    assert parse_aug("color, crop") == ("crop", "color")  # canonical order
    with pytest.raises(argparse.ArgumentTypeError, match="blur"):
        parse_aug("crop,blur")


def test_no_ops_is_the_input_itself():
    x = torch.rand(2, 3, 16, 16)
    assert random_view(x, ()) is x and random_view_imagenet(x, ()) is x and instance_noise(x, 0.0) is x


def test_flip_mirrors_exactly_the_samples_it_draws():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    y = random_view(x, ("flip",))
    same = [torch.allclose(y[i], x[i], atol=1e-6) for i in range(16)]
    mirrored = [torch.allclose(y[i], x[i].flip(-1), atol=1e-6) for i in range(16)]
    assert all(a != b for a, b in zip(same, mirrored)) and 0 < sum(mirrored) < 16


def test_crop_is_a_zoom_inside_the_image():
    # A horizontal ramp: a crop of side s, resized back to the full size, is a ramp of slope s
    # (per output pixel), within the image's range.
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 3, 64, 64).contiguous()
    y = random_view(ramp, ("crop",), torch.Generator().manual_seed(3))
    slopes = (y[:, 0, 32, 40] - y[:, 0, 32, 20]) / (ramp[0, 0, 32, 40] - ramp[0, 0, 32, 20])
    assert torch.all(slopes >= 0.7 - 1e-4) and torch.all(slopes <= 1 + 1e-4) and slopes.std() > 0
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    assert torch.equal(y, random_view(ramp, ("crop",), torch.Generator().manual_seed(3)))  # seeded


def test_color_against_brute_force():
    x = torch.rand(4, 3, 8, 8)
    gen = torch.Generator().manual_seed(5)
    y = random_view(x, ("color",), gen)
    f = 1 - COLOR_RANGE + 2 * COLOR_RANGE * torch.rand(3, 4, generator=torch.Generator().manual_seed(5))
    want = x * f[0].view(4, 1, 1, 1)
    mean = want.mean(dim=(1, 2, 3), keepdim=True)
    want = (want - mean) * f[1].view(4, 1, 1, 1) + mean
    grey = 0.299 * want[:, :1] + 0.587 * want[:, 1:2] + 0.114 * want[:, 2:]
    want = (want - grey) * f[2].view(4, 1, 1, 1) + grey
    assert torch.allclose(y, want, atol=1e-6)


def test_views_are_differentiable():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    random_view_imagenet(x, AUG_OPS).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

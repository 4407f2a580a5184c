"""The ImageNet per-channel statistics (RGB) that images are normalised with, in one place.

Used by the image transforms (``data/transforms.py``), the generator's output spaces
(``models/gan.py``) and the thumbnails of ``utils/embeddings.py``. The reference's GAN_test has
0.255 for the last standard deviation: a typo, not used here.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_on_device(images):
    """uint8 images ``(..., 3, H, W)`` -> float32 ImageNet-normalised, wherever they are (the step's device).

    The same arithmetic as the float path of the transforms (torchvision's ``to_dtype(scale=True)``
    then ``normalize``: ``x * (1/255)``, minus the mean, divided by the std, in float32), so the
    values equal it bit for bit. Floating-point input is taken as already normalised and returned
    unchanged (datasets built with ``uint8=False``).
    """
    import torch

    if images.is_floating_point():
        return images
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return images.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)

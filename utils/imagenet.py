"""The ImageNet per-channel statistics (RGB) that images are normalised with, in one place.

Used by the image transforms (``data/transforms.py``), the generator's output spaces
(``models/gan.py``) and the thumbnails of ``utils/embeddings.py``. The reference's GAN_test has
0.255 for the last standard deviation: a typo, not used here.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

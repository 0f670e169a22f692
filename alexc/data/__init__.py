"""The data pipeline: sources (IDX, ImageFolder), augmentation (the AlexNet paper's) and a
deterministic, prefetching loader. See DESIGN.md section 8.

    source = open_source("fashion-mnist", split="train", channels=1)
    augment = Augment.from_config(graph.data, (1, 28, 28))
    with Loader(source, augment, batch_size=128, train=True, seed=0, epoch=3) as loader:
        for x, y in loader:      # x: float32 (N, C, H, W), y: int64 (N,)
            ...
"""

from .augment import Augment, resize_short_side, sample_uniforms
from .loader import Loader
from .sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IMAGE_SUFFIXES,
    ArraySource,
    FolderSource,
    Source,
    image_to_array,
    open_source,
    read_idx,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_SUFFIXES",
    "ArraySource",
    "Augment",
    "FolderSource",
    "Loader",
    "Source",
    "image_to_array",
    "open_source",
    "read_idx",
    "resize_short_side",
    "sample_uniforms",
]

"""Data sources and loaders. Images reach models as float tensors in [0, 1]."""

from chanscope.data.loader import BatchLoader, augment_crop_flip
from chanscope.data.sources import (
    SOURCES,
    ImageData,
    balanced_subset,
    check_classes,
    load_data,
)

__all__ = [
    "BatchLoader",
    "ImageData",
    "SOURCES",
    "augment_crop_flip",
    "balanced_subset",
    "check_classes",
    "load_data",
]

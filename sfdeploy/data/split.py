"""A reproducible holdout split of one annotated set (`--val-fraction F`), for users with a single export.

Which images are held out depends only on the seed and each image's file name (or id), not on the file's
order: re-exporting the set in another order, or adding images, keeps the old holdout images held out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .base import DetectionDataset, ImageAnnotation, Transform
from .errors import DataError


def holdout_indices(dataset: DetectionDataset, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), both sorted; round(fraction * N) images held out, at least 1 of each."""
    n = len(dataset)
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise DataError(f"{dataset.source}: {n} image(s) cannot be split into training and validation images")
    keys = []
    for i in range(n):
        ann = dataset.annotation(i)
        name = Path(ann.file_name).name or f"id:{ann.image_id}"
        keys.append(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    order = sorted(range(n), key=lambda i: keys[i])
    held = min(max(int(round(fraction * n)), 1), n - 1)
    return sorted(order[held:]), sorted(order[:held])


class SubsetDataset(DetectionDataset):
    """Some images of another data set (same annotations, masks and pixels), with its own transforms."""

    def __init__(self, base: DetectionDataset, indices: list[int], *, transforms: Transform | None = None,
                 name: str = "subset") -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.transforms = transforms
        self.class_names = base.class_names
        self.category_ids = base.category_ids
        self.has_masks = base.has_masks
        self.source = f"{base.source} ({name}, {len(self.indices)} of {len(base)} images)"

    def __len__(self) -> int:
        return len(self.indices)

    def annotation(self, i: int) -> ImageAnnotation:
        return self.base.annotation(self.indices[self._index(i)])

    def image_path(self, i: int) -> str | None:
        return self.base.image_path(self.indices[self._index(i)])

    def load_image(self, i: int) -> np.ndarray:
        return self.base.load_image(self.indices[self._index(i)])

    def masks(self, i: int) -> np.ndarray:
        return self.base.masks(self.indices[self._index(i)])

    def annotation_areas(self, i: int) -> np.ndarray | None:
        return self.base.annotation_areas(self.indices[self._index(i)])

    def _sample(self, i: int) -> tuple[np.ndarray, ImageAnnotation, np.ndarray | None]:
        return self.base._sample(self.indices[self._index(i)])


def holdout_split(dataset: DetectionDataset, fraction: float, seed: int = 0, *,
                  train_transforms: Transform | None = None) -> tuple[SubsetDataset, SubsetDataset]:
    """(training part with ``train_transforms``, held-out part without transforms) of ``dataset``."""
    train_idx, val_idx = holdout_indices(dataset, fraction, seed)
    return (SubsetDataset(dataset, train_idx, transforms=train_transforms, name="train part"),
            SubsetDataset(dataset, val_idx, name=f"held-out {fraction:g}, seed {seed}"))

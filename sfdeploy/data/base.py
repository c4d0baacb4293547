"""The data set contract shared by all readers: annotations without pixels, and training samples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .errors import DataError

Target = dict[str, torch.Tensor]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


@dataclass
class ImageAnnotation:
    """One image's annotations, no pixels: what prior estimation and COCO evaluation need.

    Boxes are float32 [N,4] xyxy absolute pixels (validated and clipped), labels int64 [N] in 1..C
    (0 is background), iscrowd uint8 [N] (crowd regions are evaluation-only).
    """

    image_id: int
    file_name: str  # image file path ("" for generated data)
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray

    @classmethod
    def make(cls, image_id: int, file_name: str, width: int, height: int, boxes: Any = (), labels: Any = (),
             iscrowd: Any = None) -> "ImageAnnotation":
        """Build with canonical dtypes/shapes (so empty images have boxes of shape [0,4])."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        crowd = np.zeros(len(b), np.uint8) if iscrowd is None else np.asarray(iscrowd, dtype=np.uint8).reshape(-1)
        if not len(b) == len(lab) == len(crowd):
            raise ValueError(f"image {image_id}: {len(b)} boxes, {len(lab)} labels, {len(crowd)} iscrowd flags")
        return cls(int(image_id), file_name, int(width), int(height), b, lab, crowd)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 [H,W,3] RGB; any decoding failure becomes a DataError naming the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header only (no decode), for annotations that omit the size."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image header ({exc})") from None


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] -> float32 [3,H,W] in [0,1] (contiguous).

    Converted in numpy: torch's multi-threaded elementwise kernels cost ~100x more on small
    images when the CPU is shared (data loader workers, busy CI machines).
    """
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(np.divide(chw, np.float32(255.0), dtype=np.float32))


class DetectionDataset(torch.utils.data.Dataset):
    """Base class of all readers.

    Subclasses implement ``__len__``, ``annotation`` and either ``image_path`` (file-backed) or
    ``load_image``; ``masks`` when they support masks. ``__getitem__`` returns torchvision detection
    samples with crowd regions removed from the training target; images without objects are kept.
    """

    class_names: list[str]
    # The source's category id of each class (label k -> category_ids[k-1]); None: labels 1..C are the ids.
    category_ids: list[int] | None = None
    has_masks: bool = False
    transforms: Transform | None = None
    source: str = "dataset"  # shown in messages

    # -- to implement ---------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def annotation(self, i: int) -> ImageAnnotation:
        """Annotations of image ``i``; never decodes pixels. Callers must not modify the arrays."""
        raise NotImplementedError

    def image_path(self, i: int) -> str | None:
        """File of image ``i`` (None for generated data)."""
        return None

    def load_image(self, i: int) -> np.ndarray:
        """Pixels of image ``i`` as uint8 [H,W,3] RGB, checked against the annotated size."""
        path = self.image_path(i)
        if path is None:
            raise NotImplementedError(f"{type(self).__name__} must implement load_image or image_path")
        image = read_image(path)
        ann = self.annotation(i)
        if image.shape[:2] != (ann.height, ann.width):
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but annotated as "
                            f"{ann.width}x{ann.height}")
        return image

    def masks(self, i: int) -> np.ndarray:
        """uint8 [N,H,W] instance masks aligned with ``annotation(i)`` (crowd included), original size."""
        raise DataError(f"{self.source}: this data set has no instance masks")

    def annotation_areas(self, i: int) -> np.ndarray | None:
        """Areas to report in COCO GT (e.g. COCO's own segment areas); None: computed from boxes/masks."""
        return None

    # -- provided -------------------------------------------------------------------------------
    def _index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {self.source} with {n} images")
        return i

    def _sample(self, i: int) -> tuple[np.ndarray, ImageAnnotation, np.ndarray | None]:
        """(pixels, annotation, masks or None); generated data overrides this to build all three at once."""
        return self.load_image(i), self.annotation(i), self.masks(i) if self.has_masks else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        i = self._index(i)
        image, ann, masks = self._sample(i)
        keep = ann.iscrowd == 0  # crowd regions are not training objects (kept for evaluation only)
        target: Target = {
            "boxes": torch.from_numpy(ann.boxes[keep].copy()).reshape(-1, 4),
            "labels": torch.from_numpy(ann.labels[keep].copy()),
            "image_id": torch.tensor(ann.image_id, dtype=torch.int64),
            "iscrowd": torch.from_numpy(ann.iscrowd[keep].copy()),
        }
        if self.has_masks:
            assert masks is not None
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks[keep])).reshape(-1, ann.height, ann.width)
        tensor = image_to_tensor(image)
        if self.transforms is not None:
            tensor, target = self.transforms(tensor, target)
        return tensor, target

    def fingerprint(self) -> str:
        """Stable hash of class names and all annotations: a cache key for data-derived values (priors)."""
        h = hashlib.sha256()
        h.update(repr(list(self.class_names)).encode())
        for i in range(len(self)):
            a = self.annotation(i)
            # file basename only: moving a data set must not invalidate what was derived from it
            h.update(f"{a.image_id}|{Path(a.file_name).name}|{a.width}|{a.height}|{len(a.boxes)}".encode())
            for arr in (a.boxes, a.labels, a.iscrowd):
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source!r}, images={len(self)}, classes={len(self.class_names)}, "
                f"masks={self.has_masks})")


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """torchvision detection batching: images differ in size, so keep lists."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def validate_images(dataset: DetectionDataset) -> list[str]:
    """Decode every image up front; returns one problem message per bad file (empty list: all fine).

    Lets a long training run fail before its first epoch instead of mid-epoch.
    """
    problems: list[str] = []
    if type(dataset).image_path is DetectionDataset.image_path:
        return problems  # generated data: nothing to read
    for i in range(len(dataset)):
        try:
            dataset.load_image(i)
        except DataError as exc:
            problems.append(str(exc))
    return problems

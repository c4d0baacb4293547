"""DATA spec parsing: one string picks the built-in synthetic set, a COCO JSON or a VOC root."""

from __future__ import annotations

from pathlib import Path

from .base import DetectionDataset, Transform
from .coco import CocoDataset
from .dataset_yaml import coco_split
from .errors import DataError
from .synthetic import SyntheticDataset
from .voc import VocDataset, is_voc_root
from .yolo import YoloDataset, is_yolo_yaml

DEFAULT_SYNTHETIC_IMAGES = 200
DATA_HELP = ("DATA may be 'synthetic', 'synthetic:N' (N generated images), a COCO instances JSON file, "
             "a PASCAL VOC root (with Annotations/, JPEGImages/, ImageSets/Main/<split>.txt), "
             "a YOLO data.yaml (train/val image folders, names; labels/*.txt next to images/), "
             "or a dataset YAML naming COCO files per split (train: {annotations: X.json, images: DIR})")


def build_dataset(spec: str, *, split: str = "train", images_dir: str | None = None, seed: int = 0,
                  transforms: Transform | None = None, with_masks: bool | None = None) -> DetectionDataset:
    """Open the data set named by ``spec`` (see DATA_HELP). ``seed`` only affects synthetic data;
    a COCO JSON is a single split, so ``split`` is ignored for it; VOC and YOLO pick the split's images."""
    spec = str(spec).strip()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        count = spec.partition(":")[2]
        try:
            n = int(count) if count else DEFAULT_SYNTHETIC_IMAGES
        except ValueError:
            raise DataError(f"DATA={spec!r}: N in 'synthetic:N' must be a positive integer") from None
        if n < 1:
            raise DataError(f"DATA={spec!r}: N in 'synthetic:N' must be a positive integer")
        return SyntheticDataset(n, split=split, seed=seed, transforms=transforms, with_masks=with_masks)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        return CocoDataset(path, images_dir=images_dir, transforms=transforms, with_masks=with_masks)
    if is_yolo_yaml(path):
        coco = coco_split(path, split)
        if coco is not None:  # a dataset YAML naming COCO files per split; --images still wins
            return CocoDataset(coco[0], images_dir=images_dir or coco[1], transforms=transforms, with_masks=with_masks)
        return YoloDataset(path, split=split, transforms=transforms, with_masks=with_masks)
    if path.is_dir() and is_voc_root(path):
        return VocDataset(path, split=split, images_dir=images_dir, transforms=transforms, with_masks=with_masks)
    what = "does not exist" if not path.exists() else "is not a .json file, a .yaml file or a VOC root"
    raise DataError(f"DATA={spec!r} {what}; {DATA_HELP}")

"""Tiny on-disk COCO and VOC fixtures written into tmp_path (a few small images each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

RACCOON_ROOT = Path("/work/shared/datasets/raccoon")


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A small random RGB image; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def coco_dict() -> dict[str, Any]:
    """3 images (the last without objects); non-contiguous category ids 7 and 3; one crowd region."""
    square = [10, 10, 30, 10, 30, 30, 10, 30]  # polygon of the box [10,10,20,20] xywh
    return {
        "images": [
            {"id": 11, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 12, "file_name": "b.jpg", "width": 40, "height": 40},
            {"id": 13, "file_name": "c.png", "width": 32, "height": 32},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [square]},
            {"id": 2, "image_id": 11, "category_id": 7, "bbox": [40, 5, 10, 30], "area": 300, "iscrowd": 0,
             "segmentation": [[40, 5, 50, 5, 50, 35, 40, 35]]},
            # crowd region: top-left 8x8 block as uncompressed column-major RLE
            {"id": 3, "image_id": 12, "category_id": 7, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 1,
             "segmentation": {"size": [40, 40], "counts": [0] + [8, 32] * 7 + [8, 32 + 32 * 40]}},
        ],
    }


def write_coco(root: Path, data: dict[str, Any] | None = None, name: str = "coco.json",
               image_root: Path | None = None) -> Path:
    """Write the JSON into root and its images (sizes from the JSON) into image_root (default: root)."""
    data = coco_dict() if data is None else data
    root.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(data["images"]):
        write_image((image_root or root) / img["file_name"], img["width"], img["height"], seed=k)
    path = root / name
    path.write_text(json.dumps(data))
    return path


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, list[float], int]]) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, difficult in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def write_voc(root: Path, splits: dict[str, list[tuple[str, int, int, list[tuple[str, list[float], int]]]]]) -> Path:
    """VOC root from {split: [(image_id, width, height, [(name, [xmin,ymin,xmax,ymax] 1-based, difficult)])]}."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        for k, (image_id, w, h, objects) in enumerate(items):
            write_image(root / "JPEGImages" / f"{image_id}.jpg", w, h, seed=k)
            (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", w, h, objects))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i[0]}\n" for i in items))
    return root


def default_voc(root: Path) -> Path:
    """train: cat/dog (one difficult) + an empty image; val: a bird, a class absent from train."""
    return write_voc(root, {
        "train": [("img1", 50, 40, [("cat", [1, 1, 20, 30], 0), ("dog", [21, 5, 50, 40], 1)]),
                  ("img2", 30, 30, [("dog", [5, 5, 10, 10], 0)]),
                  ("img3", 20, 20, [])],
        "val": [("img4", 40, 40, [("bird", [2, 2, 39, 39], 0)])],
    })


@pytest.fixture
def coco_path(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco")


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return default_voc(tmp_path / "voc")


@pytest.fixture
def raccoon_root() -> Path:
    if not (RACCOON_ROOT / "ImageSets" / "Main").is_dir():
        pytest.skip(f"{RACCOON_ROOT} not available")
    return RACCOON_ROOT


@pytest.fixture
def tight_box() -> Callable[[np.ndarray], np.ndarray]:
    """Reference tight bbox (pixel edges) of a HxW mask, independent of the library's helper."""
    def box(mask: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(np.asarray(mask))
        return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
    return box


# Helpers are handed out as fixtures (not imported from conftest) so that other test packages'
# conftest.py files can never shadow them.
@pytest.fixture
def coco_data() -> dict[str, Any]:
    return coco_dict()


@pytest.fixture
def make_coco() -> Callable[..., Path]:
    return write_coco


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def make_voc() -> Callable[..., Path]:
    return write_voc

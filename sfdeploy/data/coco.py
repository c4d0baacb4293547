"""COCO-format reader (instances JSON), with pycocotools for polygon/RLE masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .base import DetectionDataset, ImageAnnotation, Transform, read_image_size
from .boxes import sanitize_boxes
from .coco_records import (AnnotationRecord, Category, check_annotation, check_category, check_image,
                           check_segmentation)
from .errors import DataError, ProblemLog


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: COCO annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return data


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Polygon list, uncompressed RLE or compressed RLE -> one compressed RLE (as pycocotools annToRLE)."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise ValueError("empty polygon")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        return segmentation
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def _has_segmentation(seg: Any) -> bool:
    """An RLE, or a polygon list with at least one polygon of 3+ points (shorter ones cannot be rasterised)."""
    return bool(seg) and (isinstance(seg, dict) or any(isinstance(p, list) and len(p) >= 6 for p in seg))


def _drop_placeholder_categories(categories: list[Category], annotations: list[AnnotationRecord],
                                 log: ProblemLog) -> list[Category]:
    """Roboflow-style exports add a category for the data set itself (id 0, or the supercategory of the real
    ones) that no box uses; giving it a class slot would train a class that never occurs."""
    used = {a.category_id for a in annotations}
    parents = {c.supercategory for c in categories}
    placeholders = [c for c in categories if c.id not in used and (c.id == 0 or c.name in parents)]
    if len(placeholders) == len(categories):
        return categories  # no annotations at all: reported as such by the caller
    for c in placeholders:
        log.add("gave no class to {n} placeholder categories without annotations",
                example=f"id {c.id} {c.name!r}")
    return [c for c in categories if c not in placeholders]


def _unique_names(categories: list[Category]) -> list[str]:
    """Class names; a name used by two ids gets the id appended (both stay distinct classes)."""
    names = [c.name for c in categories]
    return [n if names.count(n) == 1 else f"{n} ({c.id})" for n, c in zip(names, categories)]


class CocoDataset(DetectionDataset):
    """COCO instances JSON; category ids map to labels 1..C in sorted id order.

    Crowd annotations stay in ``annotation(i)`` (iscrowd=1, used by evaluation) but are excluded
    from sfdeploy.training targets. Images with missing files are skipped with a counted warning.
    """

    def __init__(self, json_path: str | Path, *, images_dir: str | Path | None = None,
                 transforms: Transform | None = None, with_masks: bool | None = None) -> None:
        self.json_path = Path(json_path)
        self.source = self.json_path.name
        self.transforms = transforms
        data = _load_json(self.json_path)
        log = ProblemLog(self.source)
        path = self.json_path

        categories = [check_category(path, k, c) for k, c in enumerate(data["categories"])]
        if not categories:
            raise DataError(f"{path}: no categories")
        ids = [c.id for c in categories]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{path}: categories: duplicate category id {duplicate}")
        records = [check_annotation(path, k, a) for k, a in enumerate(data.get("annotations", []))]
        categories = _drop_placeholder_categories(categories, records, log)
        categories.sort(key=lambda c: c.id)
        # labels are 1..C in sorted id order; the source's ids stay available for every output (category_ids)
        self.category_ids = [c.id for c in categories]
        self.class_names = _unique_names(categories)
        cat_to_label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}

        images = self._resolve_images(data["images"], images_dir, log)
        anns_by_image: dict[int, list[AnnotationRecord]] = {img["id"]: [] for img in images}
        all_image_ids = {img["id"] for img in images} | self._skipped_image_ids
        for ann in records:
            if ann.image_id in anns_by_image:
                anns_by_image[ann.image_id].append(ann)
            elif ann.image_id not in all_image_ids:
                log.add("dropped {n} annotations of unknown image ids", example=ann.image_id)

        auto_masks = any(_has_segmentation(a.segmentation) for anns in anns_by_image.values() for a in anns)
        if with_masks and not auto_masks:
            raise DataError(f"{path}: masks requested but no annotation has a 'segmentation'")
        self.has_masks = auto_masks if with_masks is None else bool(with_masks)

        self._annotations: list[ImageAnnotation] = []
        self._paths: list[str] = []
        self._segmentations: list[list[Any]] = []
        self._areas: list[np.ndarray] = []
        for img in images:
            anns = anns_by_image[img["id"]]
            valid = []
            for ann in anns:
                if ann.category_id not in cat_to_label:
                    log.add("dropped {n} annotations with unknown category id", example=ann.category_id)
                else:
                    valid.append(ann)
            if not anns:
                log.add("{n} images have no annotations (kept as background images)", example=img["file_name"])
            xywh = np.array([a.bbox for a in valid], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            boxes, keep = sanitize_boxes(xyxy, img["width"], img["height"], log)
            kept = [a for a, k in zip(valid, keep) if k]
            self._annotations.append(ImageAnnotation.make(
                img["id"], img["path"], img["width"], img["height"], boxes[keep],
                [cat_to_label[a.category_id] for a in kept], [a.iscrowd for a in kept]))
            self._paths.append(img["path"])
            self._areas.append(np.array([a.area for a in kept], dtype=np.float64))
            if self.has_masks:
                for a in kept:
                    if a.segmentation is not None:
                        check_segmentation(path, f"annotation id {a.id} (image {img['id']})", a.segmentation,
                                           img["height"], img["width"])
                segmentations = [a.segmentation if _has_segmentation(a.segmentation) else None for a in kept]
                log.add("used the box as mask for {n} annotations without 'segmentation'",
                        sum(seg is None for seg in segmentations))
                self._segmentations.append(segmentations)
        if not records:
            raise DataError(f"{path}: the data set has no annotations; there is nothing to train or evaluate on")
        log.report()
        if not any(len(a.boxes) for a in self._annotations):
            raise DataError(f"{path}: no usable boxes: all {len(records)} annotations were dropped (see the "
                            "warning above); there is nothing to train or evaluate on")

    def _resolve_images(self, entries: list, images_dir: str | Path | None, log: ProblemLog) -> list[dict]:
        """Check image entries and find their files; entries whose file is missing are skipped."""
        if not entries:
            raise DataError(f"no images in {self.json_path} ('images' is empty)")
        roots = [Path(images_dir)] if images_dir else [self.json_path.parent, self.json_path.parent / "images"]
        seen: set[int] = set()
        self._skipped_image_ids: set[int] = set()
        images = []
        for k, entry in enumerate(entries):
            record = check_image(self.json_path, k, entry)
            if record.id in seen:
                log.add("ignored {n} image entries whose id repeats an earlier one (their annotations go to the "
                        "first)", example=f"id {record.id}, {record.file_name}")
                continue
            seen.add(record.id)
            path = next((r / record.file_name for r in roots if (r / record.file_name).is_file()), None)
            if path is None:
                log.add("skipped {n} images whose file is missing", example=roots[0] / record.file_name)
                self._skipped_image_ids.add(record.id)
                continue
            width, height = record.width, record.height
            if width is None or height is None:
                width, height = read_image_size(path)
            images.append({"id": record.id, "file_name": record.file_name, "path": str(path),
                           "width": int(width), "height": int(height)})
        if not images:
            where = " or ".join(str(r) for r in roots)
            raise DataError(f"no images in {self.json_path}: none of its {len(entries)} image files exist in "
                            f"{where} (give the image folder with --images DIR)")
        return images

    def __len__(self) -> int:
        return len(self._annotations)

    def annotation(self, i: int) -> ImageAnnotation:
        return self._annotations[self._index(i)]

    def image_path(self, i: int) -> str:
        return self._paths[self._index(i)]

    def annotation_areas(self, i: int) -> np.ndarray | None:
        areas = self._areas[self._index(i)]
        return areas if len(areas) and (areas > 0).all() else None

    def masks(self, i: int) -> np.ndarray:
        i = self._index(i)
        if not self.has_masks:
            return super().masks(i)
        ann = self._annotations[i]
        h, w = ann.height, ann.width
        out = np.zeros((len(ann.boxes), h, w), dtype=np.uint8)
        for k, seg in enumerate(self._segmentations[i]):
            rle = None
            if seg is not None:
                try:
                    rle = segmentation_to_rle(seg, h, w)
                except (ValueError, TypeError) as exc:
                    raise DataError(f"{self.json_path}: bad segmentation in image {ann.image_id} ({exc})") from None
            if rle is None:  # no segmentation: the box is the best mask we have
                x0, y0, x1, y1 = ann.boxes[k]
                out[k, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1
            else:
                decoded = mask_utils.decode(rle)
                if decoded.shape != (h, w):
                    raise DataError(f"{self.json_path}: segmentation of image {ann.image_id} is "
                                    f"{decoded.shape[1]}x{decoded.shape[0]}, image is {w}x{h}")
                out[k] = decoded
        return out

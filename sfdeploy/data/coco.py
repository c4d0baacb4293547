"""COCO-format reader (instances JSON), with pycocotools for polygon/RLE masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .base import DetectionDataset, ImageAnnotation, Transform, read_image_size
from .boxes import sanitize_boxes
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


def _has_segmentation(ann: dict) -> bool:
    seg = ann.get("segmentation")
    return bool(seg) and (isinstance(seg, dict) or any(len(p) >= 6 for p in seg if isinstance(p, list)))


class CocoDataset(DetectionDataset):
    """COCO instances JSON; category ids map to labels 1..C in sorted id order.

    Crowd annotations stay in ``annotation(i)`` (iscrowd=1, used by evaluation) but are excluded
    from training targets. Images with missing files are skipped with a counted warning.
    """

    def __init__(self, json_path: str | Path, *, images_dir: str | Path | None = None,
                 transforms: Transform | None = None, with_masks: bool | None = None) -> None:
        self.json_path = Path(json_path)
        self.source = self.json_path.name
        self.transforms = transforms
        data = _load_json(self.json_path)
        log = ProblemLog(self.source)

        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.category_ids = [int(c["id"]) for c in categories]
        if not categories:
            raise DataError(f"{self.json_path}: no categories")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise DataError(f"{self.json_path}: duplicate category ids")
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        cat_to_label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}

        images = self._resolve_images(data["images"], images_dir, log)
        anns_by_image: dict[int, list[dict]] = {img["id"]: [] for img in images}
        all_image_ids = {img.get("id") for img in data["images"]}
        for ann in data.get("annotations", []):
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if image_id in anns_by_image:
                anns_by_image[image_id].append(ann)
            elif image_id not in all_image_ids:
                log.add("dropped {n} annotations of unknown image ids", example=image_id)

        auto_masks = any(_has_segmentation(a) for anns in anns_by_image.values() for a in anns)
        if with_masks and not auto_masks:
            raise DataError(f"{self.json_path}: masks requested but no annotation has a 'segmentation'")
        self.has_masks = auto_masks if with_masks is None else bool(with_masks)

        self._annotations: list[ImageAnnotation] = []
        self._paths: list[str] = []
        self._segmentations: list[list[Any]] = []
        self._areas: list[np.ndarray] = []
        for img in images:
            anns = anns_by_image[img["id"]]
            valid = []
            for ann in anns:
                bbox = ann.get("bbox")
                if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
                    log.add("dropped {n} annotations without a valid 'bbox'", example=ann.get("id"))
                elif ann.get("category_id") not in cat_to_label:
                    log.add("dropped {n} annotations with unknown category id", example=ann.get("category_id"))
                else:
                    valid.append(ann)
            xywh = np.array([a["bbox"] for a in valid], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            boxes, keep = sanitize_boxes(xyxy, img["width"], img["height"], log)
            kept = [a for a, k in zip(valid, keep) if k]
            self._annotations.append(ImageAnnotation.make(
                img["id"], img["path"], img["width"], img["height"], boxes[keep],
                [cat_to_label[a["category_id"]] for a in kept], [1 if a.get("iscrowd", 0) else 0 for a in kept]))
            self._paths.append(img["path"])
            self._areas.append(np.array([float(a.get("area", 0.0)) for a in kept], dtype=np.float64))
            if self.has_masks:
                missing = [a for a in kept if not _has_segmentation(a)]
                log.add("used the box as mask for {n} annotations without 'segmentation'", len(missing))
                self._segmentations.append([a.get("segmentation") if _has_segmentation(a) else None for a in kept])
        log.report()

    def _resolve_images(self, entries: list, images_dir: str | Path | None, log: ProblemLog) -> list[dict]:
        """Check image entries and find their files; entries whose file is missing are skipped."""
        if not entries:
            raise DataError(f"no images in {self.json_path} ('images' is empty)")
        roots = [Path(images_dir)] if images_dir else [self.json_path.parent, self.json_path.parent / "images"]
        seen: set[int] = set()
        images = []
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
                raise DataError(f"{self.json_path}: image entry {k} needs 'id' and 'file_name'")
            if entry["id"] in seen:
                raise DataError(f"{self.json_path}: duplicate image id {entry['id']}")
            seen.add(entry["id"])
            path = next((r / entry["file_name"] for r in roots if (r / entry["file_name"]).is_file()), None)
            if path is None:
                log.add("skipped {n} images whose file is missing", example=roots[0] / entry["file_name"])
                continue
            width, height = entry.get("width"), entry.get("height")
            if not width or not height:
                width, height = read_image_size(path)
            images.append({"id": int(entry["id"]), "file_name": str(entry["file_name"]), "path": str(path),
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

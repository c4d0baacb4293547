"""YOLO-format reader: an ultralytics-style ``data.yaml`` (``path``, ``train``/``val`` image folders or lists,
``names``) with one ``labels/<image>.txt`` per image holding boxes (``cls cx cy w h``) or, for instance masks,
polygons (``cls x1 y1 x2 y2 ...``), all normalised to [0, 1].

Loading reads image sizes from the file headers only: prior estimation needs sizes and boxes, not pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from .base import DetectionDataset, ImageAnnotation, Transform, read_image_size
from .boxes import sanitize_boxes
from .errors import DataError, ProblemLog

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def is_yolo_yaml(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".yaml", ".yml")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a YOLO data.yaml must hold a mapping (path, train, val, names)")
    return data


def _class_names(path: Path, data: dict[str, Any]) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class indices 0..N-1") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: 'names' keys must be the class indices 0..{len(keys) - 1}, got {keys}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DataError(f"{path}: 'names' must be a non-empty list (or index -> name mapping) of class names")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: nc is {nc} but 'names' has {len(names)} entries")
    return [str(n) for n in names]


def _image_files(yaml_path: Path, root: Path, entry: Any, split: str) -> list[Path]:
    """Images of a split entry: a folder (searched recursively), a .txt list of image paths, or a list of those."""
    entries = entry if isinstance(entry, list) else [entry]
    files: list[Path] = []
    for item in entries:
        if not isinstance(item, str):
            raise DataError(f"{yaml_path}: '{split}' must be a folder, a .txt image list or a list of them")
        p = Path(item).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    files.append(q if q.is_absolute() else (p.parent / q))
        else:
            raise DataError(f"{yaml_path}: '{split}' entry {item!r} is not a folder or a .txt list ({p} not found)")
    return files


def label_path(image: Path) -> Path:
    """ultralytics' convention: the last 'images' folder of the path becomes 'labels', the suffix '.txt'."""
    parts = list(image.parts)
    for k in range(len(parts) - 1, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


class YoloDataset(DetectionDataset):
    """One split of a YOLO data set; class index k -> label k+1."""

    def __init__(self, yaml_path: str | Path, *, split: str = "train", transforms: Transform | None = None,
                 with_masks: bool | None = None) -> None:
        self.yaml_path = Path(yaml_path)
        self.transforms = transforms
        data = _read_yaml(self.yaml_path)
        self.class_names = _class_names(self.yaml_path, data)
        if split not in data or data[split] in (None, ""):
            available = [k for k in ("train", "val", "test") if data.get(k)]
            raise DataError(f"{self.yaml_path}: no '{split}' split (it has {', '.join(available) or 'none'})")
        root = Path(str(data.get("path") or "")).expanduser()
        root = root if root.is_absolute() else self.yaml_path.parent / root
        self.source = f"{self.yaml_path.name} ({split})"
        log = ProblemLog(self.source)
        files = _image_files(self.yaml_path, root, data[split], split)
        if not files:
            raise DataError(f"{self.yaml_path}: the '{split}' split has no images")

        self._annotations: list[ImageAnnotation] = []
        self._polygons: list[list[np.ndarray | None]] = []
        any_polygon = False
        for image_id, image in enumerate(files, start=1):
            if not image.is_file():
                log.add("skipped {n} listed images whose file is missing", example=image)
                continue
            width, height = read_image_size(image)
            rows = self._read_labels(label_path(image), log)
            if not rows:
                log.add("{n} images have no labels (kept as background images)", example=image.name)
            boxes, labels, polygons = [], [], []
            for cls, values, where in rows:
                if not 0 <= cls < len(self.class_names):
                    log.add("dropped {n} rows with a class index outside names", example=where)
                    continue
                if len(values) == 4:
                    cx, cy, w, h = values
                    boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                  (cy + h / 2) * height])
                    polygons.append(None)
                else:
                    xy = np.asarray(values, dtype=np.float64).reshape(-1, 2) * [width, height]
                    boxes.append([*xy.min(axis=0), *xy.max(axis=0)])
                    polygons.append(xy.reshape(-1))
                    any_polygon = True
                labels.append(cls + 1)
            clipped, keep = sanitize_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), width, height, log)
            self._annotations.append(ImageAnnotation.make(image_id, str(image), width, height, clipped[keep],
                                                          np.asarray(labels, dtype=np.int64)[keep]))
            self._polygons.append([p for p, k in zip(polygons, keep) if k])
        if not self._annotations:
            raise DataError(f"{self.yaml_path}: none of the {len(files)} '{split}' images exist")
        if with_masks and not any_polygon:
            raise DataError(f"{self.yaml_path}: masks requested but no label row is a polygon")
        self.has_masks = any_polygon if with_masks is None else bool(with_masks)
        if self.has_masks:
            log.add("used the box as mask for {n} box-only rows",
                    sum(p is None for polys in self._polygons for p in polys))
        log.report()
        if not any(len(a.boxes) for a in self._annotations):
            raise DataError(f"{self.yaml_path}: the '{split}' split has no usable labels; nothing to train or "
                            "evaluate on")

    @staticmethod
    def _read_labels(path: Path, log: ProblemLog) -> list[tuple[int, list[float], str]]:
        """(class index, normalised values, 'file:line') per row; malformed rows are one-line DataErrors."""
        if not path.is_file():
            return []
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path.name}:{n}"
            try:
                cls_value = float(fields[0])
                values = [float(v) for v in fields[1:]]
            except ValueError:
                raise DataError(f"{path}:{n}: expected numbers 'class cx cy w h' or 'class x1 y1 x2 y2 ...', "
                                f"got {line.strip()[:60]!r}") from None
            if not cls_value.is_integer():
                raise DataError(f"{path}:{n}: the class index must be an integer, got {fields[0]}")
            if len(values) != 4 and (len(values) < 6 or len(values) % 2):
                raise DataError(f"{path}:{n}: {len(values)} coordinates; a box has 4 (cx cy w h), a polygon an "
                                "even number >= 6")
            if not all(np.isfinite(values)):
                raise DataError(f"{path}:{n}: non-finite coordinate")
            if any(v < -0.01 or v > 1.01 for v in values):
                log.add("clipped {n} rows with coordinates outside [0, 1] (labels must be normalised)", example=where)
            rows.append((int(cls_value), values, where))
        return rows

    def __len__(self) -> int:
        return len(self._annotations)

    def annotation(self, i: int) -> ImageAnnotation:
        return self._annotations[self._index(i)]

    def image_path(self, i: int) -> str:
        return self._annotations[self._index(i)].file_name

    def masks(self, i: int) -> np.ndarray:
        i = self._index(i)
        if not self.has_masks:
            return super().masks(i)
        ann = self._annotations[i]
        h, w = ann.height, ann.width
        out = np.zeros((len(ann.boxes), h, w), dtype=np.uint8)
        for k, polygon in enumerate(self._polygons[i]):
            if polygon is None:  # a box-only row: the box is the best mask we have
                x0, y0, x1, y1 = ann.boxes[k]
                out[k, int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1
            else:
                rle = mask_utils.merge(mask_utils.frPyObjects([polygon.tolist()], h, w))
                out[k] = mask_utils.decode(rle)
        return out

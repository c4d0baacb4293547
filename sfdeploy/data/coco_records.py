"""Field checks for COCO instances records: a malformed value becomes one DataError line naming the file,
the record and the field, instead of a KeyError/ValueError traceback from deep inside the reader.

Exports from CVAT, Label Studio and Roboflow (and hand-edited JSON) carry string ids, missing sizes and broken
RLE; the reader calls these once per record so every later step can trust the types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str


@dataclass(frozen=True)
class ImageRecord:
    id: int
    file_name: str
    width: int | None  # None: absent in the JSON, read from the image header
    height: int | None


@dataclass(frozen=True)
class AnnotationRecord:
    id: Any
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # xywh, finite
    iscrowd: int
    area: float
    segmentation: Any  # None when absent/empty


def _fail(path: Path, record: str, field: str, problem: str) -> DataError:
    return DataError(f"{path}: {record}: field '{field}' {problem}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _int_field(path: Path, record: str, entry: dict, field: str) -> int:
    if field not in entry:
        raise _fail(path, record, field, "is missing")
    value = entry[field]
    if not _is_int(value):
        raise _fail(path, record, field, f"must be an integer, got {_shown(value)}")
    return int(value)


def _record_name(kind: str, k: int, entry: Any) -> str:
    """'annotations[4] (id 17)': the list position always works, the id helps find it in a tool's export."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{kind}[{k}]" + (f" (id {int(ident)})" if _is_int(ident) else "")


def check_category(path: Path, k: int, entry: Any) -> Category:
    record = _record_name("categories", k, entry)
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {record} must be an object, got {_shown(entry)}")
    cid = _int_field(path, record, entry, "id")
    name = entry.get("name", cid)
    if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name).strip() == "":
        raise _fail(path, record, "name", f"must be a non-empty string, got {_shown(name)}")
    supercategory = entry.get("supercategory", "")
    return Category(cid, str(name), str(supercategory) if isinstance(supercategory, str) else "")


def _size_field(path: Path, record: str, entry: dict, field: str) -> int | None:
    value = entry.get(field)
    if value is None:
        return None
    if not _is_int(value) or value <= 0:
        raise _fail(path, record, field, f"must be a positive integer (pixels), got {_shown(value)}")
    return int(value)


def check_image(path: Path, k: int, entry: Any) -> ImageRecord:
    record = _record_name("images", k, entry)
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {record} must be an object, got {_shown(entry)}")
    image_id = _int_field(path, record, entry, "id")
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise _fail(path, record, "file_name", f"must be a non-empty string, got {_shown(file_name)}")
    return ImageRecord(image_id, file_name, _size_field(path, record, entry, "width"),
                       _size_field(path, record, entry, "height"))


def check_annotation(path: Path, k: int, entry: Any) -> AnnotationRecord:
    # the common, valid record takes the fast path (COCO train has 860k of them); the slow one names the problem
    if type(entry) is dict:
        image_id, category_id = entry.get("image_id"), entry.get("category_id")
        bbox, iscrowd, area = entry.get("bbox"), entry.get("iscrowd", 0), entry.get("area", 0.0)
        if (type(image_id) is int and type(category_id) is int and type(bbox) is list and len(bbox) == 4
                and all(type(v) in (int, float) for v in bbox) and math.isfinite(sum(bbox))
                and (iscrowd == 0 or iscrowd == 1) and type(iscrowd) is int
                and (area is None or type(area) in (int, float) and 0 <= area < math.inf)):
            return AnnotationRecord(entry.get("id"), image_id, category_id,
                                    (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
                                    iscrowd, float(area or 0.0), entry.get("segmentation") or None)
    return _check_annotation_slowly(path, k, entry)


def _check_annotation_slowly(path: Path, k: int, entry: Any) -> AnnotationRecord:
    record = _record_name("annotations", k, entry)
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {record} must be an object, got {_shown(entry)}")
    image_id = _int_field(path, record, entry, "image_id")
    category_id = _int_field(path, record, entry, "category_id")
    bbox = entry.get("bbox")
    if bbox is None:
        raise _fail(path, record, "bbox", "is missing")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise _fail(path, record, "bbox", f"must be 4 finite numbers [x, y, width, height], got {_shown(bbox)}")
    iscrowd = entry.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, float) and not iscrowd.is_integer():
        raise _fail(path, record, "iscrowd", f"must be 0 or 1, got {_shown(iscrowd)}")
    area = entry.get("area", 0.0)
    if area is None:
        area = 0.0
    if not _is_number(area) or area < 0:
        raise _fail(path, record, "area", f"must be a number >= 0, got {_shown(area)}")
    segmentation = entry.get("segmentation") or None
    return AnnotationRecord(entry.get("id"), image_id, category_id, tuple(float(v) for v in bbox),  # type: ignore[arg-type]
                            int(iscrowd), float(area), segmentation)


def check_segmentation(path: Path, record: str, segmentation: Any, height: int, width: int) -> None:
    """Raise a DataError if ``segmentation`` is not a polygon list or an RLE of an ``height`` x ``width`` image.

    Compressed RLE strings are decoded here (cheap next to training) so that a corrupt one fails at load time,
    not inside a DataLoader worker mid-epoch.
    """
    from pycocotools import mask as mask_utils

    def bad(problem: str) -> DataError:
        return _fail(path, record, "segmentation", problem)

    if isinstance(segmentation, list):
        for polygon in segmentation:
            try:  # numpy, not a Python loop per coordinate: COCO train has ~20M of them
                coords = np.asarray(polygon, dtype=np.float64) if isinstance(polygon, list) else None
            except (TypeError, ValueError):
                coords = None
            if coords is None or coords.ndim != 1 or not np.isfinite(coords).all() \
                    or any(isinstance(v, bool) for v in polygon[:1]):
                raise bad(f"polygons must be lists of numbers, got {_shown(polygon)}")
            if len(polygon) % 2:
                raise bad(f"a polygon has an odd number of coordinates ({len(polygon)})")
        return
    if not isinstance(segmentation, dict):
        raise bad(f"must be a polygon list or an RLE object, got {_shown(segmentation)}")
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise bad(f"RLE 'size' must be [height, width], got {_shown(size)}")
    if [int(v) for v in size] != [height, width]:
        raise bad(f"RLE size {list(size)} does not match the image ({height}x{width}, height x width)")
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts):
            raise bad("uncompressed RLE 'counts' must be non-negative integers")
        if sum(int(v) for v in counts) != height * width:
            raise bad(f"RLE counts cover {sum(int(v) for v in counts)} pixels, the image has {height * width}")
        return
    if not isinstance(counts, (str, bytes)):
        raise bad(f"RLE 'counts' must be a list or a string, got {_shown(counts)}")
    try:
        rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        mask_utils.decode(rle)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise bad(f"is a corrupt compressed RLE ({exc})") from None

"""PASCAL VOC reader: Annotations/*.xml, JPEGImages/, ImageSets/Main/{split}.txt.

VOC boxes are 1-based inclusive pixel indices; they become 0-based pixel-edge xyxy as
(xmin - 1, ymin - 1, xmax, ymax). ``difficult`` objects are kept as ordinary boxes (iscrowd=0):
the COCO-style evaluation used by this project has no "difficult" notion, and they are real objects.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DetectionDataset, ImageAnnotation, Transform, read_image_size
from .boxes import sanitize_boxes
from .errors import DataError, ProblemLog

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass
class _VocRecord:
    image_id: str
    filename: str | None
    width: int
    height: int
    names: list[str]
    boxes: np.ndarray  # [N,4] float64 0-based xyxy (NaN rows: unparsable)
    difficult: np.ndarray  # bool [N]


def is_voc_root(path: Path) -> bool:
    return (path / "Annotations").is_dir() and (path / "ImageSets" / "Main").is_dir()


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else None


def _number(node: ET.Element | None, tag: str) -> float:
    try:
        return float(_text(node, tag))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def parse_voc_xml(path: Path) -> _VocRecord:
    """Parse one annotation file; malformed XML becomes a DataError naming it."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from None
    size = root.find("size")
    width, height = _number(size, "width"), _number(size, "height")
    names, boxes, difficult = [], [], []
    for obj in root.iter("object"):
        names.append(_text(obj, "name") or "")
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (_number(bb, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        difficult.append(_text(obj, "difficult") == "1")
    return _VocRecord(path.stem, _text(root, "filename"),
                      int(width) if np.isfinite(width) else 0, int(height) if np.isfinite(height) else 0,
                      names, np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(difficult, dtype=bool))


def read_split_ids(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{split_file}: split file not found (available splits: {', '.join(available) or 'none'})")
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


class VocDataset(DetectionDataset):
    """PASCAL VOC layout. Class names: given, or the sorted object names of all split files of the root,
    so that train and val of one root always agree on the label mapping."""

    def __init__(self, root: str | Path, *, split: str = "train", images_dir: str | Path | None = None,
                 class_names: list[str] | None = None, transforms: Transform | None = None,
                 with_masks: bool | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.source = f"{self.root.name}[{split}]"
        self.transforms = transforms
        if with_masks:
            raise DataError(f"{self.root}: PASCAL VOC detection annotations have no instance masks")
        self.has_masks = False
        if not is_voc_root(self.root):
            raise DataError(f"{self.root}: not a PASCAL VOC root (needs Annotations/ and ImageSets/Main/)")
        image_root = Path(images_dir) if images_dir else self.root / "JPEGImages"
        log = ProblemLog(self.source)

        ids = read_split_ids(self.root, split)
        if not ids:
            raise DataError(f"no images in {self.root / 'ImageSets' / 'Main' / (split + '.txt')} (the file is empty)")
        records = self._parse(ids, log)
        if class_names is None:
            class_names = self._discover_classes(records)
        if not class_names:
            raise DataError(f"{self.root}: no objects in any split, pass class_names")
        self.class_names = list(class_names)
        name_to_label = {n: k + 1 for k, n in enumerate(self.class_names)}

        self._annotations: list[ImageAnnotation] = []
        self._paths: list[str] = []
        for rec in records.values():
            path = self._find_image(image_root, rec)
            if path is None:
                log.add("skipped {n} images whose file is missing", example=image_root / f"{rec.image_id}.jpg")
                continue
            width, height = (rec.width, rec.height) if rec.width > 0 and rec.height > 0 else read_image_size(path)
            known = np.array([n in name_to_label for n in rec.names], dtype=bool)
            log.add("dropped {n} objects of unknown class", int((~known).sum()),
                    example=next((n for n in rec.names if n not in name_to_label), None))
            boxes, keep = sanitize_boxes(rec.boxes[known], width, height, log)
            labels = [name_to_label[n] for n, k in zip(rec.names, known) if k]
            self._annotations.append(ImageAnnotation.make(
                len(self._annotations) + 1, str(path), width, height, boxes[keep], np.asarray(labels)[keep]))
            self._paths.append(str(path))
        if not self._annotations:
            raise DataError(f"no images in {self.root} split {split!r}: none of the {len(ids)} listed image files "
                            f"exist in {image_root} (give the image folder with --images DIR)")
        log.report()

    def _parse(self, ids: list[str], log: ProblemLog) -> dict[str, _VocRecord]:
        records = {}
        for image_id in ids:
            xml = self.root / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                log.add("skipped {n} images without an annotation file", example=xml)
                continue
            records[image_id] = parse_voc_xml(xml)
        return records

    def _discover_classes(self, records: dict[str, _VocRecord]) -> list[str]:
        names = {n for rec in records.values() for n in rec.names if n}
        for split_file in (self.root / "ImageSets" / "Main").glob("*.txt"):
            if "_" in split_file.stem or split_file.stem == self.split:
                continue  # class-specific lists (e.g. dog_train.txt) repeat ids of the plain splits
            for image_id in read_split_ids(self.root, split_file.stem):
                xml = self.root / "Annotations" / f"{image_id}.xml"
                if image_id not in records and xml.is_file():
                    names.update(n for n in parse_voc_xml(xml).names if n)
        return sorted(names)

    @staticmethod
    def _find_image(image_root: Path, rec: _VocRecord) -> Path | None:
        candidates = [image_root / f"{rec.image_id}{ext}" for ext in IMAGE_EXTENSIONS]
        if rec.filename:
            candidates.insert(0, image_root / rec.filename)
        return next((p for p in candidates if p.is_file()), None)

    def __len__(self) -> int:
        return len(self._annotations)

    def annotation(self, i: int) -> ImageAnnotation:
        return self._annotations[self._index(i)]

    def image_path(self, i: int) -> str:
        return self._paths[self._index(i)]

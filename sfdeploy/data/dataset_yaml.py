"""A dataset YAML naming a COCO set's splits, so one file describes the COCO-2017 layout:

    path: /data/coco                     # optional; relative paths below are relative to it (or to this file)
    train: {annotations: annotations/instances_train2017.json, images: train2017}
    val: {annotations: annotations/instances_val2017.json, images: val2017}
    names: ...                           # not needed: classes come from the annotation files

`--data coco.yaml --val-data coco.yaml` then trains on `train` and validates on `val` (`--split`/`--val-split`).
A YAML whose splits are image folders or lists is an ultralytics YOLO data.yaml instead (``yolo.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import DataError


def coco_split(path: Path, split: str) -> tuple[Path, Path | None] | None:
    """(annotation JSON, image folder or None) of ``split`` when ``path`` is a COCO dataset YAML; None when the
    YAML is not one (a YOLO data.yaml)."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None  # let the YOLO reader report it
    if not isinstance(data, dict):
        return None
    entries = {k: v for k, v in data.items() if k in ("train", "val", "test")}
    if not any(isinstance(v, dict) and "annotations" in v for v in entries.values()):
        return None
    entry = data.get(split)
    if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), str):
        available = [k for k, v in entries.items() if isinstance(v, dict)]
        raise DataError(f"{path}: no '{split}' split with an 'annotations' file (it has {', '.join(available)})")
    root = Path(str(data.get("path") or "")).expanduser()
    root = root if root.is_absolute() else path.parent / root
    annotations = Path(entry["annotations"]).expanduser()
    images = entry.get("images")
    if images is not None and not isinstance(images, str):
        raise DataError(f"{path}: '{split}.images' must be a folder path")
    return (annotations if annotations.is_absolute() else root / annotations,
            None if images is None else (Path(images) if Path(images).is_absolute() else root / images))

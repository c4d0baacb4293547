"""Export any DetectionDataset as a COCO ground-truth dict (for pycocotools / faster-coco-eval)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .base import DetectionDataset


def to_coco_gt(dataset: DetectionDataset) -> dict[str, Any]:
    """COCO GT with the data set's own category ids (``dataset.category_ids``; labels 1..C when it has none);
    crowd regions kept (iscrowd=1) so evaluation ignores them.

    Boxes are in original-image pixels (xywh); area is the mask area when masks exist, else the
    data set's own area (COCO) or the box area. Segmentations are compressed RLE with str counts.
    """
    ids = getattr(dataset, "category_ids", None) or list(range(1, len(dataset.class_names) + 1))
    images, annotations = [], []
    for i in range(len(dataset)):
        ann = dataset.annotation(i)
        images.append({"id": ann.image_id, "file_name": ann.file_name, "width": ann.width, "height": ann.height})
        xywh = ann.boxes.astype(np.float64).copy()
        xywh[:, 2:] -= xywh[:, :2]
        areas = dataset.annotation_areas(i)
        rles = None
        if dataset.has_masks and len(ann.boxes):
            masks = dataset.masks(i)
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
            areas = mask_utils.area(rles).astype(np.float64)
        if areas is None:
            areas = xywh[:, 2] * xywh[:, 3]
        for k in range(len(ann.boxes)):
            record = {"id": len(annotations) + 1, "image_id": ann.image_id, "category_id": int(ids[int(ann.labels[k]) - 1]),
                      "bbox": [round(float(v), 3) for v in xywh[k]], "area": float(areas[k]),
                      "iscrowd": int(ann.iscrowd[k])}
            if rles is not None:
                rle = rles[k]
                record["segmentation"] = {"size": [int(s) for s in rle["size"]],
                                          "counts": rle["counts"].decode("ascii")}
            annotations.append(record)
    categories = [{"id": int(ids[k]), "name": name, "supercategory": "object"}
                  for k, name in enumerate(dataset.class_names)]
    return {"info": {"description": f"sfdeploy ground truth of {dataset.source}"}, "images": images,
            "annotations": annotations, "categories": categories}

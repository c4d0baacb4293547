"""DATA spec parsing, collate and COCO ground-truth export (round trip through pycocotools)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sfdeploy.data import (CocoDataset, DataError, SyntheticDataset, VocDataset, build_dataset, collate, to_coco_gt,
                           validate_images)


def load_gt(gt: dict) -> COCO:
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_spec_dispatch(coco_path: Path, voc_root: Path) -> None:
    assert len(build_dataset("synthetic")) == 200
    assert len(build_dataset("synthetic:7", split="val", seed=3)) == 7
    assert isinstance(build_dataset(str(coco_path)), CocoDataset)
    assert isinstance(build_dataset(str(voc_root), split="val"), VocDataset)


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:0", "synthetic:-3", "/no/such/place", "."])
def test_bad_spec_says_what_data_may_be(spec: str) -> None:
    with pytest.raises(DataError) as info:
        build_dataset(spec)
    message = str(info.value)
    assert "\n" not in message and ("DATA may be" in message or "positive integer" in message)


def test_collate_with_dataloader() -> None:
    loader = torch.utils.data.DataLoader(SyntheticDataset(4), batch_size=3, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and len(images) == len(targets) == 3
    assert images[0].shape == (3, 256, 256) and set(targets[0]) >= {"boxes", "labels", "image_id", "masks"}


def test_synthetic_gt_round_trip(tight_box) -> None:
    ds = SyntheticDataset(12, seed=4)
    coco = load_gt(to_coco_gt(ds))
    assert sorted(coco.getImgIds()) == list(range(1, 13))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ds.class_names
    for i in range(len(ds)):
        ann = ds.annotation(i)
        records = coco.loadAnns(coco.getAnnIds(imgIds=ann.image_id))
        assert len(records) == len(ann.boxes)
        masks = ds.masks(i)
        for record, box, label, mask in zip(records, ann.boxes, ann.labels, masks):
            x, y, w, h = record["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], box, atol=1e-3)
            assert record["category_id"] == label and record["area"] == mask.sum()
            np.testing.assert_array_equal(coco.annToMask(record), mask)


def test_gt_as_detections_scores_perfect_ap() -> None:
    """A failure here means boxes, ids or categories are inconsistent between GT and the data set."""
    ds = SyntheticDataset(15, seed=9)
    coco = load_gt(to_coco_gt(ds))
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                  for a in coco.dataset["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_coco_gt_keeps_crowd_and_original_ids(coco_path: Path) -> None:
    ds = CocoDataset(coco_path)
    gt = to_coco_gt(ds)
    coco = load_gt(gt)
    assert sorted(coco.getImgIds()) == [11, 12, 13]
    crowd = coco.loadAnns(coco.getAnnIds(imgIds=12))
    assert [a["iscrowd"] for a in crowd] == [1] and crowd[0]["category_id"] == 7  # the JSON's own id (dog)
    assert coco.annToMask(crowd[0]).sum() == 64
    assert [(c["id"], c["name"]) for c in gt["categories"]] == [(3, "cat"), (7, "dog")]
    boxes_only = to_coco_gt(CocoDataset(coco_path, with_masks=False))
    assert all("segmentation" not in a for a in boxes_only["annotations"])
    assert [a["area"] for a in boxes_only["annotations"]] == [400.0, 300.0, 64.0]  # COCO's own areas


def test_voc_gt_and_validate_images(voc_root: Path) -> None:
    ds = build_dataset(str(voc_root))
    coco = load_gt(to_coco_gt(ds))
    assert len(coco.dataset["annotations"]) == 3 and coco.loadAnns(1)[0]["bbox"] == [0.0, 0.0, 20.0, 30.0]
    assert validate_images(ds) == []
    assert validate_images(SyntheticDataset(3)) == []

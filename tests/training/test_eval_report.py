"""`sfdeploy eval --out DIR`: PR curves, confusion matrix (images) and a markdown AP table next to metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from sfdeploy.training.eval_report import confusion_matrix, pr_curves

GT = {
    "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [60, 0, 40, 40], "area": 1600, "iscrowd": 1},
    ],
}


def test_confusion_matrix_counts_hits_confusions_false_alarms_and_misses() -> None:
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [1, 1, 20, 20], "score": 0.9},  # cat as cat
        {"image_id": 1, "category_id": 3, "bbox": [50, 51, 20, 20], "score": 0.8},  # dog seen as cat
        {"image_id": 2, "category_id": 7, "bbox": [70, 70, 10, 10], "score": 0.7},  # nothing there
        {"image_id": 2, "category_id": 7, "bbox": [10, 10, 30, 30], "score": 0.01},  # below the threshold
    ]
    matrix, names, thresh = confusion_matrix(GT, results, score_thresh=0.5)
    assert names == ["cat", "dog"] and thresh == 0.5
    #                 pred cat, dog, background
    assert matrix.tolist() == [[1, 0, 0],  # true cat
                               [1, 0, 1],  # true dog: one confused, one missed (the crowd cat is ignored)
                               [0, 1, 0]]  # background: one false alarm
    _, _, auto = confusion_matrix(GT, results)  # 3 objects -> keep the 3 best detections
    assert auto == 0.7


def test_pr_curves_are_cocos_at_iou_half() -> None:
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in GT["annotations"] if not a["iscrowd"]]
    curves = pr_curves(GT, perfect)
    assert set(curves) == {"cat", "dog"}
    recall, precision = curves["dog"]
    assert len(recall) == 101 and np.allclose(precision, 1.0)
    recall, precision = pr_curves(GT, perfect[:1])["dog"]  # no dog found: precision 0 at every recall
    assert np.allclose(precision, 0.0)


def test_eval_cli_writes_report_next_to_json(tmp_path: Path, capsys) -> None:
    import sfdeploy.cli as cli
    from sfdeploy.checkpoint import save_checkpoint
    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(detector="retinanet", method="baseline", backbone="resnet18", min_size=64, max_size=64,
                      fpn_channels=32, class_names=["circle", "square", "triangle", "star"], score_thresh=0.0)
    path = save_checkpoint(tmp_path / "m.pt", build_model(cfg), cfg)
    out = tmp_path / "report"
    with mock.patch.object(cli, "STAGE_MODULES", ("sfdeploy.training.cli",)):
        rc = cli.main(["eval", str(path), "--data", "synthetic:3", "--json", "--device", "cpu", "--out", str(out)])
    stdout, _ = capsys.readouterr()
    assert rc == 0
    printed = json.loads(stdout)
    assert {"bbox", "per_class", "images", "files"} <= set(printed)
    for name in ("pr_bbox.png", "confusion_matrix.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    table = (out / "ap.md").read_text()
    assert "| class | AP bbox |" in table and "| circle |" in table
    written = json.loads((out / "metrics.json").read_text())
    assert written["bbox"] == printed["bbox"] and len(written["confusion_matrix"]["matrix"]) == 5
    assert sorted(p.name for p in out.iterdir()) == ["ap.md", "confusion_matrix.png", "metrics.json", "pr_bbox.png"]

"""COCO evaluation: known-case AP against pycocotools, coordinate mapping, masks, tiny real models, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sfdeploy.training.evaluate import METRIC_KEYS, coco_metrics, detections_to_coco, evaluate, format_metrics

BACKENDS = ["faster_coco_eval", "pycocotools"]


def _gt() -> dict:
    """Two images, two classes; box areas 1600 (medium) and 900 (small); no large objects."""
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
        ],
    }


PERFECT = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
    {"image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30], "score": 0.8},
]
# A false positive of class "a" ranked above its true positive: precision 1/2 at recall 1 -> AP_a = 0.5.
FP_FIRST = PERFECT + [{"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.95}]


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_ap_one(backend):
    summary, per_class = coco_metrics(_gt(), PERFECT, backend=backend)
    assert set(summary) == set(METRIC_KEYS)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "AR100"):
        assert summary[key] == pytest.approx(1.0, abs=1e-9), key
    assert summary["APl"] == -1.0  # no large ground truth: COCO's "not applicable"
    assert per_class == pytest.approx({"a": 1.0, "b": 1.0})


@pytest.mark.parametrize("backend", BACKENDS)
def test_false_positive_ranked_first(backend):
    summary, per_class = coco_metrics(_gt(), FP_FIRST, backend=backend)
    assert per_class["a"] == pytest.approx(0.5)
    assert per_class["b"] == pytest.approx(1.0)
    assert summary["AP"] == pytest.approx(0.75)
    assert summary["AP50"] == pytest.approx(0.75)
    assert summary["AR100"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_recall_and_localisation(backend):
    # Class b's box shifted so IoU = 0.6 (TP at 0.50..0.60, FP above): AP_b = 3/10 (IoU thresholds .5,.55,.6).
    shifted = [PERFECT[0], {"image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30 / 0.6], "score": 0.8}]
    summary, per_class = coco_metrics(_gt(), shifted, backend=backend)
    assert per_class["b"] == pytest.approx(0.3)
    assert summary["AP50"] == pytest.approx(1.0)
    assert summary["AP75"] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_detections_is_zero_ap(backend):
    summary, per_class = coco_metrics(_gt(), [], backend=backend)
    assert summary["AP"] == 0.0 and summary["AR100"] == 0.0
    assert per_class == {"a": 0.0, "b": 0.0}


def test_faster_coco_eval_matches_pycocotools_on_random_case():
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 200, "height": 150} for i in range(1, 9)]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.integers(0, 5)):
            w, h = rng.uniform(5, 100, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 150 - h)
            cat = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < 0.8:  # a jittered detection, sometimes with the wrong class
                j = rng.normal(0, 6, 4)
                dets.append({"image_id": img["id"], "category_id": cat if rng.random() < 0.85 else 1 + cat % 3,
                             "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                             "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):  # clutter
            dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": list(rng.uniform(0, 80, 4) + [0, 0, 5, 5]), "score": float(rng.random() * 0.5)})
    gt = {"images": images, "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)], "annotations": anns}
    fast, fast_pc = coco_metrics(gt, dets, backend="faster_coco_eval")
    ref, ref_pc = coco_metrics(gt, dets, backend="pycocotools")
    assert 0.2 < ref["AP"] < 0.95  # a non-trivial case
    assert fast == pytest.approx(ref, abs=1e-6)
    assert fast_pc == pytest.approx(ref_pc, abs=1e-6)


def test_segm_known_case():
    from pycocotools import mask as mask_utils

    m = np.zeros((40, 40), np.uint8)
    m[5:25, 5:15] = 1
    rle = mask_utils.encode(np.asfortranarray(m[:, :, None]))[0]
    seg = {"size": [40, 40], "counts": rle["counts"].decode()}
    gt = {"images": [{"id": 1, "width": 40, "height": 40}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 20], "area": 200.0,
                           "iscrowd": 0, "segmentation": seg}]}
    for backend in BACKENDS:
        summary, _ = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "segmentation": seg, "score": 0.7}],
                                  iou_type="segm", backend=backend)
        assert summary["AP"] == pytest.approx(1.0)


def test_detections_are_mapped_back_to_the_original_size():
    out = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.tensor([0.5]),
           "labels": torch.tensor([3]), "masks": torch.zeros(1, 1, 50, 100)}
    out["masks"][0, 0, 10:20, 5:15] = 0.9
    (rec,) = detections_to_coco(out, 7, input_size=(50, 100), image_size=(100, 200), with_masks=True)
    assert rec["image_id"] == 7 and rec["category_id"] == 3 and rec["score"] == pytest.approx(0.5)
    assert rec["bbox"] == pytest.approx([20.0, 40.0, 40.0, 40.0])
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode({"size": rec["segmentation"]["size"], "counts": rec["segmentation"]["counts"].encode()})
    assert decoded.shape == (100, 200)
    assert decoded[20:40, 10:30].all() and decoded.sum() == pytest.approx(400, abs=40)
    assert detections_to_coco({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)},
                              1, (10, 10), (10, 10)) == []


class _Oracle(nn.Module):
    """Returns the ground truth (in the coordinates of the transformed input) in data set order, plus one
    low-scoring false positive per image; optionally masks, like Mask R-CNN."""

    def __init__(self, dataset, with_masks: bool = False):
        super().__init__()
        self.dataset, self.i = dataset, 0
        self.dummy = nn.Parameter(torch.zeros(1))
        if with_masks:
            self.roi_heads = nn.Module()
            self.roi_heads.has_mask = lambda: True

    def forward(self, images):
        assert not self.training
        outputs = []
        for image in images:
            ann = self.dataset.annotation(self.i)
            h, w = image.shape[-2:]
            scale = torch.tensor([w / ann.width, h / ann.height] * 2)
            boxes = torch.from_numpy(ann.boxes) * scale
            n = len(boxes)
            out = {"boxes": torch.cat([boxes, torch.tensor([[0.0, 0.0, 3.0, 3.0]])]),
                   "scores": torch.cat([torch.full((n,), 0.9), torch.tensor([0.01])]),
                   "labels": torch.cat([torch.from_numpy(ann.labels), torch.tensor([1])])}
            if hasattr(self, "roi_heads"):
                masks = torch.from_numpy(self.dataset.masks(self.i)).float()[:, None]
                masks = torch.nn.functional.interpolate(masks, size=(h, w), mode="nearest") if n else masks.new_zeros(0, 1, h, w)
                out["masks"] = torch.cat([masks, torch.zeros(1, 1, h, w)])
            outputs.append(out)
            self.i += 1
        return outputs


@pytest.mark.parametrize("size", [256, 128])  # 128: the eval transform halves the synthetic 256 px images
def test_evaluate_oracle_is_perfect_at_any_input_size(size):
    from sfdeploy.data import build_dataset, eval_transforms

    ds = build_dataset("synthetic:6", split="val", transforms=eval_transforms(size, size), with_masks=False)
    model = _Oracle(ds).train()
    metrics = evaluate(model, ds, progress=False, batch_size=4)
    assert model.training  # mode restored
    assert metrics["bbox"]["AP"] == pytest.approx(1.0, abs=0.02)
    assert metrics["images"] == 6 and metrics["detections"] == sum(len(ds.annotation(i).boxes) + 1 for i in range(6))
    assert "segm" not in metrics and set(metrics["per_class"]["bbox"]) == set(ds.class_names)


def test_evaluate_oracle_masks_and_max_images():
    from sfdeploy.data import build_dataset, eval_transforms

    ds = build_dataset("synthetic:8", split="val", transforms=eval_transforms(256, 256), with_masks=True)
    metrics = evaluate(_Oracle(ds, with_masks=True), ds, progress=False, max_images=3)
    assert metrics["images"] == 3
    assert metrics["bbox"]["AP"] == pytest.approx(1.0, abs=0.02)
    assert metrics["segm"]["AP"] == pytest.approx(1.0, abs=0.02)
    assert set(metrics["per_class"]) == {"bbox", "segm"}


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_evaluate_tiny_untrained_model_returns_all_keys(detector):
    from sfdeploy.config import ModelConfig
    from sfdeploy.data import build_dataset, eval_transforms
    from sfdeploy.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(detector=detector, method="sampling_free", backbone="resnet18",
                      class_names=["circle", "square", "triangle", "star"], min_size=64, max_size=64,
                      fpn_channels=32)
    ds = build_dataset("synthetic:3", split="val", transforms=eval_transforms(64, 64), with_masks=cfg.has_masks)
    metrics = evaluate(build_model(cfg), ds, progress=False)
    types = ["bbox", "segm"] if cfg.has_masks else ["bbox"]
    for t in types:
        assert set(metrics[t]) == set(METRIC_KEYS)
        assert all(-1.0 <= v <= 1.0 for v in metrics[t].values())
        assert set(metrics["per_class"][t]) == set(cfg.class_names)
    assert ("segm" in metrics) == cfg.has_masks
    assert metrics["images"] == 3 and metrics["seconds"] > 0
    json.dumps(metrics)  # JSON-serialisable
    text = format_metrics(metrics, style="markdown")
    assert "| bbox |" in text and "circle" in text
    assert "bbox" in format_metrics(metrics, style="plain")


def _eval_main(argv: list[str]) -> int:
    """`sfdeploy eval` through its own parser and sfdeploy.cli's error handling (independent of other stages)."""
    import argparse
    import sys

    from sfdeploy.errors import user_error_types as _user_error_types
    from sfdeploy.training.evaluate_cli import register_eval

    parser = argparse.ArgumentParser(prog="sfdeploy")
    register_eval(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except _user_error_types() as exc:
        print(f"sfdeploy eval: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


def test_eval_cli_json_and_table(tmp_path, capsys):
    from sfdeploy.checkpoint import save_checkpoint
    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(detector="retinanet", method="baseline", backbone="resnet18",
                      class_names=["circle", "square", "triangle", "star"], min_size=64, max_size=64,
                      fpn_channels=32)
    path = save_checkpoint(tmp_path / "m.pt", build_model(cfg), cfg, meta={"step": 3})
    rc = _eval_main(["eval", str(path), "--data", "synthetic:4", "--max-images", "2", "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0
    metrics = json.loads(out)
    assert set(metrics["bbox"]) == set(METRIC_KEYS) and metrics["images"] == 2
    assert metrics["checkpoint"]["step"] == 3
    assert "AP50" in err and "circle" in err

    # class count mismatch and a missing checkpoint: one-line user errors, exit 2
    (tmp_path / "c.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "width": 8, "height": 8}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]}))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert _eval_main(["eval", str(path), "--data", str(tmp_path / "c.json")]) == 2
    assert "classes" in capsys.readouterr().err
    assert _eval_main(["eval", str(tmp_path / "missing.pt"), "--data", "synthetic:2"]) == 2
    assert "not found" in capsys.readouterr().err


def test_falls_back_to_pycocotools_without_faster_coco_eval(monkeypatch):
    import sys

    from sfdeploy.training.evaluate import EvaluationError, _resolve_backend

    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import raises ImportError
    assert _resolve_backend("auto") == "pycocotools"
    summary, _ = coco_metrics(_gt(), FP_FIRST)
    assert summary["AP"] == pytest.approx(0.75)
    with pytest.raises(EvaluationError, match="pip install faster-coco-eval"):
        _resolve_backend("faster_coco_eval")
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(EvaluationError, match="needs faster-coco-eval or pycocotools"):
        _resolve_backend("auto")

"""Optimal prior estimation: hand counts, exactness of the pruned matching, transform geometry, cache, CLI."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from sfdeploy.models import build_model
from sfdeploy.sampling_free import prior as prior_mod
from sfdeploy.sampling_free.prior import estimate_priors, padded_size, transformed_size


@dataclass
class Ann:
    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray


class ListDataset:
    """Annotation-only data set from a list of (width, height, boxes, iscrowd)."""

    def __init__(self, images, class_names=("a", "b")):
        self.images = images
        self.class_names = list(class_names)
        self.calls = 0

    def __len__(self) -> int:
        return len(self.images)

    def annotation(self, i: int) -> Ann:
        self.calls += 1
        w, h, boxes, crowd = self.images[i]
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        return Ann(i, f"{i}.png", w, h, b, np.ones(len(b), np.int64),
                   np.asarray(crowd if crowd is not None else [0] * len(b), np.uint8))

    def fingerprint(self) -> str:
        return "list-" + json.dumps([[w, h, np.asarray(b).tolist(), c] for w, h, b, c in self.images])

    def __getitem__(self, i):  # never called: prior estimation must not decode images
        raise AssertionError("estimate_priors must not load images")


def model_anchors(model, size: int) -> tuple[torch.Tensor, list[int]]:
    """Anchors/points the model itself generates for one size x size image (real forward of the backbone)."""
    generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
    with torch.no_grad():
        images, _ = model.transform([torch.zeros(3, size, size)])
        feats = list(model.backbone(images.tensors).values())
        anchors = generator(images, feats)[0]
    return anchors, [f.shape[-2] * f.shape[-1] for f in feats]


def brute_force_iou_counts(gt: torch.Tensor, anchors: torch.Tensor, high: float, low: float) -> tuple[int, int]:
    """fg: IoU >= high or a box's best anchor (low-quality rule); bg: max IoU < low and not fg."""
    fg = bg = 0
    iou = box_iou(gt, anchors)
    best_per_box = iou.max(dim=1).values.tolist()
    for a in range(anchors.shape[0]):
        col = iou[:, a].tolist()
        is_best = any(v == best for v, best in zip(col, best_per_box))
        if max(col) >= high or is_best:
            fg += 1
        elif max(col) < low:
            bg += 1
    return fg, bg


@pytest.mark.parametrize("detector,head,high,low", [("retinanet", "cls", 0.5, 0.4), ("faster_rcnn", "rpn", 0.7, 0.3)])
def test_hand_count_iou_matchers(tiny_cfg, tmp_path, detector, head, high, low) -> None:
    cfg = tiny_cfg(detector)
    model = build_model(cfg, load_backbone_weights=False)
    anchors, _ = model_anchors(model, 64)
    gt = anchors[7:8].clone()  # a box exactly equal to one anchor (inside the image or not: boxes are not clipped)
    gt = torch.tensor([[4.0, 6.0, 36.0, 30.0]]) if detector == "retinanet" else gt
    fg, bg = brute_force_iou_counts(gt, anchors, high, low)
    assert fg >= 1 and bg > 0
    data = ListDataset([(64, 64, gt.numpy(), None)])
    res = estimate_priors(cfg, data, cache_dir=tmp_path, progress=False)
    assert (res.fg[head], res.bg[head]) == (fg, bg)
    classes = 1 if head == "rpn" else cfg.num_classes
    assert res.pi[head] == pytest.approx(fg / (fg + bg) / classes)
    assert res.images == 1 and not res.cached


def test_hand_count_anchor_equal_box(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("retinanet")
    model = build_model(cfg, load_backbone_weights=False)
    anchors, _ = model_anchors(model, 64)
    inside = ((anchors[:, :2] >= 0) & (anchors[:, 2:] <= 64)).all(dim=1).nonzero()[:, 0]
    gt = anchors[inside[0]:inside[0] + 1]
    res = estimate_priors(cfg, ListDataset([(64, 64, gt.numpy(), None)]), cache_dir=tmp_path, progress=False)
    assert (res.fg["cls"], res.bg["cls"]) == brute_force_iou_counts(gt, anchors, 0.5, 0.4)


def test_hand_count_fcos(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("fcos")
    model = build_model(cfg, load_backbone_weights=False)
    points, per_level = model_anchors(model, 64)
    gt = torch.tensor([[10.0, 12.0, 50.0, 44.0]])
    radius = model.center_sampling_radius
    # brute force: centre sampling (radius x stride), inside the box, max regression distance in the level's range
    level_of = np.repeat(np.arange(len(per_level)), per_level)
    fg = 0
    x0, y0, x1, y1 = gt[0].tolist()
    for (ax0, ay0, ax1, ay1), lvl in zip(points.tolist(), level_of):
        cx, cy, stride = (ax0 + ax1) / 2, (ay0 + ay1) / 2, ax1 - ax0
        near = abs(cx - (x0 + x1) / 2) < radius * stride and abs(cy - (y0 + y1) / 2) < radius * stride
        d = [cx - x0, cy - y0, x1 - cx, y1 - cy]
        lower = 0 if lvl == 0 else 4 * stride
        upper = float("inf") if lvl == len(per_level) - 1 else 8 * stride
        fg += near and min(d) > 0 and lower < max(d) < upper
    assert fg > 0
    res = estimate_priors(cfg, ListDataset([(64, 64, gt.numpy(), None)]), cache_dir=tmp_path, progress=False)
    assert (res.fg["cls"], res.bg["cls"]) == (fg, points.shape[0] - fg)
    assert res.pi["cls"] == pytest.approx(fg / points.shape[0] / 2)


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "mask_rcnn"])
def test_empty_image_all_background_and_crowd_ignored(tiny_cfg, tmp_path, detector) -> None:
    cfg = tiny_cfg(detector)
    anchors, _ = model_anchors(build_model(cfg, load_backbone_weights=False), 64)
    head = cfg.prior_heads[0]
    with pytest.warns(RuntimeWarning):  # no foreground at all: pi = 0 is reported with a warning
        res = estimate_priors(cfg, ListDataset([(64, 64, [], None)]), cache_dir=tmp_path, progress=False)
    assert (res.fg[head], res.bg[head]) == (0, anchors.shape[0]) and res.pi[head] == 0.0
    with pytest.warns(RuntimeWarning):  # a crowd box is not ground truth
        crowd = estimate_priors(cfg, ListDataset([(64, 64, [[4, 4, 40, 40]], [1])]), cache_dir=tmp_path,
                                progress=False)
    assert (crowd.fg[head], crowd.bg[head]) == (0, anchors.shape[0])


def test_cache_roundtrip(tiny_cfg, tmp_path, monkeypatch) -> None:
    cfg = tiny_cfg("retinanet")
    data = ListDataset([(64, 48, [[4, 4, 30, 40]], None), (80, 64, [[10, 10, 60, 50], [0, 0, 8, 8]], None)])
    first = estimate_priors(cfg, data, cache_dir=tmp_path, progress=False)
    assert not first.cached and len(list(tmp_path.glob("*.json"))) == 1
    calls = data.calls
    second = estimate_priors(cfg, data, cache_dir=tmp_path, progress=False)
    assert second.cached and data.calls - calls <= len(data)  # at most the fingerprint pass, no counting
    assert (second.pi, second.fg, second.bg, second.images) == (first.pi, first.fg, first.bg, first.images)
    assert second.to_dict().keys() == {"pi", "fg", "bg", "images", "seconds", "cached"}
    # another anchor configuration or input size is another entry
    other = estimate_priors(cfg.replace(anchor_base_size=16), data, cache_dir=tmp_path, progress=False)
    assert not other.cached and other.fg != first.fg
    # use_cache=False neither reads nor writes; SFDEPLOY_CACHE_DIR moves the default location
    assert not estimate_priors(cfg, data, cache_dir=tmp_path, progress=False, use_cache=False).cached
    monkeypatch.setenv("SFDEPLOY_CACHE_DIR", str(tmp_path / "root"))
    estimate_priors(cfg, data, progress=False)
    assert len(list((tmp_path / "root" / "priors").glob("*.json"))) == 1


@pytest.mark.parametrize("hw", [(480, 640), (427, 640), (640, 359), (100, 333), (64, 64), (1000, 17)])
@pytest.mark.parametrize("sizes", [(320, 640), (64, 64), (800, 1333)])
def test_transformed_size_matches_torchvision(tiny_cfg, hw, sizes) -> None:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    t = GeneralizedRCNNTransform(sizes[0], sizes[1], [0.0] * 3, [1.0] * 3).eval()
    images, _ = t([torch.zeros(3, *hw)])
    new = transformed_size(*hw, *sizes)
    assert tuple(images.image_sizes[0]) == new
    assert tuple(images.tensors.shape[-2:]) == padded_size(*new)


@pytest.mark.parametrize("detector", ["retinanet", "faster_rcnn"])
def test_pruned_matching_equals_dense_matcher(tiny_cfg, detector) -> None:
    """The candidate pruning must give exactly the counts of matcher(box_iou(gt, all anchors))."""
    cfg = tiny_cfg(detector, min_size=96, max_size=160)
    counter = prior_mod._Counter(cfg, build_model(cfg, load_backbone_weights=False))
    rng = np.random.default_rng(0)
    for it in range(60):
        h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        g = int(rng.integers(1, 10))
        x0, y0 = rng.uniform(-5, w, g), rng.uniform(-5, h, g)
        bw = np.exp(rng.uniform(np.log(0.5), np.log(w), g))
        bh = np.exp(rng.uniform(np.log(0.5), np.log(h), g))
        boxes = np.stack([x0, y0, np.minimum(x0 + bw, w), np.minimum(y0 + bh, h)], 1).astype(np.float32)
        if it % 15 == 0:
            boxes[0, 2] = boxes[0, 0]  # degenerate box: the low-quality rule then matches every anchor
        assert counter.count(h, w, boxes) == counter.count_dense(h, w, boxes), (h, w, boxes)


def test_anchor_layout_matches_model_anchors(tiny_cfg) -> None:
    for detector in ("retinanet", "fcos", "mask_rcnn"):
        cfg = tiny_cfg(detector, min_size=96, max_size=160)
        model = build_model(cfg, load_backbone_weights=False)
        counter = prior_mod._Counter(cfg, model)
        for hw in [(96, 160), (64, 32)]:
            generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
            with torch.no_grad():
                feats = list(model.backbone(torch.zeros(1, 3, *hw)).values())
                real = generator(ImageList(torch.zeros(1, 3, *hw), [hw]), feats)[0]
            torch.testing.assert_close(counter.layout(*hw).anchors, real, rtol=0, atol=0)


def test_prior_cli(tmp_path, monkeypatch, capsys) -> None:
    from sfdeploy.sampling_free import prior_cli

    monkeypatch.setenv("SFDEPLOY_CACHE_DIR", str(tmp_path))
    parser = argparse.ArgumentParser()
    prior_cli.register(parser.add_subparsers())
    argv = ["prior", "--model", "faster_rcnn", "--data", "synthetic:6", "--image-size", "64", "--json"]
    args = parser.parse_args(argv)
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"pi", "fg", "bg", "images", "seconds", "cached"}
    assert out["images"] == 6 and set(out["pi"]) == {"rpn"} and 0 < out["pi"]["rpn"] < 1 and not out["cached"]
    args = parser.parse_args(argv)
    args.handler(args)
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["cached"] and again["pi"] == out["pi"]
    assert "prior[rpn]" in captured.err
    args = parser.parse_args(argv + ["--no-cache"])
    args.handler(args)
    assert not json.loads(capsys.readouterr().out)["cached"]


def test_prior_cli_module_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, sfdeploy.sampling_free.prior_cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

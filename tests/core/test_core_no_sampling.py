"""Sampling-Free trains on every labelled anchor/proposal; the baseline on the sampler's 256 / 512 per image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from sfdeploy.models import build_model


def _spy(monkeypatch) -> dict[str, list[int]]:
    """Record the number of samples every BCE / CE call sees (torchvision and sfdeploy call them through F)."""
    seen: dict[str, list[int]] = {"bce": [], "ce": []}
    bce, ce = F.binary_cross_entropy_with_logits, F.cross_entropy

    def spy_bce(input, target, *a, **k):  # noqa: A002
        seen["bce"].append(input.shape[0])
        return bce(input, target, *a, **k)

    def spy_ce(input, target, *a, **k):  # noqa: A002
        seen["ce"].append(input.shape[0])
        return ce(input, target, *a, **k)

    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", spy_bce)
    monkeypatch.setattr(F, "cross_entropy", spy_ce)
    return seen


def _labelled_rpn_anchors(model, image: torch.Tensor, boxes: torch.Tensor) -> tuple[int, int]:
    """Independent count of RPN anchors with a label: fg (IoU >= 0.7 or a box's best), bg (max IoU < 0.3)."""
    with torch.no_grad():
        images, targets = model.transform([image], [{"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}])
        feats = list(model.backbone(images.tensors).values())
        anchors = model.rpn.anchor_generator(images, feats)[0]
    iou = box_iou(targets[0]["boxes"], anchors)
    best_per_anchor = iou.max(dim=0).values
    best_per_box = iou.max(dim=1, keepdim=True).values
    fg = (best_per_anchor >= 0.7) | (iou == best_per_box).any(dim=0)
    bg = (best_per_anchor < 0.3) & ~fg
    return int(fg.sum()), int(bg.sum())


def test_rpn_and_roi_use_every_labelled_sample(tiny_cfg, tiny_batch, monkeypatch) -> None:
    images, targets = tiny_batch(n=1, size=128)
    torch.manual_seed(0)
    model = build_model(tiny_cfg("faster_rcnn", "sampling_free", min_size=128, max_size=128),
                        load_backbone_weights=False).train()
    fg, bg = _labelled_rpn_anchors(model, images[0], targets[0]["boxes"])
    proposals: list[int] = []
    model.roi_heads.register_forward_pre_hook(lambda mod, args: proposals.append(sum(len(p) for p in args[1])))
    seen = _spy(monkeypatch)
    model(images, targets)
    assert seen["bce"] == [fg + bg]  # the RPN objectness loss sees every labelled anchor
    assert fg + bg > 256
    # RoI: every proposal plus the ground-truth boxes (fg >= 0.5, bg < 0.5: all labelled)
    assert seen["ce"] == [proposals[0] + len(targets[0]["boxes"])]
    assert seen["ce"][0] > 0


def test_baseline_uses_the_samplers(tiny_cfg, tiny_batch, monkeypatch) -> None:
    images, targets = tiny_batch(n=2, size=128)
    torch.manual_seed(0)
    model = build_model(tiny_cfg("faster_rcnn", "baseline", min_size=128, max_size=128),
                        load_backbone_weights=False).train()
    proposals: list[int] = []
    model.roi_heads.register_forward_pre_hook(lambda mod, args: proposals.append(sum(len(p) for p in args[1])))
    seen = _spy(monkeypatch)
    model(images, targets)
    assert seen["bce"] == [2 * 256]  # 256 anchors per image (plenty of negatives at 128 px)
    assert len(seen["ce"]) == 1
    assert seen["ce"][0] == min(2 * 512, proposals[0] + 4)  # <= 512 per image
    assert seen["ce"][0] < proposals[0] + 4 or proposals[0] + 4 <= 1024


@pytest.mark.parametrize("method", ["sampling_free", "ce"])
def test_unsampled_subsample_keeps_all_labelled(tiny_cfg, method: str) -> None:
    model = build_model(tiny_cfg("faster_rcnn", method), load_backbone_weights=False)
    labels = [torch.tensor([0, 1, 0, 0, -1, 2] + [0] * 2000)]
    kept = model.roi_heads.subsample(labels)[0]
    assert len(kept) == len(labels[0]) - 1 and 4 not in kept.tolist()


# ---------------------------------------------------------------------------------------------- cost knobs
def test_rpn_training_proposals_knob_reaches_the_rpn(tiny_cfg, tiny_batch) -> None:
    images, targets = tiny_batch(n=1, size=128)
    torch.manual_seed(0)
    model = build_model(tiny_cfg("faster_rcnn", "sampling_free", min_size=128, max_size=128,
                                 rpn_post_nms_top_n_train=50), load_backbone_weights=False).train()
    assert model.rpn.post_nms_top_n() == 50
    proposals: list[int] = []
    model.roi_heads.register_forward_pre_hook(lambda mod, args: proposals.append(sum(len(p) for p in args[1])))
    model(images, targets)
    assert 0 < proposals[0] <= 50
    assert model.eval().rpn.post_nms_top_n() == 1000  # inference keeps the paper's 1000


def test_mask_positive_cap_draws_a_random_subset_of_positives(tiny_cfg) -> None:
    capped = build_model(tiny_cfg("mask_rcnn", "sampling_free", mask_positives_per_image=3), load_backbone_weights=False)
    every = build_model(tiny_cfg("mask_rcnn", "sampling_free"), load_backbone_weights=False)
    labels = torch.tensor([0, 2, 1, -1, 0, 1, 2, 2, 0, 1])
    positive = set(torch.where(labels > 0)[0].tolist())
    assert set(every.roi_heads._mask_positives(labels).tolist()) == positive
    torch.manual_seed(0)
    draws = [capped.roi_heads._mask_positives(labels).tolist() for _ in range(20)]
    for draw in draws:
        assert len(draw) == len(set(draw)) == 3 and set(draw) <= positive
    assert len({tuple(sorted(d)) for d in draws}) > 1  # random, not the first three
    assert capped.roi_heads._mask_positives(torch.tensor([0, 1, 0])).tolist() == [1]  # fewer than the cap: all


def test_mask_positive_cap_limits_the_mask_head_input(tiny_cfg, tiny_batch) -> None:
    images, targets = tiny_batch(n=2, size=128, masks=True)
    torch.manual_seed(0)
    # cap 1: the two ground-truth boxes per image are always positive proposals, so without the cap >= 2 would pass
    model = build_model(tiny_cfg("mask_rcnn", "sampling_free", min_size=128, max_size=128, mask_positives_per_image=1),
                        load_backbone_weights=False).train()
    seen: list[list[int]] = []
    model.roi_heads.mask_roi_pool.register_forward_hook(lambda m, args, out: seen.append([len(p) for p in args[1]]))
    losses = model(images, targets)
    assert seen[0] == [1, 1]
    losses["loss_mask"].backward()
    assert torch.isfinite(losses["loss_mask"])


@pytest.mark.parametrize("overrides, message", [
    ({"detector": "faster_rcnn", "mask_positives_per_image": 128}, "applies to mask_rcnn"),
    ({"detector": "mask_rcnn", "method": "baseline", "mask_positives_per_image": 128}, "baseline's sampler"),
    ({"detector": "mask_rcnn", "mask_positives_per_image": 0}, ">= 1"),
    ({"detector": "faster_rcnn", "rpn_post_nms_top_n_train": 0}, ">= 1"),
])
def test_cost_knobs_reject_bad_values(tiny_cfg, overrides: dict, message: str) -> None:
    from sfdeploy.config import ConfigError

    fields = dict(overrides)  # the parametrized dict is shared: do not mutate it
    detector = fields.pop("detector")
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(detector, **fields)

"""torchvision detector parts with the paper's losses, chosen by explicit constructor arguments.

- `focal=True`           : the baseline's sigmoid focal loss (alpha 0.25, gamma 2); otherwise plain BCE over all
                           anchors/points (`ce`, `sampling_free`).
- `guided=True`          : guided loss scaling, one guide per head. One-stage heads: `guided_form="paper"` (eq. 24,
                           per-step g and a learnable delta) or `"frozen"` (the authors' 2021 release: g frozen after
                           `freeze_after` steps, learnable sigma on every term). RPN / RoI box head: the authors'
                           plain per-step guide, no delta (`learn_delta=True` restores the old ablation).
- Unsampled RPN/RoI heads: every labelled anchor/proposal is trained, no fg:bg sampler.

Inference paths are torchvision's own (only training losses change), so export sees stock torchvision graphs.
Localisation losses follow the authors' normalisations (sampling-free.md sec. 3) because g = L_loc / L_cls
depends on them.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .losses import FrozenGuidedLoss, GuidedLossScaling, init_prior_bias

RETINANET_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
RETINANET_SMOOTH_L1_BETA = 0.11


def _classification_loss(logits: Tensor, targets: Tensor, focal: bool) -> Tensor:
    """Summed sigmoid loss: focal (baseline) or plain binary cross-entropy (ce / sampling_free)."""
    if focal:
        return sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum")
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def _one_hot_targets(logits: Tensor, labels: Tensor, foreground: Tensor) -> Tensor:
    """Sigmoid targets [..., C] from 1-based labels (0 = background) on the foreground positions."""
    target = torch.zeros_like(logits)
    target[foreground, labels[foreground] - 1] = 1.0
    return target


def _gather_per_anchor(targets: list[dict[str, Tensor]], matched_idxs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Matched gt labels [N, A] and boxes [N, A, 4] per anchor (garbage where unmatched; mask with matched >= 0)."""
    labels, boxes = [], []
    for t, m in zip(targets, matched_idxs):
        if t["labels"].numel() == 0:
            labels.append(m.new_zeros(m.shape))
            boxes.append(torch.zeros((m.numel(), 4), dtype=torch.float32, device=m.device))
        else:
            labels.append(t["labels"][m.clamp(min=0)])
            boxes.append(t["boxes"][m.clamp(min=0)])
    return torch.stack(labels), torch.stack(boxes)


def _guided_losses(guide: GuidedLossScaling | None, loss_cls: Tensor, loss_guide: Tensor) -> tuple[Tensor, Tensor | None]:
    if guide is None:
        return loss_cls, None
    return guide(loss_cls, loss_guide)


def one_stage_guide(guided: bool, form: str, names: tuple[str, ...], freeze_after: int) -> nn.Module | None:
    """The guide of a RetinaNet/FCOS head: None, the paper's eq. 24 or the authors' 2021 frozen form."""
    if not guided:
        return None
    if form == "paper":
        return GuidedLossScaling(ratio=1.0, learn_delta=True)
    if form == "frozen":
        return FrozenGuidedLoss(names, freeze_after=freeze_after)
    raise ValueError(f"unknown guided form {form!r}: use 'paper' or 'frozen'")


def apply_one_stage_guide(guide: nn.Module | None, losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """Guide `losses` ({"classification": .., localisation terms..}); the guide of eq. 24 uses their mean."""
    if guide is None:
        return losses
    if isinstance(guide, FrozenGuidedLoss):
        weighted, log_sigma = guide(losses)
        return {**weighted, "guide_sigma": log_sigma}
    locs = [v for k, v in losses.items() if k != "classification"]
    scaled, delta_term = guide(losses["classification"], sum(locs) / len(locs))
    out = {**losses, "classification": scaled}
    if delta_term is not None:
        out["guide_delta"] = delta_term
    return out


class _OneBasedLabels:
    """torchvision's one-stage postprocess emits 0-based class indices; our labels are 1..C (0 = background)."""

    def postprocess_detections(self, head_outputs, anchors, image_shapes):  # type: ignore[no-untyped-def]
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)  # type: ignore[misc]
        for det in detections:
            det["labels"] = det["labels"] + 1
        return detections


# ---------------------------------------------------------------------------------------------- RetinaNet
class SFRetinaNetHead(RetinaNetHead):
    """RetinaNet head with the authors' box loss (smooth-L1, beta 0.11, weights 10,10,5,5, / 4 N_pos)."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, *, focal: bool, guided: bool,
                 prior: float, guided_form: str = "paper", freeze_after: int = 100) -> None:
        # GroupNorm in the 4-conv towers (torchvision's RetinaNet v2): with std-0.01 convs and no norm the signal
        # shrinks ~4x per layer and short CPU schedules barely move the head. 32 groups, but at least 2 channels
        # per group so that a 1x1 P7 map (small inputs) still has more than one value per group.
        groups = min(32, in_channels // 2)
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=partial(nn.GroupNorm, groups))
        init_prior_bias(self.classification_head.cls_logits, prior)
        self.box_coder = det_utils.BoxCoder(weights=RETINANET_BOX_WEIGHTS)
        self.regression_head.box_coder = self.box_coder
        self.focal = focal
        self.guide = one_stage_guide(guided, guided_form, ("classification", "bbox_regression"), freeze_after)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):  # type: ignore[override]
        cls_logits: Tensor = head_outputs["cls_logits"]  # [N, A, C]
        box_regression: Tensor = head_outputs["bbox_regression"]  # [N, A, 4]
        matched = torch.stack(matched_idxs)
        foreground = matched >= 0
        valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS  # "between thresholds" anchors are ignored
        num_fg = foreground.sum().clamp(min=1)
        gt_labels, gt_boxes = _gather_per_anchor(targets, matched_idxs)

        cls_target = _one_hot_targets(cls_logits, gt_labels, foreground)
        loss_cls = _classification_loss(cls_logits[valid], cls_target[valid], self.focal) / num_fg

        anchors_fg = torch.stack(anchors)[foreground]
        reg_target = self.box_coder.encode_single(gt_boxes[foreground], anchors_fg)
        loss_box = F.smooth_l1_loss(
            box_regression[foreground], reg_target, beta=RETINANET_SMOOTH_L1_BETA, reduction="sum"
        ) / (4 * num_fg)

        return apply_one_stage_guide(self.guide, {"classification": loss_cls, "bbox_regression": loss_box})


class SFRetinaNet(_OneBasedLabels, RetinaNet):
    """torchvision RetinaNet whose labels are 1..C; the loss lives in `SFRetinaNetHead`."""


# ---------------------------------------------------------------------------------------------- FCOS
def fcos_match(anchors: Tensor, gt_boxes: Tensor, num_anchors_per_level: list[int], center_radius: float) -> Tensor:
    """torchvision FCOS's point assignment (center sampling, scale ranges, smallest box wins); -1 = background.

    A function of its own so that prior estimation counts exactly the positives the loss trains on.
    """
    if gt_boxes.numel() == 0:
        return torch.full((anchors.size(0),), -1, dtype=torch.int64, device=anchors.device)
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    anchor_centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    anchor_sizes = anchors[:, 2] - anchors[:, 0]
    match = (anchor_centers[:, None, :] - gt_centers[None, :, :]).abs_().max(dim=2).values < (
        center_radius * anchor_sizes[:, None]
    )
    x, y = anchor_centers.unsqueeze(dim=2).unbind(dim=1)
    x0, y0, x1, y1 = gt_boxes.unsqueeze(dim=0).unbind(dim=2)
    dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)
    match &= dist.min(dim=2).values > 0
    lower = anchor_sizes * 4
    lower[: num_anchors_per_level[0]] = 0
    upper = anchor_sizes * 8
    upper[-num_anchors_per_level[-1]:] = float("inf")
    dist_max = dist.max(dim=2).values
    match &= (dist_max > lower[:, None]) & (dist_max < upper[:, None])
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    score = match.to(torch.float32) * (1e8 - areas[None, :])
    best, idx = score.max(dim=1)
    idx[best < 1e-5] = -1
    return idx


class SFFCOSHead(FCOSHead):
    """FCOS head: focal or BCE classification; Sampling-Free guide = mean of the GIoU and centerness losses."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, *, focal: bool, guided: bool,
                 prior: float, guided_form: str = "paper", freeze_after: int = 100) -> None:
        super().__init__(in_channels, num_anchors, num_classes)
        init_prior_bias(self.classification_head.cls_logits, prior)
        self.focal = focal
        self.guide = one_stage_guide(guided, guided_form, ("classification", "bbox_regression", "bbox_ctrness"),
                                     freeze_after)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):  # type: ignore[override]
        cls_logits: Tensor = head_outputs["cls_logits"]  # [N, A, C]
        box_regression: Tensor = head_outputs["bbox_regression"]
        ctrness: Tensor = head_outputs["bbox_ctrness"].squeeze(dim=2)
        matched = torch.stack(matched_idxs)
        foreground = matched >= 0
        num_fg = foreground.sum().clamp(min=1)
        gt_labels, gt_boxes = _gather_per_anchor(targets, matched_idxs)
        anchors_t = torch.stack(anchors)

        cls_target = _one_hot_targets(cls_logits, gt_labels, foreground)
        loss_cls = _classification_loss(cls_logits, cls_target, self.focal) / num_fg

        pred_boxes = self.box_coder.decode(box_regression, anchors_t)
        loss_reg = generalized_box_iou_loss(pred_boxes[foreground], gt_boxes[foreground], reduction="sum") / num_fg

        reg_targets = self.box_coder.encode(anchors_t[foreground], gt_boxes[foreground])
        left_right, top_bottom = reg_targets[:, [0, 2]], reg_targets[:, [1, 3]]
        ctr_target = torch.sqrt(
            (left_right.min(dim=-1).values / left_right.max(dim=-1).values)
            * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
        )
        loss_ctr = F.binary_cross_entropy_with_logits(ctrness[foreground], ctr_target, reduction="sum") / num_fg

        # The paper's guide is the mean of the regression and centerness losses (sampling-free.md sec. 3).
        return apply_one_stage_guide(
            self.guide, {"classification": loss_cls, "bbox_regression": loss_reg, "bbox_ctrness": loss_ctr})


class SFFCOS(_OneBasedLabels, FCOS):
    """torchvision FCOS with labels 1..C and its point assignment factored out into `fcos_match`."""

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):  # type: ignore[override]
        matched = [
            fcos_match(a, t["boxes"], num_anchors_per_level, self.center_sampling_radius)
            for a, t in zip(anchors, targets)
        ]
        return self.head.compute_loss(targets, head_outputs, anchors, matched)


# ---------------------------------------------------------------------------------------------- R-CNN
def straddling_anchors(anchors: Tensor, image_size: tuple[int, int], thresh: float) -> Tensor:
    """Anchors reaching more than `thresh` px outside the (resized, unpadded) image: maskrcnn-benchmark's
    `straddle_thresh` visibility rule, under which the RPN loss ignores them (label -1). image_size is (h, w)."""
    h, w = image_size
    return (anchors[:, 0] < -thresh) | (anchors[:, 1] < -thresh) | (anchors[:, 2] >= w + thresh) | (
        anchors[:, 3] >= h + thresh)


class StraddleAwareRPN(RegionProposalNetwork):
    """torchvision's RPN (biased 256 @ 1:1 sampler) that can ignore border-crossing anchors in its loss.

    `straddle_thresh=None` is torchvision's behaviour (every anchor is labelled); 0 is the authors' protocol
    (maskrcnn-benchmark's default), applied identically to every method of a comparison.
    """

    def __init__(self, *args, straddle_thresh: float | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.straddle_thresh = straddle_thresh
        self._image_sizes: list[tuple[int, int]] = []

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None):  # type: ignore[override]
        self._image_sizes = list(images.image_sizes)
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(self, anchors, targets):  # type: ignore[override]
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        if self.straddle_thresh is not None:
            for lab, anc, size in zip(labels, anchors, self._image_sizes):
                lab[straddling_anchors(anc, size, self.straddle_thresh)] = -1.0
        return labels, matched_gt_boxes


class UnsampledRPN(StraddleAwareRPN):
    """RPN trained on every labelled anchor (no 256 @ 1:1 sampler).

    Objectness: BCE averaged over labelled anchors; box: 0.5 x smooth-L1 (beta 1/9) over 4 x N_pos elements, so
    the box loss is not divided by ~10^5 anchors when the sampler goes (sampling-free.md sec. 4). The guide is the
    authors' plain per-step L_loc / L_obj with no learnable delta; `learn_delta=True` is the old ablation.
    """

    def __init__(self, *args, guided: bool, learn_delta: bool = False, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.guide = GuidedLossScaling(ratio=1.0, learn_delta=learn_delta) if guided else None

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None):  # type: ignore[override]
        if not self.training:
            return super().forward(images, features, targets)
        if targets is None:
            raise ValueError("targets should not be None in training")
        self._image_sizes = list(images.image_sizes)
        feature_list = list(features.values())
        objectness, pred_bbox_deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

        labels_list, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
        regression_targets = torch.cat(self.box_coder.encode(matched_gt_boxes, anchors), dim=0)
        labels = torch.cat(labels_list, dim=0)
        objectness = objectness.flatten()
        labelled = labels >= 0
        positive = labels > 0
        num_pos = positive.sum().clamp(min=1)
        loss_obj = F.binary_cross_entropy_with_logits(objectness[labelled], labels[labelled])
        loss_box = 0.5 * F.smooth_l1_loss(
            pred_bbox_deltas[positive], regression_targets[positive], beta=1 / 9, reduction="sum"
        ) / (4 * num_pos)

        loss_obj, delta_term = _guided_losses(self.guide, loss_obj, loss_box)
        losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}
        if delta_term is not None:
            losses["loss_rpn_delta"] = delta_term
        return boxes, losses


class UnsampledRoIHeads(RoIHeads):
    """RoI heads trained on every labelled proposal (no 512 @ 1:3 sampler); softmax CE x 2 guide, no delta (authors').

    `mask_positives_per_image` (default None: every positive, the paper) caps the mask head's input to a uniform
    random subset of the positives: an unbiased estimate of the same mean per-pixel loss at the baseline's cost.
    """

    def __init__(self, *args, guided: bool, learn_delta: bool = False,  # type: ignore[no-untyped-def]
                 mask_positives_per_image: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.guide = GuidedLossScaling(ratio=2.0, learn_delta=learn_delta) if guided else None
        self.mask_positives_per_image = mask_positives_per_image

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        return [torch.where(labels_per_image >= 0)[0] for labels_per_image in labels]

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None in training")
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        losses = self.box_loss(class_logits, box_regression, labels, regression_targets)
        if self.has_mask():
            losses["loss_mask"] = self.mask_loss(features, proposals, image_shapes, targets, matched_idxs, labels)
        return [], losses

    def box_loss(self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                 regression_targets: list[Tensor]) -> dict[str, Tensor]:
        labels_t = torch.cat(labels, dim=0)
        targets_t = torch.cat(regression_targets, dim=0)
        loss_cls = F.cross_entropy(class_logits, labels_t)
        positive = torch.where(labels_t > 0)[0]
        num_pos = max(1, positive.numel())
        box_regression = box_regression.reshape(class_logits.shape[0], -1, 4)
        loss_box = F.smooth_l1_loss(
            box_regression[positive, labels_t[positive]], targets_t[positive], beta=1.0, reduction="sum"
        ) / (4 * num_pos)
        loss_cls, delta_term = _guided_losses(self.guide, loss_cls, loss_box)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        if delta_term is not None:
            losses["loss_roi_delta"] = delta_term
        return losses

    def mask_loss(self, features, proposals, image_shapes, targets, matched_idxs, labels) -> Tensor:  # type: ignore[no-untyped-def]
        """Mask loss on every positive proposal (the sampler capped this at 128 per image), or a random subset."""
        positives = [self._mask_positives(lab) for lab in labels]
        mask_proposals = [p[pos] for p, pos in zip(proposals, positives)]
        pos_matched = [m[pos] for m, pos in zip(matched_idxs, positives)]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        if sum(p.shape[0] for p in mask_proposals) == 0:
            return mask_logits.sum() * 0  # no positives in the batch: zero loss that keeps the graph
        return maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                             [t["labels"] for t in targets], pos_matched)

    def _mask_positives(self, labels: Tensor) -> Tensor:
        positive = torch.where(labels > 0)[0]
        cap = self.mask_positives_per_image
        if cap is None or positive.numel() <= cap:
            return positive
        return positive[torch.randperm(positive.numel(), device=positive.device)[:cap]]


def set_rpn_prior(rpn: RegionProposalNetwork, pi: float) -> None:
    init_prior_bias(rpn.head.cls_logits, pi)

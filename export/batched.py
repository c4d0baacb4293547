"""Batched one-stage graphs (`sfdeploy export --batch dynamic`): [B,3,S,S] letterboxed images -> padded outputs.

Output convention of TensorRT's EfficientNMS plugin and Triton ensembles: `num_detections` int64 [B], `boxes`
float32 [B,K,4], `scores` float32 [B,K], `labels` int64 [B,K] (K = detections_per_img; rows past an image's
count are zero). Why a separate adapter: torchvision's detectors take a list of images and post-process one image
at a time in Python loops (filter, top-k, NMS with data-dependent sizes), which the tracer unrolls to the example's
batch size. Here the backbone and head run on the whole batch, and the post-processing is rewritten with fixed
shapes per image: top-k candidates per level (below-threshold ones masked, not removed), one batched ONNX
NonMaxSuppression (batch and class axes), a scatter of the kept indices and a final top-K.

The graph does not resize: the caller letterboxes each image to the model's working size (torchvision's
min_size/max_size rule) on a black canvas of the fixed size recorded in the metadata (`sfdeploy.processing.letterbox`),
so every image of a batch has one shape (what Triton's dynamic batcher needs as well). On that canvas torchvision's
own resize is the identity, which is what the parity check compares against (`eager_on_canvas`).
Two-stage detectors (RPN proposals and RoI heads per image) are not supported: refused with one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

_OP_NAMESPACE = "sfdeploy_export"
_OP_QUALNAME = f"{_OP_NAMESPACE}::batched_multiclass_nms"
_registered: dict[str, Any] = {"op": False, "ts": set()}


def check_batchable(config: Any) -> None:
    """One-line UserError for detectors whose graph cannot be batched (two-stage)."""
    from sfdeploy.errors import UserError
    from sfdeploy.models.table import DETECTOR_TABLE

    if DETECTOR_TABLE[config.detector].two_stage:
        raise UserError(f"--batch dynamic supports one-stage detectors (retinanet, fcos) only, not "
                        f"{config.detector}: export it with the default --batch 1")


# ------------------------------------------------------------------------------------------- batched NMS op
def _nms_eager(boxes: Tensor, class_scores: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
    """Reference of ONNX NonMaxSuppression: boxes [B,M,4], scores [B,C,M] (< 0 = absent) -> [S,3] (b, c, m)."""
    from torchvision.ops import nms

    rows = []
    for b in range(boxes.shape[0]):
        for c in range(class_scores.shape[1]):
            idx = torch.where(class_scores[b, c] >= 0)[0]
            keep = idx[nms(boxes[b, idx], class_scores[b, c, idx], iou_threshold)][:max_per_class]
            rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
    return torch.cat(rows, 0) if rows else torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)


def _register_op() -> Any:
    if not _registered["op"]:
        torch.library.custom_op(_OP_QUALNAME, mutates_args=())(_op_impl)
        _registered["op"] = True
    return getattr(getattr(torch.ops, _OP_NAMESPACE), "batched_multiclass_nms").default


def _op_impl(boxes: Tensor, class_scores: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
    return _nms_eager(boxes, class_scores, iou_threshold, max_per_class)


def register_torchscript_symbolic(opset: int) -> None:
    """The TorchScript exporter emits one ONNX NonMaxSuppression (batch and class axes) for the op."""
    _register_op()
    if opset in _registered["ts"]:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "v", "f", "i")
    def _symbolic(g, boxes, class_scores, iou_threshold, max_per_class):  # type: ignore[no-untyped-def]
        return g.op("NonMaxSuppression", boxes, class_scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([-0.5], dtype=torch.float32)))

    register_custom_op_symbolic(_OP_QUALNAME, _symbolic, opset)
    _registered["ts"].add(opset)


# ------------------------------------------------------------------------------------------- adapter
class BatchedOneStageAdapter(nn.Module):
    """[B,3,S,S] float in [0,1] (letterboxed) -> num_detections [B], boxes [B,K,4], scores [B,K], labels [B,K]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.fcos = "bbox_ctrness" in _head_keys(model)
        self.k = int(model.detections_per_img)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from torchvision.models.detection import _utils as det_utils
        from torchvision.models.detection.image_list import ImageList
        from torchvision.ops import boxes as box_ops

        m = self.model
        x = m.transform.normalize(images)
        features = list(m.backbone(x).values())
        head = m.head(features)
        h, w = int(images.shape[-2]), int(images.shape[-1])
        anchors = m.anchor_generator(ImageList(x, [(h, w)]), features)[0]  # the same for every image
        per_level = [f.size(2) * f.size(3) for f in features]
        a = head["cls_logits"].size(1) // sum(per_level)
        per_level = [n * a for n in per_level]
        logits = head["cls_logits"].split(per_level, dim=1)
        regs = head["bbox_regression"].split(per_level, dim=1)
        ctrs = head["bbox_ctrness"].split(per_level, dim=1) if self.fcos else [None] * len(per_level)
        level_anchors = anchors.split(per_level)
        all_boxes, all_scores, all_labels = [], [], []
        for logit, reg, ctr, anc in zip(logits, regs, ctrs, level_anchors):
            num_classes = logit.shape[-1]
            prob = torch.sigmoid(logit)
            if ctr is not None:
                prob = torch.sqrt(prob * torch.sigmoid(ctr))
            scores = prob.flatten(1)  # [B, N_l * C]
            k = det_utils._topk_min(scores, m.topk_candidates, 1)
            top, idx = scores.topk(k, dim=1)
            anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
            labels = idx % num_classes
            rel = torch.gather(reg, 1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
            ref = anc[anchor_idx]
            if self.fcos:
                boxes = m.box_coder.decode(rel.reshape(-1, 4), ref.reshape(-1, 4))
            else:
                boxes = m.box_coder.decode_single(rel.reshape(-1, 4), ref.reshape(-1, 4))
            boxes = box_ops.clip_boxes_to_image(boxes.reshape(rel.shape), (h, w))
            all_boxes.append(boxes)
            all_scores.append(torch.where(top > m.score_thresh, top, torch.full_like(top, -1.0)))
            all_labels.append(labels)
        boxes, scores, labels = torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1)
        return self._nms_top_k(boxes, scores, labels, int(m.head.classification_head.num_classes),
                               float(m.nms_thresh))

    def _nms_top_k(self, boxes: Tensor, scores: Tensor, labels: Tensor, num_classes: int,
                   iou: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-image, per-class NMS, then the K best kept detections per image, zero-padded."""
        k = self.k
        classes = torch.arange(num_classes, device=scores.device).view(1, -1, 1)
        class_scores = torch.where(labels.unsqueeze(1) == classes, scores.unsqueeze(1),
                                   torch.full_like(scores.unsqueeze(1), -1.0))  # [B, C, M]
        selected = _register_op()(boxes, class_scores, iou, k)  # [S, 3]: image, class, box
        m = scores.shape[1]
        flat = selected[:, 0] * m + selected[:, 2]
        keep = torch.zeros_like(scores).flatten().scatter(0, flat, torch.ones_like(flat, dtype=scores.dtype))
        kept = torch.where(keep.reshape(scores.shape) > 0, scores, torch.full_like(scores, -1.0))
        # K padding rows, so top-k has K candidates even for a tiny canvas
        kept = torch.cat([kept, torch.full_like(kept[:, :1], -1.0).expand(-1, k)], 1)
        boxes = torch.cat([boxes, torch.zeros_like(boxes[:, :1]).expand(-1, k, -1)], 1)
        labels = torch.cat([labels, torch.zeros_like(labels[:, :1]).expand(-1, k)], 1)
        top, idx = kept.topk(k, dim=1)
        valid = top > -0.5
        out_boxes = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        out_scores = torch.where(valid, top, torch.zeros_like(top))
        out_labels = torch.where(valid, torch.gather(labels, 1, idx) + 1, torch.zeros_like(idx)).to(torch.int64)
        return valid.sum(1).to(torch.int64), out_boxes, out_scores, out_labels


def _head_keys(model: nn.Module) -> set[str]:
    """Output keys of the one-stage head (FCOS adds bbox_ctrness)."""
    return {"cls_logits", "bbox_regression"} | ({"bbox_ctrness"} if hasattr(model.head, "regression_head")
                                                and hasattr(model.head.regression_head, "bbox_ctrness") else set())


# ------------------------------------------------------------------------------------------- export, reference
OUTPUT_NAMES = ["num_detections", "boxes", "scores", "labels"]


def export_batched_graph(model: nn.Module, canvas: tuple[int, int], out: str, opset: int) -> int:
    """Write the batched graph with the TorchScript exporter (dynamic batch; H, W dynamic too); returns the opset."""
    import warnings

    adapter = BatchedOneStageAdapter(model).eval()
    from .onnx import model_device

    dummy = torch.rand(2, 3, *canvas, generator=torch.Generator().manual_seed(0)).to(model_device(model))
    register_torchscript_symbolic(opset)
    dyn = {"images": {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(adapter, (dummy,), out, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=OUTPUT_NAMES, dynamic_axes=dyn, do_constant_folding=True)
    return opset


@contextlib.contextmanager
def eager_on_canvas(model: nn.Module, canvas: tuple[int, int]) -> Iterator[nn.Module]:
    """The eager model with its resize fixed to the canvas (the identity on a letterboxed image)."""
    t = model.transform
    old = t.fixed_size
    t.fixed_size = (canvas[1], canvas[0])  # torchvision: (width, height)
    try:
        yield model
    finally:
        t.fixed_size = old

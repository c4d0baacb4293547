"""Export-only adapters: wrap a torchvision detector for ONNX export and patch torchvision *only while exporting*.

Nothing here changes model code or weights. `export_patches(model, ...)` is a context manager that temporarily
replaces a few torchvision functions / instance methods and restores every one of them on exit (also on error):

- `torchvision.ops.boxes.batched_nms` (used by RetinaNet, FCOS, the RPN and the RoI heads through `box_ops`):
  * ``nms="offset"``: branch-free coordinate-offset trick (one NonMaxSuppression over all classes). This is what
    the TorchScript exporter traces anyway; for the dynamo exporter it removes the data-dependent
    ``boxes.numel() > 4000`` branch.
  * ``nms="multiclass"`` (default): one ONNX ``NonMaxSuppression`` with classes on the *class* axis
    (boxes [1, N, 4], scores [1, C, N], other classes' scores masked to -1), so ONNX Runtime runs NMS per class
    the way eager PyTorch does on the CPU, and with ``max_output_boxes_per_class`` set to the number of boxes
    the caller keeps afterwards (``detections_per_img`` for detections, ``post_nms_top_n`` for RPN proposals).
    The cap is exact: greedy NMS picks boxes in score order, and the caller only keeps the top K overall, so no
    class can contribute more than K. This removes the ~90k-box single NMS that made two-stage graphs slow.
- `torchvision.models.detection._utils._topk_min` (dynamo only): `torch.sym_min(k, size)` instead of Python's
  `min`, which records a guard on the example's anchor count and breaks the graph for smaller images.
- `torchvision.models.detection.transform._resize_image_and_masks` (dynamo only): the eager code takes
  `min(h, w)` with Python's `min`, which makes the tracer record a guard such as `h > w` and silently specialise the
  graph on the example's orientation (landscape images then came out wrongly scaled). The replacement computes the
  same scale with `torch.sym_min` / `torch.sym_max`, which stay symbolic.
- `torchvision.ops.poolers._multiscale_roi_align` (both exporters): the eager code sizes its output with
  `len(rois)`, which the dynamo tracer cannot do for the data-dependent number of proposals (`Min(1000, u)`), and
  under TorchScript tracing it merges the levels with an element-wise `ScatterElements` over [N, 256, 7, 7] (106 of
  417 ms of an ORT Faster R-CNN run at 320 px). The replacement pools per level as the eager code does, then puts
  the rows back in RoI order with one Gather by the inverse permutation (no scatter, no zero-filled buffer).
- `torchvision.models.detection._utils.BoxCoder.decode` (both exporters): `if box_sum > 0` branches on the
  data-dependent number of proposals (dynamo cannot trace it) and its `reshape(box_sum, -1, 4)` became
  Reshape(0 rows, [0, -1, ...]) in ONNX Runtime with zero proposals; the replacement (`zero_rows.py`) reshapes with
  the static column count instead (identical results for N > 0, empty outputs for N = 0).
- `torchvision.ops.boxes.clip_boxes_to_image` (both exporters; used by RetinaNet, FCOS, the RPN and the RoI
  heads): its `reshape(boxes.shape)` became Reshape(0 rows, [0, -1]) in ONNX Runtime for a level with zero
  candidates (`zero_rows.py`); the replacement clips element-wise with the same values and no Reshape.
- `MultiScaleRoIAlign` infers its level scales lazily on the first call with `float(torch.tensor(...))`, which under
  the tracer specialises the graph on the example's size. With `example=` the scales are computed eagerly from the
  example first (the values eager inference would cache; they depend only on the FPN strides) and reset on exit.
- Mask R-CNN: `paste_masks_in_image` gets a loop-free version (separable bilinear resampling as two batched
  matmuls, equal to torchvision's to ~1e-5) under both exporters: the dynamo tracer cannot run the Python loop over a
  data-dependent N, and the TorchScript exporter's ONNX `Loop` of N Resize ops was the slow part of Mask R-CNN in ORT.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .zero_rows import clip_boxes_elementwise, decode_fixed_columns

NMS_MODES = ("multiclass", "offset")
_STATE = threading.local()
_OP_NAMESPACE = "sfdeploy_export"
_OP_QUALNAME = f"{_OP_NAMESPACE}::multiclass_nms"
_registered = {"op": False, "ts": set()}


# ------------------------------------------------------------------------------------------- adapter module
class DetectorExportAdapter(nn.Module):
    """[1, 3, H, W] float tensor in [0, 1] -> (boxes [N,4], scores [N], labels int64 [N] (, masks [N,1,H,W]))."""

    def __init__(self, model: nn.Module, with_masks: bool) -> None:
        super().__init__()
        self.model = model
        self.with_masks = with_masks

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model([images[0]])[0]
        result = (out["boxes"], out["scores"], out["labels"].to(torch.int64))
        if self.with_masks:
            result = result + (out["masks"],)
        return result


# ------------------------------------------------------------------------------------------- custom NMS op
def _multiclass_nms_eager(boxes: Tensor, class_scores: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
    """Reference: per-class greedy NMS of boxes [N,4] with scores [C,N] (<0 = absent) -> [K, 2] (class, index)."""
    from torchvision.ops import nms

    rows = []
    for c in range(class_scores.shape[0]):
        idx = torch.where(class_scores[c] >= 0)[0]
        if idx.numel() == 0:
            continue
        keep = idx[nms(boxes[idx], class_scores[c, idx], iou_threshold)][:max_per_class]
        rows.append(torch.stack([torch.full_like(keep, c), keep], dim=1))
    if not rows:
        return torch.zeros((0, 2), dtype=torch.int64, device=boxes.device)
    return torch.cat(rows, 0)


def _register_op() -> Any:
    """Register `sfdeploy_export::multiclass_nms` (a torch custom op) once; returns the op overload."""
    if not _registered["op"]:
        lib_op = torch.library.custom_op(_OP_QUALNAME, mutates_args=())(_op_impl)

        @lib_op.register_fake
        def _fake(boxes: Tensor, class_scores: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
            ctx = torch.library.get_ctx()
            k = ctx.new_dynamic_size()
            return boxes.new_empty((k, 2), dtype=torch.int64)

        _registered["op"] = True
    return getattr(getattr(torch.ops, _OP_NAMESPACE), "multiclass_nms").default


def _op_impl(boxes: Tensor, class_scores: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
    return _multiclass_nms_eager(boxes, class_scores, iou_threshold, max_per_class)


def register_torchscript_symbolic(opset: int) -> None:
    """Let the TorchScript exporter emit one NonMaxSuppression for our custom op."""
    _register_op()
    if opset in _registered["ts"]:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "v", "f", "i")
    def _symbolic(g, boxes, class_scores, iou_threshold, max_per_class):  # type: ignore[no-untyped-def]
        b = g.op("Unsqueeze", boxes, g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)))
        s = g.op("Unsqueeze", class_scores, g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)))
        out = g.op(
            "NonMaxSuppression", b, s,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([-0.5], dtype=torch.float32)),
        )
        return g.op("Slice", out, g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([3], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)))

    register_custom_op_symbolic(_OP_QUALNAME, _symbolic, opset)
    _registered["ts"].add(opset)


def dynamo_translation_table() -> dict[Any, Any]:
    """custom_translation_table entry for torch.onnx.export(dynamo=True)."""
    overload = _register_op()
    from onnxscript import opset18 as op

    def _nms_onnx(boxes, class_scores, iou_threshold: float, max_per_class: int):  # type: ignore[no-untyped-def]
        b = op.Unsqueeze(boxes, [0])
        s = op.Unsqueeze(class_scores, [0])
        out = op.NonMaxSuppression(b, s, op.Constant(value_ints=[max_per_class]),
                                   op.Constant(value_floats=[iou_threshold]), op.Constant(value_floats=[-0.5]))
        return op.Slice(out, [1], [3], [1])

    return {overload: _nms_onnx}


# ------------------------------------------------------------------------------------------- batched NMS
def _offset_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's coordinate trick without the size branch (also correct for N = 0: max of empty avoided)."""
    from torchvision.ops import nms

    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _multiclass_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    slots = getattr(_STATE, "slots", None)
    cap = getattr(_STATE, "cap", None)
    if slots is None or cap is None:  # a call site we do not know: exact fallback
        return _offset_batched_nms(boxes, scores, idxs, iou_threshold)
    op = _register_op()
    classes = torch.arange(slots, device=boxes.device, dtype=idxs.dtype)
    class_scores = torch.where(idxs[None, :] == classes[:, None], scores[None, :], torch.full_like(scores, -1.0)[None, :])
    selected = op(boxes, class_scores, float(iou_threshold), int(cap))
    keep = selected[:, 1]
    order = torch.sort(scores[keep], descending=True)[1]
    return keep[order]


@contextlib.contextmanager
def _call_site(slots: int, cap: int) -> Iterator[None]:
    old = (getattr(_STATE, "slots", None), getattr(_STATE, "cap", None))
    _STATE.slots, _STATE.cap = slots, cap
    try:
        yield
    finally:
        _STATE.slots, _STATE.cap = old


def _wrap_method(obj: Any, name: str, slots_fn: Any, cap_fn: Any, stack: contextlib.ExitStack) -> None:
    original = getattr(obj, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _call_site(slots_fn(*args, **kwargs), cap_fn()):
            return original(*args, **kwargs)

    setattr(obj, name, wrapped)
    stack.callback(lambda: obj.__dict__.pop(name, None))  # instance attribute shadowed the class method


# ------------------------------------------------------------------------------------------- top-k / masks
def _symbolic_topk_min(input: Tensor, orig_kval: int, axis: int) -> Any:
    """min(k, size) without a guard: Python's min on a symbolic size specialises the graph on the example's size."""
    size = input.size(axis)
    if isinstance(size, int):
        return min(orig_kval, size)
    return torch.sym_min(orig_kval, size)


def _bilinear_weights(start: Tensor, length: Tensor, out_size: Any, src_size: int) -> Tensor:
    """[N, out_size, src_size] weights of F.interpolate(bilinear, align_corners=False) resampling a src_size axis
    to `length` pixels placed at `start`; rows outside [start, start + length) are zero."""
    pos = torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :] - start[:, None].to(torch.float32)
    length = length.to(torch.float32)[:, None]
    src = ((pos + 0.5) * (src_size / length) - 0.5).clamp(min=0)  # PyTorch's source index, clamped at 0
    i0 = src.floor()
    lam = src - i0
    i1 = (i0 + 1).clamp(max=src_size - 1)
    grid = torch.arange(src_size, device=start.device, dtype=torch.float32)
    w = (1 - lam)[..., None] * (i0[..., None] == grid).to(torch.float32) + \
        lam[..., None] * (i1[..., None] == grid).to(torch.float32)
    inside = ((pos >= 0) & (pos < length)).to(torch.float32)
    return w * inside[..., None]


def paste_masks_vectorised(masks: Tensor, boxes: Tensor, img_shape: tuple[int, int], padding: int = 1) -> Tensor:
    """Loop-free equivalent of torchvision's paste_masks_in_image.

    torchvision resizes each (padded) M x M mask bilinearly to its integer box and copies it into the image. Bilinear
    resampling is separable, so the same result is Ry @ mask @ Rx^T with per-detection weight matrices Ry [H, M] and
    Rx [W, M]: two small batched matmuls instead of a loop of N Resize ops (and no [N, H, W, 2] sampling grid).
    """
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    masks, scale = expand_masks(masks, padding=padding)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)
    im_h, im_w = img_shape
    m = masks.shape[-1]
    x0, y0, x1, y1 = boxes.unbind(1)
    wy = _bilinear_weights(y0, (y1 - y0 + 1).clamp(min=1), im_h, m)  # [N, H, M]
    wx = _bilinear_weights(x0, (x1 - x0 + 1).clamp(min=1), im_w, m)  # [N, W, M]
    return torch.matmul(torch.matmul(wy, masks[:, 0]), wx.transpose(1, 2))[:, None]


# ------------------------------------------------------------------------------------------- context manager
@contextlib.contextmanager
def export_patches(model: nn.Module, *, nms: str = "multiclass", dynamo: bool = False,
                   example: Tensor | None = None) -> Iterator[None]:
    """Temporarily adapt torchvision for export of `model` (a torchvision detector in eval mode).

    example: a [1, 3, H, W] input; with dynamo=True it primes the RoI poolers' lazily computed scales."""
    if nms not in NMS_MODES:
        raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
    import torchvision.models.detection._utils as det_utils
    import torchvision.models.detection.roi_heads as roi_mod
    import torchvision.models.detection.transform as transform_mod
    import torchvision.ops.boxes as box_ops
    import torchvision.ops.poolers as poolers_mod

    with contextlib.ExitStack() as stack:
        def patch(module: Any, name: str, value: Any) -> None:
            old = getattr(module, name)
            setattr(module, name, value)
            stack.callback(setattr, module, name, old)

        patch(box_ops, "batched_nms", _multiclass_batched_nms if nms == "multiclass" else _offset_batched_nms)
        patch(box_ops, "clip_boxes_to_image", clip_boxes_elementwise)  # both exporters: zero-row safe
        patch(det_utils.BoxCoder, "decode", decode_fixed_columns)  # both exporters: zero-row safe, branch-free
        if dynamo:
            patch(det_utils, "_topk_min", _symbolic_topk_min)
            patch(transform_mod, "_resize_image_and_masks",
                  _symbolic_resize(transform_mod._resize_image_and_masks))
            patch(transform_mod.GeneralizedRCNNTransform, "batch_images", _symbolic_batch_images)
            if example is not None:
                _prime_roi_pools(model, example, stack)
        patch(poolers_mod, "_multiscale_roi_align", _symbolic_multiscale_roi_align)  # both exporters
        if nms == "multiclass":
            _wrap_call_sites(model, stack)
        if getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)():  # both exporters
            patch(roi_mod, "paste_masks_in_image", paste_masks_vectorised)
            patch(transform_mod, "paste_masks_in_image", paste_masks_vectorised)  # imported by name there
        yield


def _symbolic_resize(original: Any) -> Any:
    def resize(image: Tensor, self_min_size: int, self_max_size: int, target: dict[str, Tensor] | None = None,
               fixed_size: tuple[int, int] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        if target is not None or fixed_size is not None:  # training / fixed-size models: the original path
            return original(image, self_min_size, self_max_size, target, fixed_size)
        h, w = image.shape[-2:]
        scale = torch.sym_min(self_min_size / torch.sym_min(h, w), self_max_size / torch.sym_max(h, w))
        size = [math.floor(torch.sym_float(h) * scale), math.floor(torch.sym_float(w) * scale)]
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        return image, target

    return resize


def _prime_roi_pools(model: nn.Module, example: Tensor, stack: contextlib.ExitStack) -> None:
    from torchvision.ops.poolers import MultiScaleRoIAlign, _filter_input, _setup_scales

    pools = [m for m in model.modules() if isinstance(m, MultiScaleRoIAlign) and m.scales is None]
    if not pools:
        return
    with torch.no_grad():
        images, _ = model.transform([example[0]])
        features = model.backbone(images.tensors)
    for pool in pools:
        pool.scales, pool.map_levels = _setup_scales(_filter_input(features, pool.featmap_names), images.image_sizes,
                                                     pool.canonical_scale, pool.canonical_level)
        stack.callback(setattr, pool, "map_levels", None)
        stack.callback(setattr, pool, "scales", None)


def _symbolic_batch_images(self: Any, images: list[Tensor], size_divisible: int = 32) -> Tensor:
    """Pad to a multiple of size_divisible with integer ceil (the eager code's int(math.ceil(float)) specialises)."""
    s = int(size_divisible)
    height = images[0].shape[-2]
    width = images[0].shape[-1]
    for img in images[1:]:
        height, width = torch.sym_max(height, img.shape[-2]), torch.sym_max(width, img.shape[-1])
    height, width = (height + s - 1) // s * s, (width + s - 1) // s * s
    return torch.stack([F.pad(img, (0, width - img.shape[-1], 0, height - img.shape[-2])) for img in images])


def _symbolic_multiscale_roi_align(x_filtered: list[Tensor], boxes: list[Tensor], output_size: list[int],
                                   sampling_ratio: int, scales: list[float] | None, mapper: Any) -> Tensor:
    from torchvision.ops import roi_align
    from torchvision.ops.poolers import _convert_to_roi_format

    if scales is None or mapper is None:
        raise ValueError("scales and mapper should not be None")
    rois = _convert_to_roi_format(boxes)
    if len(x_filtered) == 1:
        return roi_align(x_filtered[0], rois, output_size=output_size, spatial_scale=scales[0],
                         sampling_ratio=sampling_ratio)
    levels = mapper(boxes)
    pooled, order = [], []
    for level, (feature, scale) in enumerate(zip(x_filtered, scales)):
        idx = torch.where(levels == level)[0]
        pooled.append(roi_align(feature, rois[idx], output_size=output_size, spatial_scale=scale,
                                sampling_ratio=sampling_ratio).to(x_filtered[0].dtype))
        order.append(idx)
    # row i of the concatenation belongs to RoI order[i]: gather with the inverse permutation (no scatter)
    return torch.cat(pooled)[torch.argsort(torch.cat(order))]


def _wrap_call_sites(model: nn.Module, stack: contextlib.ExitStack) -> None:
    rpn = getattr(model, "rpn", None)
    roi = getattr(model, "roi_heads", None)
    if rpn is not None and roi is not None:
        _wrap_method(rpn, "filter_proposals", lambda *a, **k: len(a[3] if len(a) > 3 else k["num_anchors_per_level"]),
                     lambda: int(rpn.post_nms_top_n()), stack)
        num_classes = roi.box_predictor.cls_score.out_features  # incl. background; labels 1..C
        _wrap_method(roi, "postprocess_detections", lambda *a, **k: num_classes,
                     lambda: int(roi.detections_per_img), stack)
    else:  # RetinaNet / FCOS: 0-based class indices inside postprocess
        num_classes = model.head.classification_head.num_classes
        _wrap_method(model, "postprocess_detections", lambda *a, **k: num_classes,
                     lambda: int(model.detections_per_img), stack)

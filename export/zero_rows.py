"""Export-only box clipping and decoding without Reshape(0 rows, -1), so zero candidates run in ONNX Runtime.

Why: torchvision's `clip_boxes_to_image` stacks x and y to [N, C, 2] and reshapes back with `reshape(boxes.shape)`,
and `BoxCoder.decode` reshapes with `(box_sum, -1)` / `(box_sum, -1, 4)`. The TorchScript exporter writes those
targets from Shape ops; once the graph carries shape information (every `--int8` graph does: ONNX Runtime's
quantizer runs shape inference) ONNX Runtime's ReshapeFusion folds them at session load to constants such as
`[0, -1]` ("copy dim 0, infer the rest"), and for N = 0 rows the -1 cannot be inferred: the run fails
(`Input shape:{0,2,2}, requested shape:{0,-1}`). The raccoon int8 RetinaNet failed on 3 of 40 val images (a pyramid
level with no score above the threshold); a two-stage model fails the same way when the RPN keeps no proposal.
The replacements give the same values for every N with no data-dependent -1: clipping is element-wise against a
per-column bound (w, h, w, h, ...), decoding reshapes with the model's static column count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def clip_boxes_elementwise(boxes: Tensor, size: tuple[Any, Any]) -> Tensor:
    """Clip (x1, y1, x2, y2)* boxes [..., 4k] to an image of size (height, width), like torchvision, no Reshape."""
    height, width = size
    dtype, device = boxes.dtype, boxes.device
    # torch.tensor of the (traced) sizes, as torchvision's tracing branch does: the bound follows the input size
    w = torch.tensor(width, dtype=dtype, device=device)
    h = torch.tensor(height, dtype=dtype, device=device)
    upper = torch.stack([w, h]).repeat(int(boxes.shape[-1]) // 2)  # static column count: x, y, x, y, ...
    return torch.min(torch.max(boxes, torch.zeros((), dtype=dtype, device=device)), upper)


def decode_fixed_columns(self: Any, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
    """`BoxCoder.decode` for export: codes [N, 4K] -> boxes [N, K, 4] for every N (eager: [0, 4K] when N = 0).

    The column count 4K (4 x classes, or 4 for the RPN) is fixed by the model, so it is a constant in the graph;
    the row count stays dynamic through -1, which a zero-row input can resolve because the other dims are not 0."""
    concat_boxes = torch.cat(list(boxes), dim=0)
    columns = math.prod(int(d) for d in rel_codes.shape[1:])  # torchvision's callers pass [N, 4K] already
    if rel_codes.dim() != 2:
        rel_codes = rel_codes.reshape(-1, columns)
    pred_boxes = self.decode_single(rel_codes, concat_boxes)
    return pred_boxes.reshape(-1, columns // 4, 4)

"""Box and mask helpers: validation on load, tight boxes from masks."""

from __future__ import annotations

import numpy as np

from .errors import ProblemLog

# Coordinates may overshoot the image by rounding (COCO's x+w often equals width+0.01): clip those silently.
CLIP_TOLERANCE_PX = 1.0
# Boxes thinner than this are degenerate: regression targets log(w) would explode.
MIN_BOX_SIZE_PX = 1e-2


def sanitize_boxes(boxes: np.ndarray, width: int, height: int, log: ProblemLog) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image and find degenerate ones.

    Returns (clipped float32 [N,4] boxes, bool keep mask [N]); counts go to ``log``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    log.add("dropped {n} boxes with non-finite coordinates", int((~finite).sum()))
    safe = np.where(finite[:, None], boxes, 0.0)
    limits = np.array([width, height, width, height], dtype=np.float64)
    clipped = np.clip(safe, 0.0, limits)
    overshoot = np.abs(clipped - safe).max(axis=1) if len(safe) else np.zeros(0)
    log.add("clipped {n} boxes outside their image", int(((overshoot > CLIP_TOLERANCE_PX) & finite).sum()))
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    degenerate = finite & ((w < MIN_BOX_SIZE_PX) | (h < MIN_BOX_SIZE_PX))
    log.add("dropped {n} zero-area boxes", int(degenerate.sum()))
    return clipped.astype(np.float32), finite & ~degenerate


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy box (pixel edges) of a non-empty HxW mask: pixel (x, y) covers [x, x+1) x [y, y+1)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes [N,4] float32 of [N,H,W] masks (see ``mask_to_box``)."""
    return np.stack([mask_to_box(m) for m in masks]).astype(np.float32) if len(masks) else np.zeros((0, 4), np.float32)

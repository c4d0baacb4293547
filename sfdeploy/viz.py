"""Draw detections: boxes, "class score" labels and translucent instance masks, one fixed colour per class."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Fixed palette (label k uses PALETTE[(k - 1) % len]): the same class has the same colour in every image/run.
PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
    [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40],
    [255, 225, 25], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128],
    [128, 128, 128], [255, 255, 255],
], dtype=np.uint8)


def class_colour(label: int) -> tuple[int, int, int]:
    r, g, b = PALETTE[(int(label) - 1) % len(PALETTE)]
    return int(r), int(g), int(b)


def _field(dets: Any, name: str) -> Any:
    return dets.get(name) if isinstance(dets, dict) else getattr(dets, name, None)


def _mask_region(masks: Any, i: int, size: tuple[int, int]) -> tuple[Any, np.ndarray | None]:
    """(slice of the image, bool mask over it) for mask i: a BoxMasks crop as is (no full-size copy), or a dense
    [H,W] mask; (None, None) when it does not fit the image."""
    crop, origins = getattr(masks, "crop", None), getattr(masks, "origins", None)
    if callable(crop) and origins is not None:
        if tuple(getattr(masks, "image_size", ())) != tuple(size):
            return None, None
        c = crop(i)
        x0, y0 = (int(v) for v in origins[i])
        return (slice(y0, y0 + c.shape[0]), slice(x0, x0 + c.shape[1])), c
    m = np.asarray(masks[i]).astype(bool)
    if m.shape != size:
        return None, None
    return (slice(None), slice(None)), m


def draw_detections(image: np.ndarray, detections: Any, score_thresh: float = 0.0, *, mask_alpha: float = 0.45,
                    line_width: int | None = None, show_labels: bool = True) -> np.ndarray:
    """Render onto a copy of `image` (uint8 [H,W,3] RGB) and return it (same shape, uint8).

    `detections`: a serving.Detections or a dict with "boxes" [N,4] xyxy, "scores", "labels" (1..C), optional
    "class_names" (one per detection) and "masks" (bool [N,H,W], or sfdeploy.masks.BoxMasks: drawn crop by crop).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_detections needs a uint8 [H,W,3] image, got {image.dtype} {image.shape}")
    boxes = np.asarray(_field(detections, "boxes"), dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(_field(detections, "scores"), dtype=np.float32).reshape(-1)
    labels = np.asarray(_field(detections, "labels")).astype(np.int64).reshape(-1)
    names = _field(detections, "class_names")
    masks = _field(detections, "masks")
    keep = np.flatnonzero(scores >= score_thresh)
    keep = keep[np.argsort(scores[keep], kind="stable")]  # highest score drawn last (on top)
    H, W = image.shape[:2]

    out = image.astype(np.float32)
    if masks is not None and len(masks):
        for i in keep:
            region, m = _mask_region(masks, int(i), (H, W))
            if m is None:
                continue
            view = out[region]
            view[m] = view[m] * (1.0 - mask_alpha) + np.array(class_colour(labels[i]), np.float32) * mask_alpha
    canvas = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    lw = line_width or max(1, round(min(H, W) / 200))
    font = ImageFont.load_default()
    for i in keep:
        colour = class_colour(labels[i])
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=lw)
        if not show_labels:
            continue
        name = names[i] if names is not None and i < len(names) else str(int(labels[i]))
        text = f"{name} {scores[i]:.2g}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0
        draw.rectangle([x0, ty, x0 + tw + 4, ty + th + 4], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((x0 + 2, ty + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8)

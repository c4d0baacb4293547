"""Pre- and post-processing shared by every inference backend (torch, ONNX Runtime, TensorRT).

One implementation, tested once:
    load_image(source)            path | bytes | PIL | ndarray | tensor -> uint8 [H,W,3] RGB (EXIF applied)
    prepare(image, max_side)      uint8 [H,W,3] -> float32 [1,3,h,w] in [0,1] (+ the downscale factors, padding)
    postprocess(raw, ...)         backend outputs in input coordinates -> arrays in original-image coordinates
                                  (masks box-local: sfdeploy.masks.BoxMasks)
    masks_to_rle / rle_to_masks   COCO RLE (pycocotools) for transport

Bad images raise `InvalidImageError` (or `ImageTooLargeError` for decompression bombs and over-size inputs) with
a one-line message; they subclass ValueError so callers that do not know this module still catch them.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Decoding limit used when the caller gives none: PIL's own bomb threshold (about 89 megapixels) when set.
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
# Larger inputs are downscaled (with boxes/masks mapped back) before they reach a backend: the models resize to
# at most cfg.max_size anyway, and a 50-megapixel float32 tensor would cost 600 MB for nothing.
DEFAULT_MAX_SIDE = 2048
MASK_THRESHOLD = 0.5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class InvalidImageError(ValueError):
    """The input is not a decodable image (empty, truncated, not an image, wrong array shape)."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels (or bytes) than allowed: a decompression bomb or an over-size upload."""


# -- loading -------------------------------------------------------------------------------------------
def load_image(source: Any, *, max_pixels: int | None = None, name: str | None = None) -> np.ndarray:
    """Any supported image input -> contiguous uint8 [H,W,3] RGB.

    source: a path (str/Path), encoded bytes, a PIL image, an ndarray (HWC uint8 RGB; HW grey, HWC4 RGBA and
    float HWC in [0,1] are accepted too) or a torch tensor ([3,H,W] or [1,3,H,W], float in [0,1] or uint8).
    max_pixels: refuse images with more pixels (checked from the header, before decoding); default
    DEFAULT_MAX_PIXELS. `name` is used in messages.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{label}: image file not found")
        if path.stat().st_size == 0:
            raise InvalidImageError(f"{label}: empty file (0 bytes)")
        with open(path, "rb") as fh:
            return _decode(fh, label, limit)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image"
        if len(source) == 0:
            raise InvalidImageError(f"{label}: empty upload (0 bytes)")
        return _decode(io.BytesIO(bytes(source)), label, limit)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, name or "image", limit)
        return _pil_to_rgb(ImageOps.exif_transpose(source), name or "image")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name or "array", limit)
    if _is_tensor(source):
        return _tensor_to_rgb(source, name or "tensor", limit)
    raise InvalidImageError(
        f"{name or 'input'}: unsupported image type {type(source).__name__}; "
        "use a path, bytes, PIL image, uint8 HWC RGB array or float [3,H,W] tensor")


def _decode(fh: Any, label: str, limit: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                _check_pixels(im.size, label, limit)
                im.load()
                return _pil_to_rgb(ImageOps.exif_transpose(im), label)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: refused as a decompression bomb ({exc})") from None
    except ImageTooLargeError:
        raise
    except Image.UnidentifiedImageError:
        raise InvalidImageError(f"{label}: not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidImageError(f"{label}: cannot decode image ({reason})") from None


def _check_pixels(size: tuple[int, int], label: str, limit: int) -> None:
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise InvalidImageError(f"{label}: image has no pixels ({w}x{h})")
    if limit > 0 and w * h > limit:
        raise ImageTooLargeError(f"{label}: {w}x{h} = {w * h} pixels is over the limit of {limit} pixels")


def _pil_to_rgb(im: Image.Image, label: str) -> np.ndarray:
    try:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale into 8 bits instead of clipping
            arr = np.asarray(im, dtype=np.float64)
            top = max(float(arr.max()), 1.0)
            grey = np.clip(arr * (255.0 / (65535.0 if top > 255 else 255.0)), 0, 255).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"{label}: cannot convert image to RGB ({exc})") from None


def _array_to_rgb(arr: np.ndarray, label: str, limit: int) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidImageError(f"{label}: expected an HWC array with 1, 3 or 4 channels, got shape {arr.shape}")
    _check_pixels((arr.shape[1], arr.shape[0]), label, limit)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidImageError(f"{label}: arrays must be uint8 (0..255) or float (0..1), got {arr.dtype}")
        if not np.isfinite(arr).all():
            raise InvalidImageError(f"{label}: array has NaN or infinite values")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _tensor_to_rgb(t: Any, label: str, limit: int) -> np.ndarray:
    arr = t.detach().cpu().numpy()
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise InvalidImageError(f"{label}: expected a [3,H,W] (or [1,3,H,W]) tensor, got shape {tuple(t.shape)}")
    return _array_to_rgb(arr.transpose(1, 2, 0), label, limit)


# -- model input -----------------------------------------------------------------------------------
# Longest/shortest side ratio the backend sees. Thinner inputs are padded (bottom/right, black) up to it: the
# models resize the longest side to max_size, and a 10000 x 10 image would otherwise shrink to a 0-pixel side
# inside the graph. Padding leaves that scale (max_size / longest side) unchanged unless max_size > 8 x min_size,
# so detection quality on the real pixels is unchanged.
MAX_ASPECT = 8


@dataclass
class Prepared:
    """A backend's input and how to map its outputs back to the original image."""

    tensor: np.ndarray  # float32 [1,3,h',w'] in [0,1]; h' >= h, w' >= w when thin images are padded
    original_size: tuple[int, int]  # (H, W) of the caller's image
    input_size: tuple[int, int]  # (h, w) of the image content given to the backend (top-left of the tensor)

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Multiply input-coordinate x/y by these to get original-image pixels."""
        (H, W), (h, w) = self.original_size, self.input_size
        return W / w, H / h

    @property
    def padded(self) -> bool:
        return tuple(self.tensor.shape[2:]) != tuple(self.input_size)


def prepare(image: np.ndarray, max_side: int | None = DEFAULT_MAX_SIDE,
            work_size: tuple[int, int] | None = None) -> Prepared:
    """uint8 [H,W,3] RGB -> float32 [1,3,h,w] in [0,1].

    Images longer than `max_side` are downscaled first. `work_size` = (min_size, max_size) of a model that resizes
    internally (torchvision's rule): the image is downscaled to that working size here, so outputs that scale with
    the input (Mask R-CNN's pasted masks) stay bounded by the model, not by the upload. Thinner than 1:MAX_ASPECT
    is padded.
    """
    H, W = image.shape[:2]
    s = 1.0
    if max_side and max(H, W) > max_side:
        s = max_side / max(H, W)
    if work_size:
        s = min(s, work_size[0] / min(H, W), work_size[1] / max(H, W))
    small = image
    if s < 1.0:
        w, h = max(1, round(W * s)), max(1, round(H * s))
        if (w, h) != (W, H):
            small = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    h, w = small.shape[:2]
    ph, pw = max(h, -(-w // MAX_ASPECT)), max(w, -(-h // MAX_ASPECT))
    tensor = np.zeros((1, 3, ph, pw), dtype=np.float32)
    np.divide(small.transpose(2, 0, 1), np.float32(255.0), out=tensor[0, :, :h, :w], dtype=np.float32)
    return Prepared(tensor=tensor, original_size=(H, W), input_size=(h, w))


def letterbox_canvas(min_size: int, max_size: int, multiple: int = 32) -> tuple[int, int]:
    """(h, w) of the fixed canvas of a batched graph: every image at the model's working size fits in it."""
    side = -(-max(min_size, max_size) // multiple) * multiple
    return side, side


def letterbox(image: np.ndarray, canvas: tuple[int, int], work_size: tuple[int, int]) -> Prepared:
    """uint8 [H,W,3] RGB -> float32 [1,3,ch,cw]: resized (down or up) to the model's working size (torchvision's
    rule: shortest side min_size, longest at most max_size), top-left on a black canvas of the batched graph's
    fixed size. One shape for every image, so images of any size share one batch; `postprocess` maps back."""
    H, W = image.shape[:2]
    ch, cw = canvas
    s = min(work_size[0] / min(H, W), work_size[1] / max(H, W), ch / H, cw / W)
    w, h = min(cw, max(1, round(W * s))), min(ch, max(1, round(H * s)))
    small = image
    if (w, h) != (W, H):
        small = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    tensor = np.zeros((1, 3, ch, cw), dtype=np.float32)
    np.divide(small.transpose(2, 0, 1), np.float32(255.0), out=tensor[0, :, :h, :w], dtype=np.float32)
    return Prepared(tensor=tensor, original_size=(H, W), input_size=(h, w))


# -- outputs ------------------------------------------------------------------------------------------
def postprocess(raw: dict[str, Any], prepared: Prepared, *, score_thresh: float = 0.0,
                max_detections: int | None = None, masks: bool = True) -> dict[str, Any]:
    """Backend outputs (boxes xyxy / scores / labels / masks [N,1,h,w] probabilities, input coordinates) ->
    {"boxes" float32 [N,4] original pixels, "scores" float32, "labels" int64, "masks" BoxMasks (box-local bool
    [N,H,W]) or None}, sorted by score, filtered by `score_thresh`, at most `max_detections`. Detections that lie
    wholly in the padding of a thin image are dropped."""
    from sfdeploy.masks import probs_to_box_masks

    boxes = np.asarray(raw["boxes"], dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(raw["scores"], dtype=np.float32).reshape(-1)
    labels = np.asarray(raw["labels"]).astype(np.int64).reshape(-1)
    probs = raw.get("masks")
    ok = scores >= score_thresh
    if prepared.padded:
        h, w = prepared.input_size
        ok &= (boxes[:, 0] < w) & (boxes[:, 1] < h)
    keep = np.flatnonzero(ok)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    if max_detections is not None:
        keep = keep[: max(0, int(max_detections))]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    H, W = prepared.original_size
    sx, sy = prepared.scale_xy
    if (sx, sy) != (1.0, 1.0):
        boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
    out_masks = None
    if masks and probs is not None:
        out_masks = probs_to_box_masks(np.asarray(probs)[keep], prepared.input_size, (H, W), MASK_THRESHOLD)
    return {"boxes": np.ascontiguousarray(boxes, dtype=np.float32), "scores": scores, "labels": labels,
            "masks": out_masks}


def masks_to_original(probs: np.ndarray, size: tuple[int, int], threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """[N,1,h,w] or [N,h,w] probabilities -> bool [N,H,W] at `size` (bilinear resize, then > threshold)."""
    H, W = size
    if probs.ndim == 4:
        probs = probs[:, 0]
    probs = probs.astype(np.float32, copy=False)
    if len(probs) == 0:
        return np.zeros((0, H, W), dtype=bool)
    if probs.shape[1:] == (H, W):
        return probs > threshold
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        up = F.interpolate(torch.from_numpy(np.ascontiguousarray(probs))[:, None], size=(H, W), mode="bilinear",
                           align_corners=False)[:, 0]
        return (up > threshold).numpy()


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """bool [N,H,W] -> COCO compressed RLE dicts {"size": [H,W], "counts": str} (JSON-ready)."""
    from pycocotools import mask as mask_utils

    if masks is None or len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def rle_to_masks(rles: list[dict[str, Any]], size: tuple[int, int] | None = None) -> np.ndarray:
    """Inverse of masks_to_rle: bool [N,H,W] (`size` gives H,W for an empty list)."""
    from pycocotools import mask as mask_utils

    if not rles:
        h, w = size or (0, 0)
        return np.zeros((0, h, w), dtype=bool)
    enc = [{"size": list(r["size"]), "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
            else r["counts"]} for r in rles]
    return mask_utils.decode(enc).transpose(2, 0, 1).astype(bool)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] -= out[:, :2]
    return out

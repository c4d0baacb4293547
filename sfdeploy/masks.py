"""Instance masks stored box-local, so memory follows what is returned, not N x image height x image width.

A Mask R-CNN request on a 2000 x 2000 image with 100 detections used to hold 100 full-size float masks (1.6 GB
per copy, several copies). Here each detection keeps only the bool crop around its mask plus the crop's origin;
the full-size view is built on demand (one mask at a time where possible), and COCO RLE is computed straight from
the crop.

    probs_to_box_masks(probs, input_size, image_size)   model probabilities (input res) -> BoxMasks (original res)
    BoxMasks                                             array-like bool [N,H,W]: .crops, .origins, .rle(), [i]
    crop_to_rle(crop, x0, y0, size)                      COCO compressed RLE of a crop placed in a [H,W] image
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MASK_THRESHOLD = 0.5
# Rows of a crop resampled at once: bounds the float temporaries of one huge mask to ROW_STRIP x crop width.
ROW_STRIP = 256


class BoxMasks:
    """N instance masks of an (H, W) image, each stored as a bit-packed crop at an (x0, y0) origin.

    Behaves like a read-only bool array [N,H,W] for old callers (`shape`, `dtype`, `len`, `masks[i]` -> [H,W],
    `np.asarray(masks)`), but materialising the whole array costs N*H*W bytes: use `crop(i)`/`origins`, `rle()`
    or `dense(i)` to stay bounded. Stored: 1 bit per pixel of each mask's bounding box.
    """

    dtype = np.dtype(bool)
    ndim = 3

    def __init__(self, crops: Sequence[np.ndarray], origins: np.ndarray | Sequence[Sequence[int]],
                 image_size: tuple[int, int]) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)  # (x0, y0) per mask
        if len(crops) != len(self.origins):
            raise ValueError(f"{len(crops)} crops but {len(self.origins)} origins")
        H, W = self.image_size
        self._shapes: list[tuple[int, int]] = []
        self._packed: list[np.ndarray] = []
        for c, (x0, y0) in zip(crops, self.origins):
            c = np.asarray(c, dtype=bool)
            if c.ndim != 2 or x0 < 0 or y0 < 0 or y0 + c.shape[0] > H or x0 + c.shape[1] > W:
                raise ValueError(f"crop {c.shape} at ({x0}, {y0}) does not fit in a {H}x{W} image")
            self._shapes.append((int(c.shape[0]), int(c.shape[1])))
            self._packed.append(np.packbits(c, axis=None))

    def crop(self, i: int) -> np.ndarray:
        """Mask i's bool crop (its bounding box; 0x0 for an empty mask); place it at origins[i]."""
        h, w = self._shapes[i]
        return np.unpackbits(self._packed[i], count=h * w).reshape(h, w).view(bool)

    @property
    def crops(self) -> list[np.ndarray]:
        """All bool crops (unpacked: 8x the stored size)."""
        return [self.crop(i) for i in range(len(self))]

    # -- array-like view ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), *self.image_size)

    def __len__(self) -> int:
        return len(self._packed)

    def dense(self, i: int) -> np.ndarray:
        """Mask i as bool [H,W] (H*W bytes)."""
        out = np.zeros(self.image_size, dtype=bool)
        c = self.crop(i)
        x0, y0 = (int(v) for v in self.origins[i])
        out[y0:y0 + c.shape[0], x0:x0 + c.shape[1]] = c
        return out

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, (int, np.integer)):
            return self.dense(int(i) + len(self) if i < 0 else int(i))
        return self.to_dense()[i]

    def to_dense(self) -> np.ndarray:
        """All masks as bool [N,H,W]: N*H*W bytes, the cost the box-local storage avoids."""
        out = np.zeros(self.shape, dtype=bool)
        for i, (x0, y0) in enumerate(self.origins):
            c = self.crop(i)
            out[i, y0:y0 + c.shape[0], x0:x0 + c.shape[1]] = c
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.to_dense()
        return arr if dtype is None else arr.astype(dtype)

    def select(self, index: Sequence[int] | np.ndarray) -> "BoxMasks":
        idx = [int(k) for k in np.asarray(index).reshape(-1)]
        return BoxMasks([self.crop(k) for k in idx], self.origins[idx], self.image_size)

    @property
    def nbytes(self) -> int:
        """Bytes stored (bit-packed crops)."""
        return int(sum(p.nbytes for p in self._packed))

    def rle(self) -> list[dict[str, Any]]:
        """COCO compressed RLE per mask ({"size": [H,W], "counts": str}), computed from the crops."""
        return [crop_to_rle(self.crop(i), int(x0), int(y0), self.image_size) for i, (x0, y0) in enumerate(self.origins)]

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> "BoxMasks":
        """bool [N,H,W] -> BoxMasks cropped to each mask's bounding box (an empty mask keeps a 0x0 crop)."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"expected masks [N,H,W], got shape {masks.shape}")
        crops, origins = [], []
        for m in masks:
            c, x0, y0 = _tight(m.astype(bool, copy=False), 0, 0)
            crops.append(c)
            origins.append((x0, y0))
        return cls(crops, np.asarray(origins, dtype=np.int64).reshape(-1, 2), masks.shape[1:])

    def __repr__(self) -> str:
        return f"BoxMasks(n={len(self)}, image_size={self.image_size}, crop_bytes={self.nbytes})"


def _tight(crop: np.ndarray, x0: int, y0: int) -> tuple[np.ndarray, int, int]:
    """Shrink a bool crop to the bounding box of its True pixels (0x0 when there are none)."""
    rows = np.flatnonzero(crop.any(axis=1))
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=bool), x0, y0
    cols = np.flatnonzero(crop.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return np.ascontiguousarray(crop[r0:r1, c0:c1]), x0 + c0, y0 + r0


# -- model output -> box-local masks -------------------------------------------------------------------
def _source_index(dst: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear (align_corners=False) source pixels and weight for destination pixels `dst`."""
    src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _support(lo: int, hi: int, scale: float, size: int) -> tuple[int, int]:
    """Destination range [a, b) whose bilinear sources can touch source pixels [lo, hi] (inclusive)."""
    # destination d reads floor(src) and floor(src)+1 with src = (d + 0.5) * scale - 0.5; one pixel of slack each
    # side covers rounding and the clamping at the borders.
    a = int(np.floor((lo - 1 + 0.5) / scale - 0.5)) - 1
    b = int(np.ceil((hi + 1 + 0.5) / scale - 0.5)) + 2
    return max(0, a), min(size, b)


def probs_to_box_mask(prob: np.ndarray, image_size: tuple[int, int],
                      threshold: float = MASK_THRESHOLD) -> tuple[np.ndarray, int, int]:
    """One probability map [h,w] (the backend's input resolution) -> (bool crop, x0, y0) at `image_size`.

    Same result as bilinear-resizing the whole map to (H, W) and thresholding (what torch's F.interpolate does),
    but only the region that can exceed the threshold is computed, in strips of ROW_STRIP rows.
    """
    H, W = image_size
    h, w = prob.shape
    above = prob > threshold
    rows = np.flatnonzero(above.any(axis=1))
    if len(rows) == 0 or H == 0 or W == 0:
        return np.zeros((0, 0), dtype=bool), 0, 0
    cols = np.flatnonzero(above.any(axis=0))
    if (h, w) == (H, W):
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return _tight(above[r0:r1, c0:c1], c0, r0)
    sy, sx = h / H, w / W
    y0, y1 = _support(int(rows[0]), int(rows[-1]), sy, H)
    x0, x1 = _support(int(cols[0]), int(cols[-1]), sx, W)
    xi0, xi1, wx = _source_index(np.arange(x0, x1, dtype=np.float64), sx, w)
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    p = prob.astype(np.float32, copy=False)
    for s in range(y0, y1, ROW_STRIP):
        e = min(y1, s + ROW_STRIP)
        yi0, yi1, wy = _source_index(np.arange(s, e, dtype=np.float64), sy, h)
        top = p[yi0][:, xi0] * (1 - wx) + p[yi0][:, xi1] * wx
        bottom = p[yi1][:, xi0] * (1 - wx) + p[yi1][:, xi1] * wx
        crop[s - y0:e - y0] = (top * (1 - wy[:, None]) + bottom * wy[:, None]) > threshold
    return _tight(crop, x0, y0)


def probs_to_box_masks(probs: np.ndarray, input_size: tuple[int, int], image_size: tuple[int, int],
                       threshold: float = MASK_THRESHOLD) -> BoxMasks:
    """[N,1,h',w'] or [N,h',w'] probabilities at the backend's input (maybe padded past `input_size` (h, w)) ->
    BoxMasks at `image_size` (H, W). One detection at a time: peak memory is one mask's crop, not N*H*W."""
    probs = np.asarray(probs)
    if probs.ndim == 4:
        probs = probs[:, 0]
    h, w = input_size
    crops, origins = [], []
    for prob in probs:
        c, x0, y0 = probs_to_box_mask(prob[:h, :w], image_size, threshold)
        crops.append(c)
        origins.append((x0, y0))
    return BoxMasks(crops, np.asarray(origins, dtype=np.int64).reshape(-1, 2), image_size)


# -- RLE --------------------------------------------------------------------------------------------------
def crop_rle_counts(crop: np.ndarray, x0: int, y0: int, size: tuple[int, int]) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with a run of 0s) of `crop` placed at (x0, y0)
    in an all-False (H, W) image; memory follows the crop, not H*W."""
    H, W = int(size[0]), int(size[1])
    crop = np.asarray(crop, dtype=bool)
    if crop.size == 0 or not crop.any():
        return [H * W]
    h, w = crop.shape
    padded = np.zeros((w, h + 2), dtype=np.int8)  # column-major: one row per image column
    padded[:, 1:-1] = crop.T
    edges = np.diff(padded, axis=1)
    sc, sr = np.nonzero(edges == 1)  # sorted by column, then row: column-major order
    ec, er = np.nonzero(edges == -1)
    starts = (x0 + sc).astype(np.int64) * H + y0 + sr
    ends = (x0 + ec).astype(np.int64) * H + y0 + er
    # a run ending at the bottom of one column and one starting at the top of the next are one run
    joined = np.flatnonzero(ends[:-1] == starts[1:])
    if len(joined):
        starts = np.delete(starts, joined + 1)
        ends = np.delete(ends, joined)
    bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, H * W
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds)
    return (counts[:-1] if counts[-1] == 0 else counts).tolist()  # no trailing empty run (as pycocotools)


def crop_to_rle(crop: np.ndarray, x0: int, y0: int, size: tuple[int, int]) -> dict[str, Any]:
    """COCO compressed RLE ({"size": [H,W], "counts": str}) of `crop` placed at (x0, y0) in an (H, W) image."""
    from pycocotools import mask as mask_utils

    H, W = int(size[0]), int(size[1])
    rle = mask_utils.frPyObjects({"size": [H, W], "counts": crop_rle_counts(crop, x0, y0, (H, W))}, H, W)
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}

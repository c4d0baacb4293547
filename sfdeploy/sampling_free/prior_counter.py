"""Counting foreground/background anchors of one image the way the model's loss matches them (sampling_free.prior).

The model's anchor generator at the size its transform resizes and pads to, the loss's matcher, and the pruning
that keeps the counts exactly those of the dense ``matcher(box_iou(gt, all_anchors))`` (see prior.py's docstring).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import ModelConfig
from ..models.table import DETECTOR_TABLE

SIZE_DIVISIBLE = 32
_SLACK = 1e-3  # relative slack on the pruning bound (float32 IoU vs exact arithmetic); pruning stays conservative


# ---------------------------------------------------------------------------------------------- geometry
def transformed_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) after GeneralizedRCNNTransform's resize: scale = min(min/short, max/long), floor(side * scale)."""
    scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
    # torch.nn.functional.interpolate(scale_factor=s, recompute_scale_factor=True) -> floor(float(side) * s)
    return int(math.floor(float(height) * scale)), int(math.floor(float(width) * scale))


def padded_size(height: int, width: int, divisible: int = SIZE_DIVISIBLE) -> tuple[int, int]:
    """GeneralizedRCNNTransform.batch_images pads up to a multiple of `divisible` (a batch of one image)."""
    return (int(math.ceil(float(height) / divisible) * divisible), int(math.ceil(float(width) / divisible) * divisible))


def scale_boxes(boxes: Tensor, original: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """torchvision's resize_boxes: per-axis float32 ratios new / original."""
    ratio_h = torch.tensor(new[0], dtype=torch.float32) / torch.tensor(original[0], dtype=torch.float32)
    ratio_w = torch.tensor(new[1], dtype=torch.float32) / torch.tensor(original[1], dtype=torch.float32)
    xmin, ymin, xmax, ymax = boxes.unbind(1)
    return torch.stack((xmin * ratio_w, ymin * ratio_h, xmax * ratio_w, ymax * ratio_h), dim=1)


@dataclass
class _Layout:
    """The anchors of one padded image size and the grid structure used to prune the matching."""

    anchors: Tensor  # [A, 4] float32, exactly the model's
    num_per_level: list[int]
    # One row per (level, base anchor): offset, grid h, grid w, anchors per location, stride h, stride w, k
    cells: np.ndarray  # int64 [LK, 7]
    base: np.ndarray  # float64 [LK, 4] base anchor (anchor at grid cell (0, 0))


class _Counter:
    """Counts fg/bg anchors of images with the model's anchor generator and the loss's matcher."""

    def __init__(self, cfg: ModelConfig, model: torch.nn.Module):
        self.cfg = cfg
        self.kind = DETECTOR_TABLE[cfg.detector].matching  # "retinanet" | "fcos" | "rpn"
        if self.kind == "rpn":
            self.anchor_generator = model.rpn.anchor_generator
            self.matcher = model.rpn.proposal_matcher
            self.strides = [4, 8, 16, 32, 64]
        else:
            self.anchor_generator = model.anchor_generator
            self.matcher = getattr(model, "proposal_matcher", None)
            self.strides = [8, 16, 32, 64, 128]
        self.center_radius = float(getattr(model, "center_sampling_radius", 0.0))
        # Border-crossing RPN anchors the loss ignores (ModelConfig.rpn_straddle_thresh): neither fg nor bg.
        self.straddle = cfg.rpn_straddle_thresh if self.kind == "rpn" else None
        self.min_size = int(model.transform.min_size[-1])
        self.max_size = int(model.transform.max_size)
        self.divisible = int(model.transform.size_divisible)
        self.backbone = model.backbone
        self._layouts: dict[tuple[int, int], _Layout] = {}
        self._formula_checked = False
        self._formula_ok = True

    # -- feature map sizes ---------------------------------------------------------------------
    def _formula_shapes(self, h: int, w: int) -> list[tuple[int, int]]:
        shapes = []
        for s in self.strides:
            fh, fw = h, w
            for _ in range(int(round(math.log2(s)))):
                fh, fw = -(-fh // 2), -(-fw // 2)
            shapes.append((fh, fw))
        return shapes

    def _real_shapes(self, h: int, w: int) -> list[tuple[int, int]]:
        """Shapes from a forward of the model's backbone on the meta device (no compute, exact)."""
        meta = copy.deepcopy(self.backbone).to("meta").eval()
        with torch.no_grad():
            feats = meta(torch.empty(1, 3, h, w, device="meta"))
        return [tuple(int(v) for v in f.shape[-2:]) for f in feats.values()]  # type: ignore[misc]

    def feature_shapes(self, h: int, w: int) -> list[tuple[int, int]]:
        if not self._formula_checked:
            self._formula_checked = True
            probes = [(h, w), (3 * self.divisible, 5 * self.divisible)]
            self._formula_ok = all(self._formula_shapes(*p) == self._real_shapes(*p) for p in probes)
        return self._formula_shapes(h, w) if self._formula_ok else self._real_shapes(h, w)

    # -- anchors -------------------------------------------------------------------------------
    def layout(self, ph: int, pw: int) -> _Layout:
        key = (ph, pw)
        lay = self._layouts.get(key)
        if lay is not None:
            return lay
        from torchvision.models.detection.image_list import ImageList

        shapes = self.feature_shapes(ph, pw)
        feats = [torch.zeros(1, 1, fh, fw) for fh, fw in shapes]
        images = ImageList(torch.zeros(1, 1, ph, pw), [(ph, pw)])
        anchors = self.anchor_generator(images, feats)[0].contiguous()
        per_loc = self.anchor_generator.num_anchors_per_location()
        num_per_level = [fh * fw * k for (fh, fw), k in zip(shapes, per_loc)]
        cells, base, off = [], [], 0
        for (fh, fw), k_per, n in zip(shapes, per_loc, num_per_level):
            for k in range(k_per):
                cells.append((off, fh, fw, k_per, ph // fh, pw // fw, k))
                base.append(anchors[off + k].double().numpy())
            off += n
        assert off == anchors.shape[0], "anchor count does not match the feature map shapes"
        lay = _Layout(anchors, num_per_level, np.asarray(cells, dtype=np.int64), np.asarray(base, dtype=np.float64))
        self._layouts[key] = lay
        return lay

    # -- one image -----------------------------------------------------------------------------
    def count(self, height: int, width: int, boxes: np.ndarray) -> tuple[int, int]:
        """(fg, bg) anchors of one image of the given original size with `boxes` (xyxy, crowd removed)."""
        new = transformed_size(height, width, self.min_size, self.max_size)
        lay = self.layout(*padded_size(*new, self.divisible))
        num_anchors = lay.anchors.shape[0]
        if self.straddle is not None:
            return self._count_visible(lay, new, height, width, boxes)
        if len(boxes) == 0:
            return 0, num_anchors  # every anchor/point is background (torchvision's loss does the same)
        gt = scale_boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), (height, width), new)
        if self.kind == "fcos":
            from .heads import fcos_match

            npl = lay.num_per_level
            matched = fcos_match(lay.anchors, gt, npl, self.center_radius)
            fg = int((matched >= 0).sum())
            return fg, num_anchors - fg
        return self._count_iou(lay, gt)

    def _count_visible(self, lay: _Layout, new: tuple[int, int], height: int, width: int,
                       boxes: np.ndarray) -> tuple[int, int]:
        """(fg, bg) as the straddle-aware RPN loss labels them: match on every anchor, then drop the straddling."""
        from torchvision.ops import box_iou

        from .heads import straddling_anchors

        visible = ~straddling_anchors(lay.anchors, new, float(self.straddle))
        if len(boxes) == 0:
            return 0, int(visible.sum())
        gt = scale_boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), (height, width), new)
        matched = self.matcher(box_iou(gt, lay.anchors))[visible]
        return int((matched >= 0).sum()), int((matched == -1).sum())

    def count_dense(self, height: int, width: int, boxes: np.ndarray) -> tuple[int, int]:
        """Reference: the matcher on the full IoU matrix (what the loss computes), no pruning."""
        from torchvision.ops import box_iou

        new = transformed_size(height, width, self.min_size, self.max_size)
        lay = self.layout(*padded_size(*new, self.divisible))
        if len(boxes) == 0 or self.kind == "fcos" or self.straddle is not None:
            return self.count(height, width, boxes)
        gt = scale_boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), (height, width), new)
        matched = self.matcher(box_iou(gt, lay.anchors))
        return int((matched >= 0).sum()), int((matched == -1).sum())

    def _candidates(self, lay: _Layout, gt: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Indices (with repeats) of anchors that may have IoU >= t[g] with box g of `gt` (float64 [G,4]).

        IoU >= t implies I >= t (A_a + A_g) / (1 + t) and, as I <= I_x * min(h_a, h_g), a minimum overlap I_x
        along x (likewise y); that bounds the grid columns/rows per (box, level, base anchor). t = 0: overlap.
        Bounds are rounded outwards and relaxed by _SLACK, so the set is a superset of the exact one.
        """
        c, b = lay.cells, lay.base
        aw, ah = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]  # [LK]
        gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]  # [G]
        tt = (np.asarray(t, dtype=np.float64) * (1 - _SLACK))[:, None]
        inter_min = (tt / (1 + tt)) * (aw * ah + (gw * gh)[:, None])  # [G, LK]
        with np.errstate(divide="ignore", invalid="ignore"):
            ix = inter_min / np.minimum(ah, gh[:, None])
            iy = inter_min / np.minimum(aw, gw[:, None])
        ix = np.where(inter_min > 0, ix, 0.0)
        iy = np.where(inter_min > 0, iy, 0.0)
        ok = (ix <= np.minimum(aw, gw[:, None]) * (1 + _SLACK)) & (iy <= np.minimum(ah, gh[:, None]) * (1 + _SLACK))
        sh, sw = c[:, 4].astype(np.float64), c[:, 5].astype(np.float64)
        with np.errstate(invalid="ignore"):
            j_lo = np.maximum(np.floor((gt[:, 0:1] + ix - b[:, 2]) / sw), 0)
            j_hi = np.minimum(np.ceil((gt[:, 2:3] - ix - b[:, 0]) / sw), c[:, 2] - 1)
            i_lo = np.maximum(np.floor((gt[:, 1:2] + iy - b[:, 3]) / sh), 0)
            i_hi = np.minimum(np.ceil((gt[:, 3:4] - iy - b[:, 1]) / sh), c[:, 1] - 1)
            ok &= (j_hi >= j_lo) & (i_hi >= i_lo)
        g_idx, cell = np.nonzero(ok)
        if len(g_idx) == 0:
            return np.zeros(0, dtype=np.int64)
        j0 = j_lo[g_idx, cell].astype(np.int64)
        i0 = i_lo[g_idx, cell].astype(np.int64)
        nj = j_hi[g_idx, cell].astype(np.int64) - j0 + 1
        ni = i_hi[g_idx, cell].astype(np.int64) - i0 + 1
        sizes = ni * nj
        total = int(sizes.sum())
        rect = np.repeat(np.arange(len(sizes)), sizes)
        local = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        njr = nj[rect]
        ii = i0[rect] + local // njr
        jj = j0[rect] + local % njr
        cc = c[cell][rect]
        return cc[:, 0] + (ii * cc[:, 2] + jj) * cc[:, 3] + cc[:, 6]

    def _dense(self, lay: _Layout, gt: Tensor) -> tuple[int, int]:
        from torchvision.ops import box_iou

        matched = self.matcher(box_iou(gt, lay.anchors))
        return int((matched >= 0).sum()), int((matched == -1).sum())

    def _probe_best_iou(self, lay: _Layout, gt: np.ndarray) -> np.ndarray:
        """A lower bound of each box's best anchor IoU: the IoU with the anchor nearest its centre, per cell."""
        c, b = lay.cells, lay.base
        sh, sw = c[:, 4].astype(np.float64), c[:, 5].astype(np.float64)
        cx, cy = (gt[:, 0:1] + gt[:, 2:3]) / 2, (gt[:, 1:2] + gt[:, 3:4]) / 2
        j = np.clip(np.round((cx - (b[:, 0] + b[:, 2]) / 2) / sw), 0, c[:, 2] - 1)
        i = np.clip(np.round((cy - (b[:, 1] + b[:, 3]) / 2) / sh), 0, c[:, 1] - 1)
        ax0, ax1 = b[:, 0] + j * sw, b[:, 2] + j * sw
        ay0, ay1 = b[:, 1] + i * sh, b[:, 3] + i * sh
        iw = np.clip(np.minimum(ax1, gt[:, 2:3]) - np.maximum(ax0, gt[:, 0:1]), 0, None)
        ih = np.clip(np.minimum(ay1, gt[:, 3:4]) - np.maximum(ay0, gt[:, 1:2]), 0, None)
        inter = iw * ih
        union = (ax1 - ax0) * (ay1 - ay0) + ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[:, None] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        return iou.max(axis=1)

    def _count_iou(self, lay: _Layout, gt: Tensor) -> tuple[int, int]:
        """Exact (fg, bg) of `matcher(box_iou(gt, anchors))`, evaluated on the anchors that can matter.

        Candidates per box: every anchor that may reach IoU >= low (others are BELOW_LOW_THRESHOLD for this box)
        and, with the low-quality rule, every anchor that may reach the box's best IoU, bounded from below by a
        probe (the nearest anchor per level and shape). The best anchors of each box are then candidates, so the
        matcher's row maxima, thresholds and low-quality matches on the candidate columns equal the dense ones;
        all other anchors are background.
        """
        from torchvision.ops import box_iou

        matcher = self.matcher
        num_anchors = lay.anchors.shape[0]
        low = float(matcher.low_threshold)
        if low <= 0:  # nothing can be pruned: every anchor is a candidate
            return self._dense(lay, gt)
        gt64 = gt.double().numpy()
        t = np.full(len(gt64), low)
        if matcher.allow_low_quality_matches:
            t = np.minimum(t, self._probe_best_iou(lay, gt64))
        mask = np.zeros(num_anchors, dtype=bool)
        mask[self._candidates(lay, gt64, t)] = True
        cand = torch.from_numpy(np.flatnonzero(mask))
        if len(cand) == 0:
            return self._dense(lay, gt)  # only degenerate boxes: let the matcher decide on everything
        q = box_iou(gt, lay.anchors[cand])
        if matcher.allow_low_quality_matches and bool((q.max(dim=1).values <= 0).any()):
            return self._dense(lay, gt)  # a box overlapping no anchor: the low-quality rule picks every anchor
        matched = matcher(q)
        fg = int((matched >= 0).sum())
        bg = int((matched == -1).sum()) + (num_anchors - len(cand))
        return fg, bg

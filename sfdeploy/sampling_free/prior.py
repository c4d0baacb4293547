"""Optimal prior estimation (paper sec. 2, eq. 17-18): pi = N_fg / (N_fg + N_bg) / C from the annotations alone.

One pass over ``dataset.annotation(i)`` (no image is decoded, no network runs). For each image the model's own
anchors (or FCOS points) are generated at the size the model's ``GeneralizedRCNNTransform`` resizes and pads the
image to, the ground truth is scaled the same way, and the anchors are matched with the *loss's* matcher:

- RetinaNet: ``model.proposal_matcher(box_iou(gt, anchors))``: fg = matched >= 0, bg = matched == -1, -2 ignored;
- FCOS: ``heads.fcos_match`` with the model's center sampling radius: fg = matched >= 0, bg = the rest;
- Faster/Mask R-CNN: ``model.rpn.proposal_matcher`` (C = 1 for the RPN).

Speed (COCO has 118k images): anchors are generated once per distinct padded size; for the IoU matchers only the
anchors that can reach the matcher's low threshold with some box (plus each box's best anchors, which the
low-quality rule makes foreground) are put through ``box_iou`` + the matcher. Every other anchor has IoU below the
low threshold with every box and is not any box's best anchor, so the matcher would label it background anyway:
the counts are exactly those of the dense ``matcher(box_iou(gt, all_anchors))`` (tests check this).
Large data sets are split over 2 worker processes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..config import ModelConfig
from ..models.table import DETECTOR_TABLE

# Bump when the counting rule changes: cached priors computed by an older rule are then ignored.
METHOD_VERSION = "prior-v1"
SIZE_DIVISIBLE = 32
# Below this many images one process is faster than starting workers.
PARALLEL_MIN_IMAGES = 4000
_SLACK = 1e-3  # relative slack on the pruning bound (float32 IoU vs exact arithmetic); pruning stays conservative


class AnnotatedDataset(Protocol):
    class_names: list[str]

    def __len__(self) -> int: ...

    def annotation(self, i: int) -> Any: ...

    def fingerprint(self) -> str: ...


@dataclass
class PriorResult:
    """Estimated priors per head ("cls" one-stage, "rpn" two-stage) with the counts they come from."""

    pi: dict[str, float]
    fg: dict[str, int]
    bg: dict[str, int]
    images: int
    seconds: float
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d


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


# ---------------------------------------------------------------------------------------------- the pass
def _gt_of(ann: Any) -> np.ndarray:
    boxes = np.asarray(ann.boxes, dtype=np.float32).reshape(-1, 4)
    crowd = getattr(ann, "iscrowd", None)
    if crowd is not None and len(crowd):
        boxes = boxes[np.asarray(crowd).reshape(-1) == 0]
    return boxes


def _count_range(counter: _Counter, dataset: AnnotatedDataset, start: int, stop: int, bar: Any = None,
                 report: Any = None) -> tuple[int, int]:
    fg = bg = 0
    pending = 0
    for i in range(start, stop):
        ann = dataset.annotation(i)
        f, b = counter.count(int(ann.height), int(ann.width), _gt_of(ann))
        fg += f
        bg += b
        pending += 1
        if pending >= 64:
            if bar is not None:
                bar.update(pending)
            if report is not None:
                report(pending)
            pending = 0
    if bar is not None and pending:
        bar.update(pending)
    if report is not None and pending:
        report(pending)
    return fg, bg


# Worker state for the fork-based pool (inherited, never pickled).
_WORKER: dict[str, Any] = {}


def _worker_run(args: tuple[int, int]) -> tuple[int, int]:
    torch.set_num_threads(1)
    queue = _WORKER.get("queue")
    return _count_range(_WORKER["counter"], _WORKER["dataset"], args[0], args[1],
                        report=(lambda n: queue.put(n)) if queue is not None else None)


def _count_parallel(counter: _Counter, dataset: AnnotatedDataset, n: int, workers: int, bar: Any) -> tuple[int, int]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    _WORKER.update(counter=counter, dataset=dataset, queue=queue)
    chunk = max(256, n // (workers * 16))
    ranges = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    fg = bg = 0
    try:
        with ctx.Pool(workers) as pool:
            pending = pool.map_async(_worker_run, ranges)
            done = 0
            while not pending.ready() or not queue.empty():
                while not queue.empty():
                    k = queue.get()
                    done += k
                    if bar is not None:
                        bar.update(k)
                pending.wait(0.2)
            for f, b in pending.get():
                fg += f
                bg += b
    finally:
        _WORKER.clear()
    return fg, bg


def _default_workers(n: int) -> int:
    if n < PARALLEL_MIN_IMAGES or sys.platform != "linux":
        return 1
    env = os.environ.get("SFDEPLOY_PRIOR_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(2, len(os.sched_getaffinity(0))))


# ---------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """$SFDEPLOY_CACHE_DIR/priors, else ~/.cache/sfdeploy/priors."""
    root = os.environ.get("SFDEPLOY_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "sfdeploy") / "priors"


def _cache_key(cfg: ModelConfig, counter: _Counter, fingerprint: str) -> tuple[str, dict[str, Any]]:
    m = counter.matcher
    desc = {
        "method": METHOD_VERSION,
        "data": fingerprint,
        "detector": cfg.detector,
        "backbone": cfg.backbone,
        "anchor_base_size": cfg.anchor_base_size,
        "min_size": counter.min_size,
        "max_size": counter.max_size,
        "size_divisible": counter.divisible,
        "num_classes": cfg.num_classes,
        "matcher": None if m is None else [float(m.high_threshold), float(m.low_threshold),
                                            bool(m.allow_low_quality_matches)],
        "center_sampling_radius": counter.center_radius if counter.kind == "fcos" else None,
    }
    if counter.straddle is not None:  # only then, so that existing cache entries stay valid
        desc["rpn_straddle_thresh"] = float(counter.straddle)
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
    return key, desc


# ---------------------------------------------------------------------------------------------- API
def estimate_priors(cfg: ModelConfig, dataset: AnnotatedDataset, cache_dir: str | Path | None = None,
                    progress: bool = True, *, use_cache: bool = True, workers: int | None = None) -> PriorResult:
    """The optimal prior of `cfg.prior_heads` for `dataset` (one pass over its annotations).

    cache_dir: where the JSON results live (default `default_cache_dir()`); `use_cache=False` neither reads nor
    writes it. `workers`: processes (default: 2 for large data sets on Linux, else 1).
    """
    from ..models import build_model

    t0 = time.perf_counter()
    n = len(dataset)
    # Only the anchor generator, matchers and transform are used: a narrow FPN builds faster, same anchors.
    model = build_model(cfg.replace(fpn_channels=32), load_backbone_weights=False).eval()
    counter = _Counter(cfg, model)
    head = cfg.prior_heads[0]
    classes = 1 if head == "rpn" else cfg.num_classes

    path = None
    if use_cache:
        key, desc = _cache_key(cfg, counter, dataset.fingerprint())
        path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = path / f"{key}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                return PriorResult(pi={k: float(v) for k, v in data["pi"].items()},
                                   fg={k: int(v) for k, v in data["fg"].items()},
                                   bg={k: int(v) for k, v in data["bg"].items()},
                                   images=int(data["images"]), seconds=time.perf_counter() - t0, cached=True,
                                   extra={"cache_file": str(path), "computed_seconds": data.get("seconds")})
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable cache entry: recompute and overwrite it

    from tqdm import tqdm

    workers = _default_workers(n) if workers is None else max(1, int(workers))
    bar = tqdm(total=n, desc=f"prior ({cfg.detector})", unit="img", file=sys.stderr, disable=not progress,
               mininterval=0.5, dynamic_ncols=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # small tensors: threading costs more than it gains
        if workers > 1:
            counter.feature_shapes(3 * counter.divisible, 5 * counter.divisible)  # check the shape rule once
            fg, bg = _count_parallel(counter, dataset, n, workers, bar)
        else:
            fg, bg = _count_range(counter, dataset, 0, n, bar)
    finally:
        torch.set_num_threads(threads)
        bar.close()
    total = fg + bg
    pi = fg / total / classes if total else 0.0
    if fg == 0:
        warnings.warn(f"no foreground {'anchors' if cfg.detector != 'fcos' else 'points'} in {n} images: "
                      "the prior is 0 (does the data set have boxes?)", RuntimeWarning, stacklevel=2)
    seconds = time.perf_counter() - t0
    result = PriorResult(pi={head: pi}, fg={head: fg}, bg={head: bg}, images=n, seconds=seconds, cached=False)
    if path is not None:
        record = result.to_dict()
        record["key"] = desc  # what the entry was computed for, for humans
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
            os.replace(tmp, path)
            result.extra["cache_file"] = str(path)
        except OSError as exc:  # a read-only cache must not fail the estimate
            warnings.warn(f"cannot write prior cache {path}: {exc}", RuntimeWarning, stacklevel=2)
    return result

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

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..config import ModelConfig
from .prior_counter import (  # noqa: F401  (the counter lives in prior_counter; these names stay importable here)
    SIZE_DIVISIBLE,
    _Counter,
    _Layout,
    padded_size,
    scale_boxes,
    transformed_size,
)

# Bump when the counting rule changes: cached priors computed by an older rule are then ignored.
METHOD_VERSION = "prior-v1"
# Below this many images one process is faster than starting workers.
PARALLEL_MIN_IMAGES = 4000


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

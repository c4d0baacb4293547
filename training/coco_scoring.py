"""COCO scoring of detection results (faster-coco-eval, or pycocotools when it is not installed).

``coco_metrics(gt, results, iou_type)`` is the scoring step of ``training.evaluate`` alone; ``training.eval_report``
reuses its COCO index helpers. Values in [0, 1]; -1.0 means "no ground truth in this range".
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

# Keys of the COCO summary (pycocotools `stats` indices) reported per IoU type.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}
BACKENDS = ("auto", "faster_coco_eval", "pycocotools")


class EvaluationError(RuntimeError):
    """Evaluation cannot run (e.g. no COCO evaluation package installed); the message says what to install."""


# -- COCO scoring --------------------------------------------------------------------------------------------
def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO evaluation backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend in ("auto", "faster_coco_eval"):
        try:
            import faster_coco_eval  # noqa: F401

            return "faster_coco_eval"
        except ImportError:
            if backend == "faster_coco_eval":
                raise EvaluationError("faster-coco-eval is not installed: pip install faster-coco-eval") from None
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise EvaluationError(
            "COCO evaluation needs faster-coco-eval or pycocotools: pip install faster-coco-eval pycocotools"
        ) from None
    return "pycocotools"


def _coco_classes(backend: str) -> tuple[type, type]:
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _index(coco_cls: type, dataset: dict[str, Any]) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _empty_results(coco_cls: type, gt: dict[str, Any]) -> Any:
    """A detections object with no detections (loadRes cannot take an empty list)."""
    return _index(coco_cls, {"images": list(gt["images"]), "categories": list(gt["categories"]),
                             "annotations": []})


def coco_metrics(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str = "bbox",
                 backend: str = "auto") -> tuple[dict[str, float], dict[str, float]]:
    """Score COCO `results` against the COCO ground-truth dict `gt`.

    Returns (summary {AP, AP50, AP75, APs, APm, APl, AR100}, per-class AP {class name: AP@[.5:.95]}).
    A class without ground truth gets -1.0 (COCO's convention), as does a summary entry with no GT in range.
    """
    backend = _resolve_backend(backend)
    coco_cls, eval_cls = _coco_classes(backend)
    # pycocotools' loadRes mutates the result dicts (adds area/id/bbox); keep the caller's untouched.
    results = [dict(r) for r in results]
    gt = {**gt, "annotations": [dict(a) for a in gt.get("annotations", [])]}
    gt.setdefault("info", {})
    coco_gt = _index(coco_cls, gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_cls, gt)
        evaluator = eval_cls(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    summary = {key: float(stats[idx]) for key, idx in _STATS_INDEX.items()}
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max dets]
    precision = np.asarray(evaluator.eval["precision"])
    cat_ids = list(evaluator.params.catIds)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class: dict[str, float] = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[names.get(cat_id, str(cat_id))] = float(p.mean()) if p.size else -1.0
    return summary, per_class

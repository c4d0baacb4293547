"""Evaluation a person reads: per-class precision-recall curves and a confusion matrix as images, and the per-class
AP table in markdown, written next to the metrics JSON by `sfdeploy eval --out DIR`.

The PR curves are COCO's own (COCOeval's interpolated precision at IoU 0.5, all areas, 100 detections), so they agree
with the AP numbers. The confusion matrix needs one confidence threshold; calibrated Sampling-Free scores are small
(about the foreground rate) where baseline scores are not, so no fixed value suits both: the matrix keeps the N best
detections of the whole set, N = the number of ground-truth objects, and states the score that implies.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .coco_scoring import _coco_classes, _empty_results, _index, _resolve_backend
from .evaluate import format_metrics

MATCH_IOU = 0.5


def pr_curves(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str = "bbox",
              backend: str = "auto") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{class name: (recall [101], precision [101])} at IoU 0.5; classes without ground truth are left out."""
    coco_cls, eval_cls = _coco_classes(_resolve_backend(backend))
    gt = {**gt, "annotations": [dict(a) for a in gt.get("annotations", [])]}
    gt.setdefault("info", {})
    coco_gt = _index(coco_cls, gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_cls, gt)
        evaluator = eval_cls(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    precision = np.asarray(evaluator.eval["precision"])  # [T, R, K, A, M]
    t = int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - MATCH_IOU)))
    recall = np.asarray(evaluator.params.recThrs, dtype=np.float64)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    curves = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[t, :, k, 0, -1]
        if (p > -1).any():
            curves[names.get(cat_id, str(cat_id))] = (recall, np.where(p > -1, p, 0.0))
    return curves


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xywh boxes a [N,4] and b [M,4]."""
    ax0, ay0, ax1, ay1 = a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(ax0[:, None], bx0[None]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(ay0[:, None], by0[None]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def confusion_matrix(gt: dict[str, Any], results: list[dict[str, Any]],
                     score_thresh: float | None = None) -> tuple[np.ndarray, list[str], float]:
    """(matrix [C+1, C+1] with rows = true class, columns = predicted class, last = background; class names;
    the score threshold used). Each kept detection, best first, takes the unmatched ground-truth box of any class
    it overlaps most (IoU >= 0.5); crowd regions are ignored."""
    cats = [c["id"] for c in gt["categories"]]
    names = [c["name"] for c in gt["categories"]]
    col = {cid: k for k, cid in enumerate(cats)}
    background = len(cats)
    objects = [a for a in gt["annotations"] if not a.get("iscrowd")]
    if score_thresh is None:
        scores = sorted((float(r["score"]) for r in results), reverse=True)
        score_thresh = scores[min(len(objects), len(scores)) - 1] if scores and objects else 1.0
    matrix = np.zeros((len(cats) + 1, len(cats) + 1), dtype=np.int64)
    by_image: dict[Any, tuple[list, list]] = {img["id"]: ([], []) for img in gt["images"]}
    for a in objects:
        by_image.setdefault(a["image_id"], ([], []))[0].append(a)
    for r in results:
        if float(r["score"]) >= score_thresh:
            by_image.setdefault(r["image_id"], ([], []))[1].append(r)
    for truths, dets in by_image.values():
        dets = sorted(dets, key=lambda r: -float(r["score"]))
        matched = np.zeros(len(truths), dtype=bool)
        if truths and dets:
            ious = _iou(np.array([d["bbox"] for d in dets], dtype=np.float64),
                        np.array([t["bbox"] for t in truths], dtype=np.float64))
        for i, det in enumerate(dets):
            j = -1
            if truths:
                candidates = np.where(matched, -1.0, ious[i])
                j = int(np.argmax(candidates)) if candidates.max() >= MATCH_IOU else -1
            if j >= 0:
                matched[j] = True
                matrix[col[truths[j]["category_id"]], col[det["category_id"]]] += 1
            else:
                matrix[background, col[det["category_id"]]] += 1
        for t, m in zip(truths, matched):
            if not m:
                matrix[col[t["category_id"]], background] += 1
    return matrix, names, float(score_thresh)


def _save_figure(fig: Any, path: Path) -> None:
    from sfdeploy.io import atomic_path

    with atomic_path(path) as tmp:  # same suffix: matplotlib picks the format from it
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def _write_text(path: Path, text: str) -> None:
    from sfdeploy.io import atomic_write_text

    atomic_write_text(path, text)


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], per_class_ap: dict[str, float], title: str,
                   path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (recall, precision) in curves.items():
        ap = per_class_ap.get(name)
        label = f"{name} (AP {ap:.3f})" if ap is not None and ap >= 0 else name
        ax.plot(recall, precision, label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="lower left")
    _save_figure(fig, path)
    plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray, names: list[str], score_thresh: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = [*names, "background"]
    size = max(4.0, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix (IoU >= {MATCH_IOU}, score >= {score_thresh:.3g})")
    peak = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black", fontsize=8)
    _save_figure(fig, path)
    plt.close(fig)


def write_eval_report(out_dir: str | Path, metrics: dict[str, Any], details: dict[str, Any],
                      backend: str = "auto") -> dict[str, str]:
    """Write metrics.json, ap.md, pr_<type>.png per IoU type and confusion_matrix.png into ``out_dir``;
    returns {what: path}. ``details`` is what ``evaluate(..., details=...)`` filled in."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gt, results = details["gt"], details["results"]
    files: dict[str, str] = {}
    for iou_type in (t for t in ("bbox", "segm") if isinstance(metrics.get(t), dict)):
        rows = results if iou_type == "bbox" else [r for r in results if "segmentation" in r]
        path = out / f"pr_{iou_type}.png"
        plot_pr_curves(pr_curves(gt, rows, iou_type, backend), (metrics.get("per_class") or {}).get(iou_type, {}),
                       f"precision-recall at IoU {MATCH_IOU} ({iou_type})", path)
        files[f"pr_{iou_type}"] = str(path)
    matrix, names, thresh = confusion_matrix(gt, results)
    plot_confusion_matrix(matrix, names, thresh, out / "confusion_matrix.png")
    files["confusion_matrix"] = str(out / "confusion_matrix.png")
    _write_text(out / "ap.md", format_metrics(metrics, style="markdown") + "\n")
    files["ap_table"] = str(out / "ap.md")
    files["metrics"] = str(out / "metrics.json")
    record = {**metrics, "files": files,
              "confusion_matrix": {"classes": [*names, "background"], "score_thresh": thresh,
                                   "matrix": matrix.tolist()}}
    _write_text(out / "metrics.json", json.dumps(record, default=lambda o: o.item() if hasattr(o, "item") else str(o),
                                                 indent=1))
    metrics["files"] = files
    return files

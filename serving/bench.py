"""Benchmark artefacts: latency (median, p90) and throughput per backend x image size x batch size, after
warm-up; optionally accuracy (COCO AP) per artefact on a data set, so speed and accuracy sit in one table."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .predictor import Predictor


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def time_predictor(predictor: Predictor, size: int, batch: int = 1, runs: int = 20, warmup: int = 3,
                   seed: int = 0) -> dict[str, Any]:
    """Latency of predict_batch() on `batch` random size x size images (decoded arrays: model time + shared
    pre/post-processing, no file I/O); a batched graph runs them in one inference, a batch-1 graph in a loop."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
    for _ in range(warmup):
        predictor.predict_batch(images, max_batch=batch)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predictor.predict_batch(images, max_batch=batch)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"median_ms": round(med * 1000, 2), "p90_ms": round(percentile(times, 90) * 1000, 2),
            "images_per_s": round(batch / med, 2), "runs": runs}


def evaluate_ap(predictor: Predictor, data: str, split: str = "val", max_images: int | None = None
                ) -> dict[str, float]:
    """COCO bbox (and segm for Mask R-CNN) AP / AP50 of `predictor` on a data set (sfdeploy DATA spec)."""
    from sfdeploy.data import build_dataset, to_coco_gt

    dataset = build_dataset(data, split=split, with_masks=predictor.config.has_masks or None)
    if dataset.class_names != predictor.class_names:
        from sfdeploy.errors import UserError

        raise UserError(f"data set classes {dataset.class_names} differ from the model's {predictor.class_names}")
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    gt = to_coco_gt(dataset)
    keep_ids = {dataset.annotation(i).image_id for i in range(n)}
    gt["images"] = [im for im in gt["images"] if im["id"] in keep_ids]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep_ids]
    results: list[dict[str, Any]] = []
    for i in range(n):
        dets = predictor.predict_image(dataset.load_image(i), masks=predictor.config.has_masks)
        results.extend(dets.to_coco_results(dataset.annotation(i).image_id))
    out: dict[str, float] = {}
    for iou_type in (["bbox", "segm"] if predictor.config.has_masks and dataset.has_masks else ["bbox"]):
        stats = coco_eval(gt, results, iou_type)
        prefix = "" if iou_type == "bbox" else "mask_"
        out[prefix + "AP"], out[prefix + "AP50"] = round(stats[0], 4), round(stats[1], 4)
    return out


def coco_eval(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> list[float]:
    """COCO summary stats (faster_coco_eval when installed, else pycocotools); zeros without detections."""
    if not results:
        return [0.0] * 12
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(gt)
            coco_dt = coco_gt.loadRes(results)
            ev = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type)
        except ImportError:  # pragma: no cover
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results)
            ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [max(0.0, float(s)) for s in ev.stats]


def run_bench(artefacts: list[str], sizes: list[int], batches: list[int], runs: int = 20, warmup: int = 3,
              backend: str = "auto", device: str | None = None, data: str | None = None, data_split: str = "val",
              max_images: int | None = None, log: Any = sys.stderr) -> list[dict[str, Any]]:
    """One row per artefact x size x batch."""
    from . import load

    rows: list[dict[str, Any]] = []
    for path in artefacts:
        predictor = load(path, backend=backend, device=device)
        accuracy = evaluate_ap(predictor, data, data_split, max_images) if data else {}
        for size in sizes:
            for batch in batches:
                if log:
                    print(f"bench: {Path(path).name} [{predictor.backend}] {size}px batch {batch}", file=log)
                timing = time_predictor(predictor, size, batch, runs, warmup)
                rows.append({"artefact": Path(path).name, "backend": predictor.backend, "device": predictor.device,
                             "detector": predictor.config.detector, "method": predictor.config.method,
                             "backbone": predictor.config.backbone, "size": size, "batch": batch, **timing,
                             **accuracy})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    ap_keys = [k for k in ("AP", "AP50", "mask_AP", "mask_AP50") if any(k in r for r in rows)]
    head = ["artefact", "backend", "detector", "size", "batch", "median ms", "p90 ms", "img/s", *ap_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["artefact"], r["backend"], r["detector"], str(r["size"]), str(r["batch"]), f"{r['median_ms']:.1f}",
                 f"{r['p90_ms']:.1f}", f"{r['images_per_s']:.2f}", *[f"{r[k]:.3f}" if k in r else "" for k in ap_keys]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

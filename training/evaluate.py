"""COCO evaluation of a detector on any DetectionDataset: bbox (and segm for Mask R-CNN) AP, per-class AP.

``evaluate(model, dataset)`` runs the model in eval mode, maps its boxes/masks back to each image's annotated
size, and scores them against ``sfdeploy.data.to_coco_gt(dataset)`` with faster-coco-eval (C++ accumulate,
fast) or pycocotools when faster-coco-eval is not installed. ``coco_metrics(gt, results, iou_type)`` is the
scoring step alone (also used by the tests to check the numbers against pycocotools).

Metric conventions are COCO's: values in [0, 1]; -1.0 means "no ground truth in this range" (e.g. APs when the
data has no small objects). Zero detections give AP 0 (not a crash).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .coco_scoring import (  # noqa: F401  (scoring lives in coco_scoring; these names stay importable here)
    _STATS_INDEX,
    BACKENDS,
    METRIC_KEYS,
    EvaluationError,
    _coco_classes,
    _empty_results,
    _index,
    _resolve_backend,
    coco_metrics,
)


# -- running a model ------------------------------------------------------------------------------------------
class _Head:
    """The first `n` images of a DetectionDataset (same annotations, masks, pixels): for --max-images."""

    def __init__(self, dataset: Any, n: int) -> None:
        self._dataset = dataset
        self._n = min(int(n), len(dataset))
        self.class_names = dataset.class_names
        self.category_ids = getattr(dataset, "category_ids", None)
        self.has_masks = dataset.has_masks
        self.source = f"{dataset.source} (first {self._n} images)"

    def __len__(self) -> int:
        return self._n

    def _check(self, i: int) -> int:
        if not 0 <= i < self._n:
            raise IndexError(i)
        return i

    def __getitem__(self, i: int) -> Any:
        return self._dataset[self._check(int(i))]

    def annotation(self, i: int) -> Any:
        return self._dataset.annotation(self._check(i))

    def masks(self, i: int) -> Any:
        return self._dataset.masks(self._check(i))

    def annotation_areas(self, i: int) -> Any:
        return self._dataset.annotation_areas(self._check(i))


def _rle_str(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def detections_to_coco(output: dict[str, Any], image_id: int, input_size: tuple[int, int],
                       image_size: tuple[int, int], with_masks: bool = False,
                       category_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """One image's model output -> COCO result dicts, boxes/masks rescaled from input_size to image_size (h, w).

    `output` holds torch tensors or numpy arrays: boxes xyxy [N,4], scores [N], labels [N] (1..C),
    masks [N,1,h,w] (or [N,h,w]) probabilities when `with_masks`. The category id of label k is
    `category_ids[k-1]` (the data's own ids), or k itself when `category_ids` is None.
    """
    boxes = np.asarray(_numpy(output["boxes"]), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(_numpy(output["scores"]), dtype=np.float64).reshape(-1)
    labels = np.asarray(_numpy(output["labels"]), dtype=np.int64).reshape(-1)
    if len(boxes) == 0:
        return []
    (in_h, in_w), (h, w) = input_size, image_size
    if (in_h, in_w) != (h, w):
        boxes = boxes * np.array([w / in_w, h / in_h, w / in_w, h / in_h])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    rles = None
    if with_masks and output.get("masks") is not None:
        rles = _encode_masks(output["masks"], (h, w))
    results = []
    for k in range(len(boxes)):
        x0, y0, x1, y1 = boxes[k]
        label = int(labels[k])
        category_id = int(category_ids[label - 1]) if category_ids is not None else label
        record = {"image_id": int(image_id), "category_id": category_id,
                  "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                           round(float(y1 - y0), 2)],
                  "score": float(scores[k])}
        if rles is not None:
            record["segmentation"] = rles[k]
        results.append(record)
    return results


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _encode_masks(masks: Any, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Probabilities [N,1,h,w] -> RLE of (resized) masks > 0.5 at `size` (h, w)."""
    from pycocotools import mask as mask_utils

    if hasattr(masks, "detach"):
        import torch.nn.functional as F

        m = masks.detach().float().cpu()
        if m.dim() == 3:
            m = m[:, None]
        if m.shape[0] and tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        binary = (m[:, 0] > 0.5).numpy() if m.shape[0] else np.zeros((0, *size), bool)
    else:
        m = np.asarray(masks)
        if m.ndim == 4:
            m = m[:, 0]
        if m.shape[0] and tuple(m.shape[-2:]) != tuple(size):
            raise ValueError(f"numpy masks of size {m.shape[-2:]} do not match the image size {size}")
        binary = m > 0.5
    if not len(binary):
        return []
    encoded = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    return [_rle_str(r) for r in encoded]


def _progress(iterable: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)


def evaluate(model: Any, dataset: Any, device: Any = "cpu", batch_size: int = 2, progress: bool = True,
             max_images: int | None = None, backend: str = "auto", workers: int = 0,
             iou_types: tuple[str, ...] | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """COCO metrics of `model` on `dataset` (a DetectionDataset; its transforms may resize the images).
    A `details` dict, when given, receives the COCO ground truth ("gt") and results ("results") for plots.

    Returns {"bbox": {AP, AP50, AP75, APs, APm, APl, AR100}, "segm": {...} (mask models on data with masks),
    "per_class": {"bbox": {class: AP}, "segm": {...}}, "category_ids": {class: the data's category id},
    "images": N, "detections": N, "seconds": s, "backend": name}. The model's train/eval mode is restored afterwards.
    """
    import torch

    from sfdeploy.data import collate, to_coco_gt

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    backend = _resolve_backend(backend)  # fail before the slow part
    start = time.perf_counter()
    net = getattr(model, "module", model)  # DDP
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        if max_images < len(dataset):
            dataset = _Head(dataset, max_images)
    if len(dataset) == 0:
        raise ValueError(f"{getattr(dataset, 'source', 'dataset')} has no images to evaluate")
    model_masks = bool(getattr(getattr(net, "roi_heads", None), "has_mask", lambda: False)())
    with_masks = model_masks and bool(getattr(dataset, "has_masks", False))
    if iou_types is None:
        iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    category_ids = getattr(dataset, "category_ids", None)  # results in the data's own ids, as to_coco_gt
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    results: list[dict[str, Any]] = []
    was_training = net.training
    net.eval()
    index = 0
    try:
        with torch.inference_mode():
            for images, _targets in _progress(loader, len(loader), progress, "eval"):
                outputs = net([img.to(device) for img in images])
                for image, output in zip(images, outputs):
                    ann = dataset.annotation(index)
                    results.extend(detections_to_coco(output, ann.image_id, tuple(image.shape[-2:]),
                                                      (ann.height, ann.width), with_masks=with_masks,
                                                      category_ids=category_ids))
                    index += 1
    finally:
        net.train(was_training)
    gt = to_coco_gt(dataset)
    metrics: dict[str, Any] = {"per_class": {}}
    for iou_type in iou_types:
        rows = results if iou_type == "bbox" else [r for r in results if "segmentation" in r]
        summary, per_class = coco_metrics(gt, rows, iou_type, backend=backend)
        metrics[iou_type] = summary
        metrics["per_class"][iou_type] = per_class
    metrics["category_ids"] = {c["name"]: c["id"] for c in gt["categories"]}
    if details is not None:
        details.update(gt=gt, results=results)
    metrics.update(images=len(dataset), detections=len(results), seconds=round(time.perf_counter() - start, 3),
                   backend=backend)
    return metrics


def evaluate_checkpoint(path: str | Path, data_spec: str, *, split: str = "val", images_dir: str | None = None,
                        seed: int = 0, device: str = "cpu", batch_size: int = 2, progress: bool = True,
                        max_images: int | None = None, backend: str = "auto", workers: int = 0,
                        val_fraction: float | None = None, split_seed: int = 0,
                        details: dict[str, Any] | None = None, score_thresh: float | None = None) -> dict[str, Any]:
    """Load a checkpoint and evaluate it on DATA (`synthetic[:N]`, a COCO JSON or a VOC root; see DATA_HELP), or
    with `val_fraction` on the images of DATA that `train --val-fraction F --split-seed N` held out.

    `score_thresh` overrides the checkpoint's inference threshold (e.g. 1e-4, the 2020 R-CNN release's).

    Images go to the model at their original size: the model resizes inside (`model.transform`), so no
    transform is needed here. Adds "checkpoint" (path, detector, method, backbone, step) to the result.
    """
    from sfdeploy.checkpoint import load_model
    from sfdeploy.data import DataError, build_dataset

    device = resolve_device(device)
    model, ckpt = load_model(path, device)
    cfg = ckpt.config
    if score_thresh is not None:
        set_score_thresh(model, score_thresh)
    dataset = build_dataset(data_spec, split=split, images_dir=images_dir, seed=seed, with_masks=cfg.has_masks)
    if val_fraction is not None:
        from sfdeploy.data.split import holdout_split

        dataset = holdout_split(dataset, val_fraction, split_seed)[1]
    if len(dataset.class_names) != cfg.num_classes:
        raise DataError(
            f"{path} was trained on {cfg.num_classes} classes {cfg.class_names} but {dataset.source} has "
            f"{len(dataset.class_names)} {dataset.class_names}: evaluate on data with the same classes"
        )
    data_ids = dataset.category_ids or list(range(1, len(dataset.class_names) + 1))
    model_ids = [cfg.category_id(k) for k in range(1, cfg.num_classes + 1)]
    if cfg.category_ids is not None and data_ids != model_ids:  # checkpoints from before category_ids: by position
        raise DataError(f"{path} predicts category ids {model_ids} but {dataset.source} has {data_ids}: evaluate "
                        "on data annotated with the same categories")
    if list(dataset.class_names) != list(cfg.class_names):
        print(f"warning: class names differ between the checkpoint {cfg.class_names} and the data "
              f"{dataset.class_names}; labels are matched by position", file=sys.stderr)
    metrics = evaluate(model, dataset, device=device, batch_size=batch_size, progress=progress,
                       max_images=max_images, backend=backend, workers=workers, details=details)
    metrics["checkpoint"] = {"path": str(path), "detector": cfg.detector, "method": cfg.method,
                             "backbone": cfg.backbone, "step": ckpt.meta.get("step"),
                             "score_thresh": cfg.effective_score_thresh if score_thresh is None else score_thresh}
    metrics["data"] = {"spec": data_spec, "split": split, "source": dataset.source}
    return metrics


def set_score_thresh(model: Any, thresh: float) -> None:
    """Set the inference score threshold of a torchvision detector (one-stage: the model; R-CNN: its RoI heads)."""
    target = getattr(model, "roi_heads", model)
    target.score_thresh = float(thresh)


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


# -- presentation -------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "-" if value < 0 else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], style: str) -> str:
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if k == 0 else f"{{:>{w}}}" for k, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def format_metrics(metrics: dict[str, Any], style: str = "plain", per_class: bool = True) -> str:
    """Readable summary (bbox/segm rows) plus a per-class AP table; `style` is "plain" or "markdown"."""
    if style not in ("plain", "markdown"):
        raise ValueError(f"unknown table style {style!r}: use 'plain' or 'markdown'")
    types = [t for t in ("bbox", "segm") if isinstance(metrics.get(t), dict)]
    parts = [_table(["type", *METRIC_KEYS], [[t, *(_fmt(metrics[t].get(k)) for k in METRIC_KEYS)] for t in types],
                    style)]
    classes = metrics.get("per_class") or {}
    if per_class and classes.get("bbox"):
        names = list(classes["bbox"])
        ptypes = [t for t in types if classes.get(t)]
        parts.append(_table(["class", *(f"AP {t}" for t in ptypes)],
                            [[n, *(_fmt(classes[t].get(n)) for t in ptypes)] for n in names], style))
    footer = []
    if "images" in metrics:
        footer.append(f"{metrics['images']} images, {metrics.get('detections', 0)} detections")
    if "seconds" in metrics:
        footer.append(f"{float(metrics['seconds']):.1f} s")
    if metrics.get("backend"):
        footer.append(f"COCO eval: {metrics['backend']}")
    if footer:
        parts.append(", ".join(footer) + " (AP -: no ground truth in that range)")
    return "\n\n".join(parts)


def metrics_json(metrics: dict[str, Any]) -> str:
    """One-line JSON of the metrics (numpy scalars converted)."""
    return json.dumps(metrics, default=lambda o: o.item() if hasattr(o, "item") else str(o))

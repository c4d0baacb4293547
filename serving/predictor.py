"""The backend-independent inference API: `Detections` and the `Predictor` base class.

A backend only implements `_infer(tensor [1,3,h,w] float32 in [0,1]) -> {"boxes", "scores", "labels",
"masks"?}` in input coordinates; loading, resizing, thresholds, coordinate mapping, masks and RLE are shared
(sfdeploy.processing) so every backend answers the same way.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sfdeploy import processing
from sfdeploy.artefact import build_metadata
from sfdeploy.artefact import checkpoint_metadata, config_from_metadata, parse_metadata  # noqa: F401  (old import path)
from sfdeploy.config import ModelConfig
from sfdeploy.masks import BoxMasks


@dataclass
class Detections:
    """Detections of one image, in original-image pixels.

    `masks` is a BoxMasks: it reads like a bool [N,H,W] array but stores one crop per detection, so a large image
    costs what its masks cover, not N*H*W (a dense bool [N,H,W] array given here is converted).
    """

    boxes: np.ndarray  # float32 [N,4] xyxy
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int64 [N], 1..C
    class_names: list[str]  # per detection
    masks: BoxMasks | None  # array-like bool [N,H,W] (box-local storage) or None
    image_size: tuple[int, int]  # (H, W)
    _rle: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)
    # per detection: the training data's own category id (e.g. COCO's 3, 7, 12); None: the label is the id
    category_ids: list[int] | None = None

    def category_id(self, i: int) -> int:
        return int(self.labels[i]) if self.category_ids is None else int(self.category_ids[i])

    def __post_init__(self) -> None:
        if self.masks is not None and not isinstance(self.masks, BoxMasks):
            self.masks = BoxMasks.from_dense(np.asarray(self.masks, dtype=bool))

    def __len__(self) -> int:
        return int(len(self.scores))

    def rle(self) -> list[dict[str, Any]]:
        """COCO compressed RLE per detection ({"size": [H,W], "counts": str}); [] without masks."""
        if self.masks is None:
            return []
        if self._rle is None:
            self._rle = self.masks.rle()
        return self._rle

    def to_dict(self, masks: bool = True) -> dict[str, Any]:
        """JSON-ready: {"image_size": [H,W], "detections": [{"box", "score", "label", "class_name", "category_id",
        "mask"?}]}."""
        rles = self.rle() if masks and self.masks is not None else None
        items = []
        for i in range(len(self)):
            item: dict[str, Any] = {
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "score": float(self.scores[i]),
                "label": int(self.labels[i]),
                "class_name": self.class_names[i],
                "category_id": self.category_id(i),
            }
            if rles is not None:
                item["mask"] = rles[i]
            items.append(item)
        return {"image_size": [int(self.image_size[0]), int(self.image_size[1])], "detections": items}

    def to_coco_results(self, image_id: int, masks: bool = True) -> list[dict[str, Any]]:
        """COCO results records (the training data's category_id, bbox xywh, score, segmentation RLE when masks
        exist), so they score against the user's own annotation file."""
        xywh = processing.xyxy_to_xywh(self.boxes)
        rles = self.rle() if masks and self.masks is not None else None
        out = []
        for i in range(len(self)):
            rec: dict[str, Any] = {"image_id": int(image_id), "category_id": self.category_id(i),
                                   "bbox": [round(float(v), 3) for v in xywh[i]], "score": float(self.scores[i])}
            if rles is not None:
                rec["segmentation"] = rles[i]
            out.append(rec)
        return out


# -- predictor -----------------------------------------------------------------------------------------
class Predictor(abc.ABC):
    """Base class: subclasses set config/metadata/backend/device and implement `_infer`."""

    backend: str = "?"

    def __init__(self, config: ModelConfig, metadata: dict[str, Any], *, source: str, device: str = "cpu",
                 max_side: int | None = processing.DEFAULT_MAX_SIDE, max_pixels: int | None = None) -> None:
        self.config = config
        self.metadata = metadata
        self.source = source
        self.device = device
        self.max_side = max_side
        self.max_pixels = max_pixels
        # Mask R-CNN pastes its masks at the input's size: give it the image at the size it works at anyway.
        self.work_size = (config.min_size, config.max_size) if config.has_masks else None
        # A predictor may be shared between threads (HTTP server); backends that are not re-entrant use it.
        self.lock = threading.Lock()
        # A batched graph (export --batch dynamic) takes letterboxed images of one fixed canvas (h, w).
        spec = metadata.get("input") or {}
        canvas = spec.get("canvas") if spec.get("batch") == "dynamic" else None
        self.canvas: tuple[int, int] | None = (int(canvas[0]), int(canvas[1])) if canvas else None

    # -- what each backend implements ------------------------------------------------------------
    @abc.abstractmethod
    def _infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """One [1,3,h,w] float input -> the graph's named outputs (boxes, scores, labels[, masks]) as numpy."""

    def _infer_batch(self, tensor: np.ndarray) -> list[dict[str, np.ndarray]]:
        """[B,3,h,w] of one shape -> one `_infer`-style dict per image; backends of batched graphs override it."""
        return [self._infer(tensor[i:i + 1]) for i in range(len(tensor))]

    # -- API ---------------------------------------------------------------------------------------
    @property
    def batched(self) -> bool:
        """True when one inference can run several images (a dynamic-batch graph)."""
        return self.canvas is not None

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def score_thresh(self) -> float:
        return float(self.config.effective_score_thresh)

    @property
    def metrics(self) -> dict[str, Any]:
        return dict((self.metadata.get("meta") or {}).get("metrics") or {})

    def predict(self, images: Any, score_thresh: float | None = None, max_detections: int | None = None,
                masks: bool = True) -> Detections | list[Detections]:
        """One image (path | bytes | PIL | uint8 HWC RGB array | tensor) -> Detections; a list -> list.

        score_thresh defaults to the artefact's (config.effective_score_thresh); batches run one image at a time.
        """
        if isinstance(images, (list, tuple)):
            return [self._predict_one(im, score_thresh, max_detections, masks) for im in images]
        if _is_batched(images):
            return [self._predict_one(im, score_thresh, max_detections, masks) for im in images]
        return self._predict_one(images, score_thresh, max_detections, masks)

    def predict_image(self, image: np.ndarray, score_thresh: float | None = None, max_detections: int | None = None,
                      masks: bool = True) -> Detections:
        """Already-decoded uint8 [H,W,3] RGB image -> Detections."""
        prepared = self.prepare_image(image)
        raw = self._infer(prepared.tensor)
        return self.finish(raw, prepared, score_thresh, max_detections, masks)

    def prepare_image(self, image: np.ndarray) -> processing.Prepared:
        """The backend's input for a decoded image: letterboxed to the canvas for a batched graph."""
        if self.canvas is not None:
            return processing.letterbox(image, self.canvas, (self.config.min_size, self.config.max_size))
        return processing.prepare(image, self.max_side, self.work_size)

    def infer_batch(self, tensors: list[np.ndarray], max_batch: int = 8) -> list[dict[str, np.ndarray]]:
        """Raw outputs for prepared tensors: batched graphs run up to `max_batch` images per inference (bounded
        memory), batch-1 graphs one at a time."""
        if self.canvas is None:
            return [self._infer(t) for t in tensors]
        out: list[dict[str, np.ndarray]] = []
        for i in range(0, len(tensors), max(1, max_batch)):
            out += self._infer_batch(np.concatenate(tensors[i:i + max(1, max_batch)]))
        return out

    def predict_batch(self, images: list[Any], score_thresh: float | None = None, max_detections: int | None = None,
                      masks: bool = True, max_batch: int = 8) -> list[Detections]:
        """Images (any `predict` input) -> one Detections each, the same as `predict` per image; a batched graph
        runs them `max_batch` at a time in one inference each."""
        prepared = [self.prepare_image(processing.load_image(im, max_pixels=self.max_pixels)) for im in images]
        raws = self.infer_batch([p.tensor for p in prepared], max_batch)
        return [self.finish(r, p, score_thresh, max_detections, masks) for r, p in zip(raws, prepared)]

    def finish(self, raw: dict[str, np.ndarray], prepared: processing.Prepared, score_thresh: float | None = None,
               max_detections: int | None = None, masks: bool = True) -> Detections:
        """A backend's raw output for `prepared` -> Detections in original-image pixels."""
        thresh = self.score_thresh if score_thresh is None else float(score_thresh)
        out = processing.postprocess(raw, prepared, score_thresh=thresh, max_detections=max_detections,
                                     masks=masks and self.config.has_masks)
        names = self.class_names
        cls = [names[int(k) - 1] if 1 <= int(k) <= len(names) else str(int(k)) for k in out["labels"]]
        ids = None
        if self.config.category_ids is not None:
            ids = [self.config.category_id(int(k)) if 1 <= int(k) <= len(names) else int(k) for k in out["labels"]]
        return Detections(boxes=out["boxes"], scores=out["scores"], labels=out["labels"], class_names=cls,
                          masks=out["masks"], image_size=prepared.original_size, category_ids=ids)

    def _predict_one(self, image: Any, score_thresh: float | None, max_detections: int | None,
                     masks: bool) -> Detections:
        rgb = processing.load_image(image, max_pixels=self.max_pixels)
        return self.predict_image(rgb, score_thresh, max_detections, masks)

    def warmup(self, size: int = 320, runs: int = 1) -> None:
        image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        for _ in range(runs):
            self.predict_image(image)

    def info(self) -> dict[str, Any]:
        """What /v1/models shows: the artefact's file name, never the server's path to it."""
        cfg = self.config
        meta = self.metadata.get("meta") or {}
        return {
            "detector": cfg.detector, "method": cfg.method, "backbone": cfg.backbone, "backend": self.backend,
            "device": self.device, "source": Path(self.source).name, "class_names": self.class_names,
            "category_ids": self.config.category_ids, "score_thresh": self.score_thresh, "nms_thresh": cfg.nms_thresh,
            "detections_per_img": cfg.detections_per_img, "has_masks": cfg.has_masks,
            "min_size": cfg.min_size, "max_size": cfg.max_size, "metrics": self.metrics,
            "step": meta.get("step"), "exporter": self.metadata.get("exporter"),
            "version": self.metadata.get("version"),
        }

    def __repr__(self) -> str:
        c = self.config
        return f"{type(self).__name__}({c.detector}/{c.method}/{c.backbone}, backend={self.backend}, {self.source})"


def _is_batched(images: Any) -> bool:
    """A 4-D array/tensor with more than one image is a batch ([B,3,H,W] tensor or [B,H,W,3] array)."""
    shape = getattr(images, "shape", None)
    return shape is not None and len(shape) == 4 and int(shape[0]) != 1 and not isinstance(images, (str, bytes))


def build_metadata_props(config: ModelConfig, meta: dict[str, Any] | None, *, exporter: str = "torchscript",
                         batch: int | str = 1, has_masks: bool | None = None) -> dict[str, str]:
    """The contract's metadata dict (str -> str) for an artefact of `config` (sfdeploy.artefact builds it)."""
    return build_metadata(config, meta, exporter=exporter, batch=batch, has_masks=has_masks)

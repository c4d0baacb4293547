"""Test helpers: tiny trained models and a minimal contract-conforming ONNX export (until `export` lands)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sfdeploy.checkpoint import save_checkpoint
from sfdeploy.config import ModelConfig
from sfdeploy.models import build_model

CLASS_NAMES = ["circle", "square", "triangle", "star"]  # the synthetic data set's classes


def tiny_config(detector: str, method: str = "sampling_free", size: int = 128, **kw) -> ModelConfig:
    return ModelConfig(detector=detector, method=method, backbone="resnet18", class_names=list(CLASS_NAMES),
                       min_size=size, max_size=size, fpn_channels=32, **kw)


def train_tiny(cfg: ModelConfig, steps: int = 4, seed: int = 0) -> torch.nn.Module:
    """A few SGD steps on synthetic scenes so scores are not near-tied (torch/ORT comparisons stay stable)."""
    from sfdeploy.data import build_dataset, collate

    torch.manual_seed(seed)
    model = build_model(cfg, load_backbone_weights=False)
    data = build_dataset("synthetic:8", split="train", seed=seed, with_masks=cfg.has_masks)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()
    for step in range(steps):
        images, targets = collate([data[(2 * step + k) % len(data)] for k in range(2)])
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return model.eval()


def save_tiny(path: Path, cfg: ModelConfig, model: torch.nn.Module) -> Path:
    meta = {"step": 6, "metrics": {"bbox": {"AP": 0.0123, "AP50": 0.05}}, "priors": dict(cfg.priors)}
    return save_checkpoint(path, model, cfg, meta=meta)


class _Graph(torch.nn.Module):
    """[1,3,H,W] float in [0,1] -> boxes, scores, labels(, masks): the ONNX artefact's interface."""

    def __init__(self, model: torch.nn.Module, masks: bool) -> None:
        super().__init__()
        self.model = model
        self.masks = masks

    def forward(self, images: torch.Tensor):  # type: ignore[no-untyped-def]
        out = self.model([images[0]])[0]
        result = (out["boxes"], out["scores"], out["labels"])
        return result + (out["masks"],) if self.masks else result


def export_onnx_minimal(model: torch.nn.Module, cfg: ModelConfig, path: Path, meta: dict | None = None) -> Path:
    """torch.onnx.export (TorchScript exporter, opset 17) + metadata_props per docs/CONTRACTS.md."""
    import onnx

    masks = cfg.has_masks
    names = ["boxes", "scores", "labels"] + (["masks"] if masks else [])
    graph = _Graph(model.eval(), masks).eval()
    dummy = torch.rand(1, 3, cfg.min_size, cfg.min_size + 32, generator=torch.Generator().manual_seed(0))
    dyn = {"images": {2: "height", 3: "width"}, **{n: {0: "num_detections"} for n in names}}
    if masks:
        dyn["masks"] = {0: "num_detections", 2: "height", 3: "width"}
    torch.onnx.export(graph, (dummy,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=names, dynamic_axes=dyn)
    proto = onnx.load(str(path))
    props = {
        "sfdeploy.config": json.dumps(cfg.to_dict()),
        "sfdeploy.meta": json.dumps(meta or {"step": 6, "metrics": {"bbox": {"AP": 0.0123}}}),
        "sfdeploy.version": "0.1.0",
        "sfdeploy.exporter": "torchscript",
        "sfdeploy.input": json.dumps({"name": "images", "layout": "NCHW", "dtype": "float32", "range": [0, 1],
                                      "color": "RGB", "batch": 1}),
        "sfdeploy.outputs": json.dumps(names),
        "class_names": json.dumps(cfg.class_names),
        "detector": cfg.detector,
        "method": cfg.method,
        "score_thresh": str(cfg.effective_score_thresh),
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def synthetic_image(index: int = 0, split: str = "val") -> np.ndarray:
    """A scene from the built-in synthetic data set (uint8 HWC RGB)."""
    from sfdeploy.data import build_dataset

    return build_dataset("synthetic:4", split=split, seed=0).load_image(index)


def write_jpeg(path: Path, image: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95, **kw)
    return path


class FakePredictor:
    """Factory of a Predictor whose backend is a seeded function of its input (no model): boxes that may reach
    past the input, low and high scores, and blob masks at the input's resolution. Exercises everything a real
    backend shares (decode, resize, padding, thresholds, coordinates, box-local masks, RLE) in milliseconds."""

    def __new__(cls, masks: bool = True, size: int = 64, seed: int = 0, detections: int = 5):  # type: ignore[misc]
        from sfdeploy.serving.predictor import Predictor

        cfg = tiny_config("mask_rcnn" if masks else "retinanet", size=size)

        class _Fake(Predictor):
            backend = "fake"

            def _infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
                _, _, h, w = tensor.shape
                # the real graphs resize like torchvision (scale by min/max size, floor): a side that ends up at
                # 0 pixels fails inside them (issue 13: 10000 x 10 images); so does this fake
                scale = min(cfg.min_size / min(h, w), cfg.max_size / max(h, w))
                if int(h * scale) < 1 or int(w * scale) < 1:
                    raise RuntimeError("Input and output sizes should be greater than 0")
                rng = np.random.default_rng([seed, h, w])
                x = rng.uniform(-0.2 * w, 1.2 * w, (detections, 2))
                y = rng.uniform(-0.2 * h, 1.2 * h, (detections, 2))
                boxes = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1).astype(np.float32)
                out = {"boxes": boxes, "scores": rng.uniform(0, 1, detections).astype(np.float32),
                       "labels": rng.integers(1, len(cfg.class_names) + 1, detections).astype(np.int64)}
                if masks:
                    yy, xx = np.mgrid[0:h, 0:w]
                    cy, cx = rng.uniform(0, h, detections), rng.uniform(0, w, detections)
                    r = rng.uniform(0.5, max(h, w) / 2, detections)
                    d = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / r[:, None, None] ** 2
                    out["masks"] = np.exp(-d)[:, None].astype(np.float32)
                return out

        return _Fake(cfg, {"meta": {}}, source="/srv/secret/models/fake.onnx")

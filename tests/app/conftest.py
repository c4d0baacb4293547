"""Tiny checkpoints for the demo tests: random init, 128 px, ResNet-18 with a 64-channel FPN (not narrower:
FCOS's GroupNorm(32) needs 2+ values per group on the 1x1 P7 map of a small image).

Random-init scores sit at the classifier prior, so the configs put the prior above each model's threshold:
every rendered panel then has boxes to draw (what the browser test checks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSES = ["circle", "square", "triangle", "star"]


def make_checkpoint(path: Path, detector: str = "retinanet", method: str = "sampling_free", *,
                    backbone: str = "resnet18", metrics: dict | None = None, **cfg_changes) -> Path:
    from sfdeploy.checkpoint import save_checkpoint
    from sfdeploy.config import ModelConfig
    from sfdeploy.models import build_model

    head = "rpn" if detector in ("faster_rcnn", "mask_rcnn") else "cls"
    changes = dict(detector=detector, method=method, backbone=backbone, class_names=list(CLASSES), min_size=128,
                   max_size=128, fpn_channels=64, detections_per_img=20)
    if method == "sampling_free":
        changes["priors"] = {head: 0.02}  # scores ~0.02 > the 1e-3 default threshold
    else:
        changes["score_thresh"] = 0.005  # baseline scores ~0.01 (focal prior) > 0.005
    changes.update(cfg_changes)
    cfg = ModelConfig(**changes)
    model = build_model(cfg, load_backbone_weights=False)
    meta = {"step": 10, "outcome": "completed",
            "metrics": metrics if metrics is not None else {"bbox": {"AP": 0.1 if method == "baseline" else 0.2,
                                                                     "AP50": 0.3}}}
    return save_checkpoint(path, model, cfg, meta=meta)


@pytest.fixture(scope="session")
def checkpoint_factory():  # noqa: ANN201
    return make_checkpoint


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """pair/retinanet_{baseline,sf}/best.pt (+ an older last.pt), fcos_sf/last.pt (no baseline), broken/last.pt.

    The browser test serves only `pair/` (fewer models to load)."""
    root = tmp_path_factory.mktemp("models")
    make_checkpoint(root / "pair" / "retinanet_baseline" / "best.pt", "retinanet", "baseline")
    make_checkpoint(root / "pair" / "retinanet_baseline" / "last.pt", "retinanet", "baseline")
    make_checkpoint(root / "pair" / "retinanet_sf" / "best.pt", "retinanet", "sampling_free")
    make_checkpoint(root / "fcos_sf" / "last.pt", "fcos", "sampling_free")
    (root / "broken").mkdir()
    (root / "broken" / "last.pt").write_bytes(b"not a checkpoint")
    return root

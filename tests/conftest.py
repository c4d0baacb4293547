"""Shared, generic fixtures: tiny model configs and tiny synthetic batches."""

from __future__ import annotations

import os

# Before torch loads: OpenMP threads that busy-wait make any contention (DDP ranks, server threads, a second
# process) 10-50x slower on a 2-core CI machine (see sfdeploy/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Any, Callable

import pytest


@pytest.fixture
def tiny_cfg() -> Callable[..., Any]:
    """Factory of small, fast ModelConfigs: tiny_cfg(detector="fcos", method="baseline", ...)."""
    from sfdeploy.config import ModelConfig

    def make(detector: str = "retinanet", method: str = "sampling_free", **overrides: Any) -> ModelConfig:
        # FCOS's GroupNorm(32) needs 64 channels to normalise 1x1 P7 maps of 64 px images
        params: dict[str, Any] = dict(detector=detector, method=method, backbone="resnet18", class_names=["a", "b"],
                                      min_size=64, max_size=64, fpn_channels=64 if detector == "fcos" else 32,
                                      detections_per_img=10)
        params.update(overrides)
        return ModelConfig(**params)

    return make


@pytest.fixture
def tiny_batch() -> Callable[..., Any]:
    """Factory of a fixed batch: tiny_batch(n=2, size=64, masks=False, empty=False) -> (images, targets)."""
    import torch

    def make(n: int = 2, size: int = 64, masks: bool = False, empty: bool = False, seed: int = 0) -> Any:
        g = torch.Generator().manual_seed(seed)
        images, targets = [], []
        for i in range(n):
            image = torch.rand(3, size, size, generator=g) * 0.2
            if empty:
                boxes = torch.zeros((0, 4))
                labels = torch.zeros((0,), dtype=torch.int64)
            else:
                boxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]]) * size / 64
                labels = torch.tensor([1, 2])
                for b, lab in zip(boxes.int().tolist(), labels.tolist()):
                    image[lab - 1, b[1]:b[3], b[0]:b[2]] = 0.9  # visible, class-coloured objects
            target = {"boxes": boxes, "labels": labels}
            if masks:
                m = torch.zeros((len(boxes), size, size), dtype=torch.uint8)
                for k, b in enumerate(boxes.int().tolist()):
                    m[k, b[1]:b[3], b[0]:b[2]] = 1
                target["masks"] = m
            images.append(image)
            targets.append(target)
        return images, targets

    return make

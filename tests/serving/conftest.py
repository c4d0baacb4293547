"""Session fixtures: tiny trained models (one-stage, two-stage, Mask R-CNN) as checkpoints and ONNX files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from serving_helpers import export_onnx_minimal, save_tiny, tiny_config, train_tiny

MODELS = {
    # prior 0.01: a few steps from the Sampling-Free 1e-5 init would leave every score under the threshold
    "retinanet": dict(detector="retinanet", method="sampling_free", priors={"cls": 0.01}),
    "faster_rcnn": dict(detector="faster_rcnn", method="sampling_free"),
    "mask_rcnn": dict(detector="mask_rcnn", method="sampling_free"),
}
# SGD steps per model: the R-CNN box predictor starts near-uniform (the authors' init), so after 4 steps Mask R-CNN's
# lower scores are still near-tied and NMS keeps different ones of them in torch and ORT
STEPS = {"mask_rcnn": 12}


class Artefacts:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[Path, Path]] = {}

    def get(self, name: str) -> tuple[Path, Path]:
        """(checkpoint .pt, .onnx) for one of MODELS, built on first use."""
        if name not in self._cache:
            cfg = tiny_config(**MODELS[name])
            model = train_tiny(cfg, steps=STEPS.get(name, 4))
            ckpt = save_tiny(self.root / f"{name}.pt", cfg, model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onnx_path = export_onnx_minimal(model, cfg, self.root / f"{name}.onnx")
            self._cache[name] = (ckpt, onnx_path)
        return self._cache[name]


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    return Artefacts(tmp_path_factory.mktemp("serving_models"))

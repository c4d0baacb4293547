"""PyTorch eager backend: an sfdeploy checkpoint through sfdeploy.checkpoint.load_model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfdeploy.artefact import checkpoint_metadata
from sfdeploy.checkpoint import load_model

from ..predictor import Predictor


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, path: str | Path, device: str | None = None, **kwargs: Any) -> None:
        device = device or "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            from sfdeploy.errors import UserError

            raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        model, ckpt = load_model(path, device)
        super().__init__(ckpt.config, checkpoint_metadata(ckpt.config, ckpt.meta), source=str(path),
                         device=str(device), **kwargs)
        self.model = model

    def _infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(tensor[0]).to(self.device)
        with self.lock, torch.inference_mode():
            out = self.model([x])[0]
        return {k: v.detach().cpu().numpy() for k, v in out.items()}

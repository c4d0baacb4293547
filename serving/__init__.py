"""Serving: one inference API over PyTorch checkpoints, ONNX Runtime, TensorRT engines and OpenVINO IR.

    from sfdeploy import serving
    predictor = serving.load("model.onnx")            # or .pt/.pth checkpoint, .engine/.plan, OpenVINO .xml
    detections = predictor.predict("image.jpg")       # -> serving.Detections

Backends are imported only when an artefact of their kind is loaded (so `from sfdeploy import serving` is light).
"""

from __future__ import annotations

if __name__ != "sfdeploy.serving":  # one module, one import name (pyproject [tool.setuptools.package-dir])
    raise ImportError(f"the serving stage is sfdeploy.serving: import it under that name, not as {__name__!r}")

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .predictor import Detections, Predictor

BACKENDS = ("torch", "onnxruntime", "tensorrt", "openvino")
SUFFIX_BACKEND = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
                  ".xml": "openvino"}
# Which artefact kinds each backend can run.
BACKEND_SUFFIXES = {"torch": (".pt", ".pth"), "onnxruntime": (".onnx",), "tensorrt": (".engine", ".plan"),
                    "openvino": (".xml",)}

__all__ = ["BACKENDS", "Detections", "Predictor", "backend_for", "load"]


def backend_for(path: str | Path, backend: str = "auto") -> str:
    """The backend that runs `path` ("auto": from the suffix); a one-line UserError when none can."""
    from sfdeploy.errors import UserError

    suffix = Path(path).suffix.lower()
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"unknown backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
    if suffix not in SUFFIX_BACKEND:
        raise UserError(f"{path}: unknown artefact type {suffix or '(no suffix)'!r}; supported: "
                        ".pt/.pth (torch checkpoint), .onnx (onnxruntime), .engine/.plan (tensorrt), "
                        ".xml (openvino IR)")
    if backend == "auto":
        return SUFFIX_BACKEND[suffix]
    if suffix not in BACKEND_SUFFIXES[backend]:
        raise UserError(f"backend {backend!r} cannot run {path} ({suffix}); it runs "
                        f"{'/'.join(BACKEND_SUFFIXES[backend])} files, and {suffix} runs on "
                        f"{SUFFIX_BACKEND[suffix]}")
    return backend


def load(path: str | Path, backend: str = "auto", device: str | None = None, **kwargs: Any) -> "Predictor":
    """Open a checkpoint (.pt/.pth), an ONNX file, a TensorRT engine or an OpenVINO IR (.xml) as a Predictor.

    device: torch "cpu" (default) / "cuda[:k]"; ONNX Runtime: None = best provider (TensorRT > CUDA > CPU),
    "cpu" = CPU only; `providers=[...]` overrides; OpenVINO: CPU only. kwargs: max_side, max_pixels (and
    providers/threads for ORT; precision "f32" | "bf16" and threads for OpenVINO).
    """
    name = backend_for(path, backend)
    if not Path(path).exists():
        raise FileNotFoundError(f"artefact not found: {path}")
    if name == "torch":
        from .backends.torch_backend import TorchPredictor

        return TorchPredictor(path, device=device, **kwargs)
    if name == "onnxruntime":
        from .backends.onnxruntime_backend import OnnxRuntimePredictor

        return OnnxRuntimePredictor(path, device=device, **kwargs)
    if name == "openvino":
        from .backends.openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor(path, device=device, **kwargs)
    from .backends.tensorrt_backend import TensorRTPredictor

    return TensorRTPredictor(path, device=device, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("Detections", "Predictor"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")

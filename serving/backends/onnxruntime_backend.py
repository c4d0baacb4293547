"""ONNX Runtime backend: an exported `.onnx` artefact (contract: docs/CONTRACTS.md, "ONNX artefact")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sfdeploy.artefact import config_from_metadata, parse_metadata

from ..predictor import Predictor

# TensorRT's provider is opt-in (providers=[...]): it builds an engine per new input shape range, minutes at first.
PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: Sequence[str], device: str | None = None,
                     providers: Sequence[str] | None = None) -> list[str]:
    """Explicit `providers` win (must be available); else CUDA > CPU among `available` (device "cpu" restricts
    to CPU). A GPU device without a CUDA provider warns (a CPU-only ORT wheel) and falls back to the CPU."""
    from sfdeploy.errors import UserError
    from sfdeploy.ort import warn_if_no_cuda

    warn_if_no_cuda(device, available)

    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise UserError(f"ONNX Runtime providers {missing} are not available; available: {list(available)}")
        return list(providers)
    wanted = ("CPUExecutionProvider",) if device == "cpu" else PROVIDER_PREFERENCE
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    if not chosen:
        raise UserError(f"no usable ONNX Runtime execution provider among {list(available)}")
    return chosen


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str | None = None, providers: Sequence[str] | None = None,
                 threads: int | None = None, trt_cache_dir: str | Path | None = None, trt_fp16: bool = False,
                 **kwargs: Any) -> None:
        from sfdeploy.errors import UserError
        from sfdeploy.ort import import_onnxruntime

        from .ort_providers import with_options

        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        names = choose_providers(ort.get_available_providers(), device, providers)
        chosen = with_options(names, device, trt_fp16=trt_fp16,
                              trt_cache_dir=trt_cache_dir or path.with_name(path.name + ".trt_cache"))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or cpu_cores()
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        except Exception as exc:  # InvalidProtobuf, NoSuchFile, Fail ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path} is not a loadable ONNX model: {reason}") from None
        md = parse_metadata(session.get_modelmeta().custom_metadata_map)
        config = config_from_metadata(md, str(path))
        super().__init__(config, md, source=str(path), device=(device or session.get_providers()[0]), **kwargs)
        self.session = session
        self.providers = session.get_providers()
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"{path}: expected one input 'images' [1,3,H,W], found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        needed = {"boxes", "scores", "labels"} | ({"masks"} if config.has_masks else set()) \
            | ({"num_detections"} if self.canvas is not None else set())
        if not needed <= set(self.output_names):
            raise UserError(f"{path}: outputs {self.output_names} lack {sorted(needed - set(self.output_names))}")

    def _infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        if self.canvas is not None:
            return self._infer_batch(tensor)[0]
        # InferenceSession.run is thread-safe; no lock needed.
        outs = self.session.run(self.output_names, {self.input_name: tensor})
        return dict(zip(self.output_names, outs))

    def _infer_batch(self, tensor: np.ndarray) -> list[dict[str, np.ndarray]]:
        """One run of a batched graph over [B,3,h,w]; the padded outputs cut to each image's num_detections."""
        if self.canvas is None:
            return super()._infer_batch(tensor)
        outs = dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: tensor})))
        return [{k: outs[k][i, :n] for k in ("boxes", "scores", "labels")}
                for i, n in enumerate(int(c) for c in outs["num_detections"].reshape(-1))]

"""OpenVINO backend: an exported IR (`X.xml` + `X.bin`, `sfdeploy export --format openvino`) on the CPU.

The IR is our ONNX graph converted by OpenVINO (same input `images` [1,3,H,W] in [0,1], same outputs, NMS inside),
so `_infer` returns what the ONNX Runtime backend returns and the shared post-processing makes the same Detections.
Precision: `precision=` (f32 | bf16) or the default recorded at export (`sfdeploy.openvino`), else f32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sfdeploy.artefact import config_from_metadata, parse_metadata

from ..predictor import Predictor
from .openvino_runtime import check_device, check_precision, cpu_capabilities, import_openvino, read_rt_info


class OpenVinoPredictor(Predictor):
    backend = "openvino"

    def __init__(self, path: str | Path, device: str | None = None, precision: str | None = None,
                 threads: int | None = None, **kwargs: Any) -> None:
        from sfdeploy.errors import UserError

        ov_device = check_device(device)
        if precision is not None:
            check_precision(precision)  # a typo fails before OpenVINO is even imported
        ov = import_openvino()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"OpenVINO IR not found: {path}")
        if not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"OpenVINO IR weights not found: {path.with_suffix('.bin')} (next to {path.name})")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # RuntimeError with a multi-line C++ message
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path} is not a loadable OpenVINO IR: {reason}") from None
        md = parse_metadata(read_rt_info(model))
        config = config_from_metadata(md, str(path))
        recorded = (md.get("openvino") or {}).get("precision", "f32")
        self.precision = check_precision(precision or recorded, cpu_capabilities(core))
        names = [o.get_any_name() for o in model.outputs]
        needed = {"boxes", "scores", "labels"} | ({"masks"} if config.has_masks else set())
        if not needed <= set(names):
            raise UserError(f"{path}: outputs {names} lack {sorted(needed - set(names))}")
        if len(model.inputs) != 1:
            raise UserError(f"{path}: expected one input 'images' [1,3,H,W], found "
                            f"{[i.get_any_name() for i in model.inputs]}")
        props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            props["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, ov_device, props)
        super().__init__(config, md, source=str(path), device="cpu", **kwargs)
        self.input_name = model.inputs[0].get_any_name()
        self.output_names = names
        self._request = self.compiled.create_infer_request()

    def _infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        # one infer request is not re-entrant: the HTTP server may call from several threads
        with self.lock:
            result = self._request.infer({self.input_name: np.ascontiguousarray(tensor, dtype=np.float32)})
            return {o.get_any_name(): np.array(result[o]) for o in self.compiled.outputs}

    def info(self) -> dict[str, Any]:
        """Adds `precision`: "int8" for an IR converted from a quantized graph, else the inference precision."""
        source = (self.metadata.get("openvino") or {}).get("source_precision", "fp32")
        return {**super().info(), "precision": "int8" if source == "int8" else self.precision}


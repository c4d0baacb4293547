"""Export stage: checkpoints -> ONNX (verified parity), TensorRT engines, Triton model repositories, OpenVINO IR.

Light to import: torch / onnx load only when a function runs.
"""

from __future__ import annotations

if __name__ != "sfdeploy.export":  # one module, one import name (pyproject [tool.setuptools.package-dir])
    raise ImportError(f"the export stage is sfdeploy.export: import it under that name, not as {__name__!r}")

from typing import Any

__all__ = ["export_onnx", "verify_onnx", "verify_artefact", "check_trt_ops", "build_engine",
           "write_triton_repository", "export_openvino"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from .onnx import export_onnx

        return export_onnx
    if name in ("verify_onnx", "verify_artefact"):
        from . import verify

        return getattr(verify, name)
    if name in ("check_trt_ops", "build_engine"):
        from . import tensorrt

        return getattr(tensorrt, name)
    if name == "write_triton_repository":
        from .triton import write_triton_repository

        return write_triton_repository
    if name == "export_openvino":
        from .openvino import export_openvino

        return export_openvino
    raise AttributeError(name)

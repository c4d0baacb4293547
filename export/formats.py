"""The export formats and the options each accepts (one table, used by the CLI for validation and --help)."""

from __future__ import annotations

from dataclasses import dataclass

OPTIONS = ("opset", "fp16", "simplify", "exporter", "sizes", "verify", "model_name", "engine", "int8",
           "instance_kind", "instance_count", "batch", "max_batch_size",
           "max_queue_delay_us", "precision")


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    description: str
    options: frozenset[str]
    needs_gpu: bool = False


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", "end-to-end ONNX graph (ONNX Runtime, any CPU/GPU)",
                 frozenset({"opset", "simplify", "exporter", "verify", "int8", "batch"})),
    ExportFormat("tensorrt", ".engine", "TensorRT 10+ engine + .engine.json sidecar (NVIDIA GPU + TensorRT)",
                 frozenset({"opset", "fp16", "simplify", "exporter", "sizes", "verify"}), needs_gpu=True),
    ExportFormat("triton", "/", "Triton model repository (onnxruntime backend; tensorrt_plan with --engine)",
                 frozenset({"opset", "simplify", "exporter", "verify", "model_name", "engine", "int8",
                            "instance_kind", "instance_count", "batch", "max_batch_size",
                            "max_queue_delay_us"})),
    ExportFormat("openvino", ".xml", "OpenVINO IR .xml + .bin (Intel CPUs; --precision f32|bf16, --int8)",
                 frozenset({"opset", "simplify", "exporter", "verify", "int8", "precision"})),
)}


def check_options(fmt: str, given: set[str]) -> None:
    """Raise UserError for an unknown format or an option the format does not take."""
    from sfdeploy.errors import UserError

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    extra = sorted(given - FORMATS[fmt].options)
    if extra:
        flags = ", ".join("--" + o.replace("_", "-") for o in extra)
        raise UserError(f"--format {fmt} does not take {flags}")


def formats_help() -> str:
    return "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())

"""OpenVINO as an optional dependency: import, inference precisions, the CPU's capabilities, IR metadata.

Why a precision *hint* and not a converted model: OpenVINO keeps the IR's weights in f32 and the CPU plugin picks
the arithmetic at compile time (`INFERENCE_PRECISION_HINT`), so one `.xml/.bin` serves f32 and bf16; bf16 is only
fast (and only offered) where the CPU has native bf16 (AVX-512 BF16 / AMX), so asking for it elsewhere is a one-line
error rather than a silent f32 fallback. int8 is not a hint: it comes from a quantized (QDQ) source graph.
Everything here but `import_openvino`/`cpu_capabilities` works without openvino installed (tested that way).
"""

from __future__ import annotations

from typing import Any, Iterable

from sfdeploy.artefact import OPENVINO_RT_INFO
from sfdeploy.errors import UserError

INSTALL_HINT = "pip install 'sfdeploy[openvino]'"
PRECISIONS = ("f32", "bf16")
CAPABILITY = {"f32": "FP32", "bf16": "BF16"}  # OpenVINO's name of each in OPTIMIZATION_CAPABILITIES
DEVICES = ("cpu",)


def import_openvino() -> Any:
    """The openvino module, or a one-line UserError saying which extra installs it."""
    try:
        import openvino
    except ImportError:
        raise UserError(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def check_precision(precision: str, capabilities: Iterable[str] | None = None) -> str:
    """Validate an inference precision; with the CPU's `capabilities` (OPTIMIZATION_CAPABILITIES), refuse bf16 on a
    CPU without native bf16. Returns the precision in OpenVINO's spelling."""
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise UserError(f"unknown OpenVINO precision {precision!r}: choose one of {', '.join(PRECISIONS)} "
                        "(int8: export with --int8 --calib-data DATA)")
    if capabilities is not None and CAPABILITY[p] not in {str(c).upper() for c in capabilities}:
        raise UserError(f"this CPU has no native {p} support (OpenVINO CPU capabilities: {', '.join(capabilities)}); "
                        "use --precision f32")
    return p


def check_device(device: str | None) -> str:
    """The OpenVINO device name for sfdeploy's `device` (only the CPU is supported)."""
    d = "cpu" if device is None else str(device).lower()
    if d not in DEVICES:
        raise UserError(f"the openvino backend runs on the CPU only (device 'cpu'), not {device!r}")
    return "CPU"


def cpu_capabilities(core: Any) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU plugin, e.g. ['BF16', 'FP32', 'INT8', ...]."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def write_rt_info(model: Any, props: dict[str, str]) -> None:
    """Put the artefact's metadata dict (str -> str) into the model's rt_info, one entry per key."""
    for key, value in props.items():
        model.set_rt_info(str(value), [OPENVINO_RT_INFO, key])


def read_rt_info(model: Any) -> dict[str, str]:
    """The metadata dict written by `write_rt_info` ({} when the IR has none)."""
    info = model.get_rt_info()
    if OPENVINO_RT_INFO not in info.keys():
        return {}
    node = info[OPENVINO_RT_INFO]
    items = node.items() if isinstance(node, dict) else node.astype(dict).items()
    return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in items}

"""ONNX Runtime execution providers with their options: which GPU (`cuda:N` -> device_id) and, for the opt-in
TensorRT provider, an engine cache, FP16 and the input profile (so it does not rebuild per new image size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .trt_runtime import DEFAULT_PROFILE


def device_id(device: str | None) -> int:
    """"cuda:3" -> 3; "cuda" / None -> 0."""
    if device and str(device).startswith("cuda:"):
        try:
            return int(str(device).split(":", 1)[1])
        except ValueError:
            from sfdeploy.errors import UserError

            raise UserError(f"bad device {device!r}: use cpu, cuda or cuda:N") from None
    return 0


def with_options(chosen: Sequence[str], device: str | None, *, trt_cache_dir: str | Path | None = None,
                 trt_fp16: bool = False, trt_profile: dict[str, int] | None = None) -> list[Any]:
    """`chosen` provider names -> the `providers=` list for InferenceSession, with per-provider options."""
    dev = device_id(device)
    prof = trt_profile or DEFAULT_PROFILE
    out: list[Any] = []
    for name in chosen:
        if name == "CUDAExecutionProvider":
            out.append((name, {"device_id": dev}))
        elif name == "TensorrtExecutionProvider":
            shape = lambda side: f"images:1x3x{side}x{side}"  # noqa: E731
            opts: dict[str, Any] = {"device_id": dev, "trt_fp16_enable": bool(trt_fp16),
                                    "trt_profile_min_shapes": shape(prof["min"]),
                                    "trt_profile_opt_shapes": shape(prof["opt"]),
                                    "trt_profile_max_shapes": shape(prof["max"])}
            if trt_cache_dir is not None:
                Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir),
                            trt_timing_cache_enable=True)
            out.append((name, opts))
        else:
            out.append(name)
    return out

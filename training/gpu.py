"""Speed and precision switches for a training run (issue 16), kept out of the loop so the trainer stays readable.

`amp_dtype`: --amp off|fp16|bf16 -> the autocast dtype (None: off). fp16 needs CUDA (and a GradScaler); bf16 runs
on CUDA and on CPUs with bf16 support, needs no scaler, and relies on `keep_geometry_fp32` for anchors and boxes.
"""

from __future__ import annotations

from typing import Any

import torch

from sfdeploy.models.precision import keep_geometry_fp32

from . import distributed as D

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `mode` on `device`; fp16 off the GPU is off (CPU autocast is bf16 only)."""
    dtype = AMP_DTYPES[mode]
    if dtype is torch.float16 and device.type != "cuda":
        return None
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        from sfdeploy.config import ConfigError

        raise ConfigError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use --amp fp16")
    return dtype


def configure_backends(cfg: Any, device: torch.device) -> None:
    """Process-wide CUDA switches: cuDNN autotuning and TF32 tensor-core math."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
    torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
    torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)


def prepare_model(model: torch.nn.Module, cfg: Any, info: D.DistInfo, device: torch.device,
                  dtype: torch.dtype | None) -> dict[str, Any]:
    """In place, before the optimiser is built: SyncBatchNorm on several CUDA ranks, fp32 geometry under AMP,
    channels_last, a compiled backbone. Returns what was done (logged with the run's start)."""
    done: dict[str, Any] = {"sync_bn_layers": D.sync_batchnorm(model, info, device)}
    if dtype is not None:
        done["fp32_geometry"] = keep_geometry_fp32(model)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
        done["channels_last"] = True
    if cfg.compile:
        backbone = getattr(model, "backbone", None)
        if backbone is None:
            from sfdeploy.config import ConfigError

            raise ConfigError("compile: this model has no .backbone to compile")
        backbone.compile(dynamic=True)  # in place: parameter names (checkpoints) stay the same
        done["compiled"] = "backbone"
    return done


class Uint8Images(torch.utils.data.Dataset):
    """Workers hand images over as uint8 (a quarter of float32's bytes through shared memory, pinning and the
    host-to-device copy); `image_to_device` restores [0, 1] floats on the device. Rounding after the transforms'
    resize costs at most 0.5/255 per pixel."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        image, target = self.dataset[item]
        if image.is_floating_point():
            image = image.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return image, target


def image_to_device(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One image to the device as float32 in [0, 1], whether it left the worker as uint8 or float."""
    image = image.to(device, non_blocking=True)
    return image.float().div_(255) if image.dtype == torch.uint8 else image

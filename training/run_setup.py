"""The setup part of a training run: the resume checkpoint, the data, the priors, and the model with its
optimiser, schedule and loss scaler, and the loader. Each function returns what it built; the Trainer keeps it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sfdeploy.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from sfdeploy.config import ConfigError
from sfdeploy.data import collate
from sfdeploy.models import build_model
from sfdeploy.models.builder import resolved_prior

from . import distributed as D
from . import gpu
from .config import TrainConfig
from .data import train_dataset, train_transforms_for
from .data import val_dataset as open_val_dataset
from .optim import build_optimizer, build_scheduler
from .priors_init import estimate_run_priors
from .weights import apply_weights


def resume_checkpoint(cfg: TrainConfig, out: Path) -> Checkpoint | None:
    """On resume, OUT/last.pt; its model config becomes cfg.model (authoritative: class names, estimated priors)."""
    if not cfg.resume:
        return None
    last = out / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"cannot resume: {last} not found (train without --resume first)")
    ckpt = load_checkpoint(last)
    if "train_state" not in ckpt.extra:
        raise CheckpointError(f"cannot resume: {last} has no training state")
    cfg.model = ckpt.config
    return ckpt


def open_data(cfg: TrainConfig, ckpt: Checkpoint | None, main: bool) -> tuple[Any, Any, int]:
    """(train dataset, val dataset on rank 0 or None, total steps); a new run takes its class names from the data."""
    dataset = train_dataset(cfg, transforms=train_transforms_for(cfg), with_masks=cfg.model.has_masks)
    if ckpt is None:
        cfg.model = cfg.model.replace(class_names=list(dataset.class_names), category_ids=dataset.category_ids)
    elif list(dataset.class_names) != list(cfg.model.class_names):
        raise CheckpointError(f"cannot resume: the data's classes {dataset.class_names} differ from the "
                              f"checkpoint's {cfg.model.class_names}")
    val_dataset = open_val_dataset(cfg, with_masks=cfg.model.has_masks) if main else None
    if val_dataset is not None and list(val_dataset.class_names) != list(cfg.model.class_names):
        raise ConfigError(f"--val-data classes {val_dataset.class_names} differ from the training data's "
                          f"{cfg.model.class_names}")
    if cfg.max_steps is not None:
        total_steps = cfg.max_steps
    else:
        total_steps = math.ceil((cfg.epochs or 1) * len(dataset) / cfg.batch_size)
    return dataset, val_dataset, total_steps


def resolve_priors(cfg: TrainConfig, ckpt: Checkpoint | None, info: D.DistInfo, progress: bool,
                   say: Callable[[str], None]) -> dict[str, float]:
    """Optimal bias initialisation: rank 0 estimates the priors into cfg.model, every rank gets them."""
    if ckpt is None and cfg.model.uses_optimal_init and cfg.model.prior_heads[0] not in cfg.model.priors:
        pis = estimate_run_priors(cfg, progress, say) if info.is_main else None
        pis = D.broadcast_object(info, pis)
        cfg.model = cfg.model.replace(priors={**cfg.model.priors, **pis})
    return {cfg.model.prior_heads[0]: resolved_prior(cfg.model)}


@dataclass
class RunModules:
    """The model on its device and what updates it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dt: torch.dtype | None
    use_amp: bool  # fp16: loss scaling on
    speed: dict[str, Any]  # what gpu.prepare_model turned on (logged)


def build_modules(cfg: TrainConfig, ckpt: Checkpoint | None, out: Path, info: D.DistInfo, device: torch.device,
                  total_steps: int, say: Any, progress: bool) -> RunModules:
    """Model (seeded, optional --weights), AMP, backend settings, optimiser, schedule and loss scaler."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, load_backbone_weights=ckpt is None)
    if ckpt is None and cfg.weights:
        apply_weights(model, cfg, out, say, info.is_main, progress)
    model = model.to(device)
    model.train()
    amp_dt = gpu.amp_dtype(cfg.amp, device)
    if cfg.amp != "off" and amp_dt is None:
        say(f"warning: --amp {cfg.amp} needs CUDA; training on {device} in fp32 (bf16 works on the CPU)")
    gpu.configure_backends(cfg, device)
    speed = gpu.prepare_model(model, cfg, info, device, amp_dt)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, total_steps, cfg)
    use_amp = amp_dt is torch.float16  # fp16 needs loss scaling; bf16 has fp32's range
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return RunModules(model, optimizer, scheduler, scaler, amp_dt, use_amp, speed)


def make_loader(dataset: Any, cfg: TrainConfig, info: D.DistInfo, device: torch.device,
                step: int) -> torch.utils.data.DataLoader:
    """A loader over the endless sampler, positioned at `step` (exact resume)."""
    sampler = D.InfiniteSampler(len(dataset), seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                                start=step * cfg.batch_size)
    samples = D.SeededSamples(dataset)
    return torch.utils.data.DataLoader(
        gpu.Uint8Images(samples) if cfg.uint8_images and device.type == "cuda" else samples,
        batch_size=cfg.batch_size // info.world_size, sampler=sampler, num_workers=cfg.workers,
        collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=cfg.persistent_workers and cfg.workers > 0, prefetch_factor=2 if cfg.workers > 0 else None,
    )

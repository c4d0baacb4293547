"""Optimiser and lr schedule of a training run: SGD+momentum (paper) or AdamW, warm-up then step decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, normalisation weights and the guides' scalars (any 0-d/1-d tensor) get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or name.endswith("guide.d")


def param_groups(model: nn.Module, weight_decay: float, bias_lr_factor: float = 1.0,
                 base_lr: float | None = None) -> list[dict]:
    """Weights (decayed), biases (no decay, lr x bias_lr_factor) and other 0-d/1-d parameters (no decay).

    With bias_lr_factor 1 biases share the no-decay group (as before); the factor needs base_lr.
    """
    decay, bias, keep = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not no_decay(name, p):
            decay.append(p)
        elif name.endswith(".bias") and bias_lr_factor != 1.0:
            bias.append(p)
        else:
            keep.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    if bias:
        if base_lr is None:
            raise ValueError("bias_lr_factor != 1 needs base_lr")
        groups.append({"params": bias, "weight_decay": 0.0, "lr": base_lr * bias_lr_factor})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    lr = cfg.effective_lr
    groups = param_groups(model, cfg.weight_decay, cfg.bias_lr_factor, lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """lr multiplier at `step` (0-based): linear warm-up from warmup_factor, x lr_decay at each lr_steps fraction."""
    factor = 1.0
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        factor = cfg.warmup_factor * (1 - alpha) + alpha
    milestones = [max(1, math.ceil(f * total_steps)) for f in cfg.lr_steps]
    drops = sum(1 for m in milestones if step >= m and m < total_steps)
    return factor * cfg.lr_decay**drops


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig):
    """A LambdaLR stepped once per iteration; its state_dict holds only numbers (weights_only-safe)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))

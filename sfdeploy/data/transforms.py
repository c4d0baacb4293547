"""Detection transforms on (image float32 [3,H,W], target) pairs that keep boxes and masks aligned.

Randomness comes from torch's RNG (optionally a given generator), so DataLoader worker seeding
applies. Masks keep their tight box within a pixel of the transformed box (see ``_resize_masks``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Target = dict[str, torch.Tensor]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class RandomHorizontalFlip:
    """Mirror left-right with probability p."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if self.p <= 0 or float(torch.rand((), generator=self.generator)) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def resize(image: torch.Tensor, target: Target, height: int, width: int) -> tuple[torch.Tensor, Target]:
    """Resize image, boxes and masks to exactly (height, width)."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image, target
    scaled = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False,
                           antialias=height < h or width < w)[0].clamp_(0.0, 1.0)
    target = dict(target)
    scale = torch.tensor([width / w, height / h, width / w, height / h], dtype=torch.float32)
    boxes = target["boxes"] * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    target["boxes"] = boxes
    if "masks" in target:
        masks = target["masks"]
        if masks.shape[0]:
            masks = _resize_masks(masks, height, width)
        else:
            masks = masks.new_zeros((0, height, width))
        target["masks"] = masks
    return scaled, target


def _resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Upscaling: nearest-exact. Downscaling: a pixel is set when any source pixel under it is, so thin
    parts and small objects never vanish and the tight box stays within 1 px of the scaled box."""
    h, w = masks.shape[-2:]
    if height < h or width < w:
        out = F.adaptive_max_pool2d(masks[None].float(), (height, width))[0]
    else:
        out = F.interpolate(masks[None].float(), size=(height, width), mode="nearest-exact")[0]
    return out.to(masks.dtype)


class ResizeShortestEdge:
    """Scale so the short side is min_size (one picked at random if several) and the long side <= max_size."""

    def __init__(self, min_size: int | Sequence[int], max_size: int,
                 generator: torch.Generator | None = None) -> None:
        self.min_sizes = [int(min_size)] if isinstance(min_size, (int, float)) else [int(s) for s in min_size]
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"resize sizes must be positive, got min_size={min_size}, max_size={max_size}")
        self.max_size = int(max_size)
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        k = int(torch.randint(len(self.min_sizes), (), generator=self.generator)) if len(self.min_sizes) > 1 else 0
        h, w = image.shape[-2:]
        scale = min(self.min_sizes[k] / min(h, w), self.max_size / max(h, w))
        return resize(image, target, max(1, round(h * scale)), max(1, round(w * scale)))

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(min_size={self.min_sizes}, max_size={self.max_size})"


class RandomScaleJitter:
    """Rescale by a factor drawn uniformly from [min_scale, max_scale] (scale augmentation)."""

    def __init__(self, min_scale: float, max_scale: float, generator: torch.Generator | None = None) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"scale jitter needs 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        s = _uniform(self.min_scale, self.max_scale, self.generator)
        h, w = image.shape[-2:]
        return resize(image, target, max(1, round(h * s)), max(1, round(w * s)))

    def __repr__(self) -> str:
        return f"RandomScaleJitter({self.min_scale}, {self.max_scale})"


def train_transforms(min_size: int | Sequence[int], max_size: int, flip: bool = True,
                     scale_jitter: tuple[float, float] | None = None) -> Compose:
    """Resize (+ optional scale jitter) + optional horizontal flip."""
    steps: list[Transform] = [ResizeShortestEdge(min_size, max_size)]
    if scale_jitter is not None:
        steps.append(RandomScaleJitter(*scale_jitter))
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    return Compose(steps)


def eval_transforms(min_size: int, max_size: int) -> Compose:
    """Deterministic resize only."""
    return Compose([ResizeShortestEdge(min_size, max_size)])

"""Keep detector geometry in fp32 under autocast.

Why: torchvision's AnchorGenerator takes its dtype from the feature maps, and BoxCoder.decode casts the anchors to
the regression dtype. Under bf16 autocast both happen in bf16 (8 mantissa bits: a coordinate near 1024 px is
rounded to 8 px), measured as up to 6 px anchor error and 11 px decode error at 800x1344. fp16 keeps more mantissa
bits but the same casts. `keep_geometry_fp32(model)` wraps every anchor generator and box coder of a model so that
anchors are generated and boxes encoded/decoded in fp32, whatever the autocast dtype. Wrappers hold no parameters
or buffers: state dicts (checkpoints) are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder


class Fp32AnchorGenerator(nn.Module):
    """Calls the wrapped generator with zero-cost fp32 stand-ins of the feature maps (only shape/device are read)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image_list: Any, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = [torch.zeros((), dtype=torch.float32, device=f.device).expand(f.shape) for f in feature_maps]
        return self.inner(image_list, maps)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


class Fp32BoxCoder:
    """BoxCoder / BoxLinearCoder whose encode/decode run in fp32 (inputs upcast, outputs fp32)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, reference_boxes: Any, proposals: Any) -> Any:
        return self.inner.encode([b.float() for b in reference_boxes], [p.float() for p in proposals])

    def encode_single(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_single(reference_boxes.float(), proposals.float())

    def decode(self, rel_codes: torch.Tensor, boxes: Any) -> torch.Tensor:
        return self.inner.decode(rel_codes.float(), [b.float() for b in boxes])

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.inner.decode_single(rel_codes.float(), boxes.float())


def keep_geometry_fp32(model: nn.Module) -> int:
    """Wrap (in place) every AnchorGenerator submodule and BoxCoder/BoxLinearCoder attribute; returns how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, AnchorGenerator):
                setattr(module, name, Fp32AnchorGenerator(child))
                count += 1
        for name, value in list(vars(module).items()):
            if isinstance(value, (BoxCoder, BoxLinearCoder)):
                setattr(module, name, Fp32BoxCoder(value))
                count += 1
    return count

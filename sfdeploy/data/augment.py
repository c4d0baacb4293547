"""Training augmentation presets on torchvision.transforms.v2 + tv_tensors (the library keeps boxes and masks in
step), after torchvision's detection reference recipes:

- ``none``: resize only;
- ``flip``: + horizontal flip (p = 0.5), the reference "hflip" recipe;
- ``default``: + an IoU-safe random crop (zooms in up to 2x; the crop keeps every object whose centre it contains
  and has a minimum IoU with one of them, or leaves the image as is), then box sanitising;
- ``strong``: the reference "ssd" recipe: photometric distortion, zoom-out up to 2x, IoU-safe crop down to 0.3 of
  the side, flip, box sanitising.

Scale augmentation is done by cropping and zooming out, not by resizing: the detector resizes every image to its
``min_size``/``max_size`` inside (``model.transform``), which would undo a plain random resize.

Two deliberate choices the library does not make: the final resize is ours (``ResizeShortestEdge``: masks are
downscaled by max-pooling, so thin parts and small objects never vanish and each box stays within 1 px of its mask's
tight box; v2 resizes masks by nearest neighbour, which can drop them), and after a crop every box that has a mask
is set to the mask's tight box (a clamped box is larger than the visible part of a non-rectangular object).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .boxes import masks_to_boxes
from .transforms import Compose, ResizeShortestEdge, Target, Transform

PRESETS = ("none", "flip", "default", "strong")
IMAGE_FILL = (0.485, 0.456, 0.406)  # zoom-out canvas: the ImageNet mean (what the model normalises to ~0)


class V2Step:
    """Run a torchvision v2 transform on our (image, target) pair with boxes/masks/labels as tv_tensors."""

    def __init__(self, transform: v2.Transform, *, tighten_boxes: bool = False) -> None:
        self.transform = transform
        self.tighten_boxes = tighten_boxes

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        h, w = image.shape[-2:]
        sample: dict[str, torch.Tensor] = {
            "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w)),
            "labels": target["labels"], "iscrowd": target.get("iscrowd", torch.zeros_like(target["labels"])),
        }
        if "masks" in target:
            sample["masks"] = tv_tensors.Mask(target["masks"])
        out_image, out = self.transform(tv_tensors.Image(image), sample)
        result = dict(target)
        result.update(boxes=out["boxes"].as_subclass(torch.Tensor).float(), labels=out["labels"],
                      iscrowd=out["iscrowd"])
        if "masks" in out:
            masks = out["masks"].as_subclass(torch.Tensor)
            result["masks"] = masks
            if self.tighten_boxes and len(masks):
                tight = torch.from_numpy(masks_to_boxes(masks.numpy()))
                has_pixels = (masks.flatten(1) > 0).any(1)
                result["boxes"] = torch.where(has_pixels[:, None], tight, result["boxes"])
        return out_image.as_subclass(torch.Tensor), result

    def __repr__(self) -> str:
        return f"V2Step({self.transform!r})"


def _labels(sample: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """SanitizeBoundingBoxes removes these in step with the boxes (and the masks, which it finds by type)."""
    target = sample[1]
    return target["labels"], target["iscrowd"]


def preset_transforms(preset: str, min_size: int, max_size: int) -> Compose:
    """The training transforms of ``preset`` (see the module docstring) for a model of ``min_size``/``max_size``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {', '.join(PRESETS)}")
    # resize first: cropping and zooming out a 4000 px photo would cost memory for pixels the model never sees
    steps: list[Transform] = [ResizeShortestEdge(min_size, max_size)]
    if preset == "strong":
        steps.append(V2Step(v2.RandomPhotometricDistort(p=0.5)))
    if preset in ("default", "strong"):
        fill = {tv_tensors.Image: IMAGE_FILL, tv_tensors.Mask: 0, "others": 0}
        zoom_out = [v2.RandomZoomOut(fill=fill, side_range=(1.0, 2.0), p=0.5)] if preset == "strong" else []
        crop = v2.RandomIoUCrop(min_scale=0.3 if preset == "strong" else 0.5)
        steps.append(V2Step(v2.Compose([*zoom_out, crop, v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels)]),
                            tighten_boxes=True))
    if preset != "none":
        steps.append(V2Step(v2.RandomHorizontalFlip(p=0.5)))
    if preset in ("default", "strong"):  # back to the model's size after a crop or zoom-out
        steps.append(ResizeShortestEdge(min_size, max_size))
    return Compose(steps)

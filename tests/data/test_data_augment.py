"""torchvision.transforms.v2 presets: every preset keeps boxes, masks, labels and iscrowd in step (a box drawn
around a mask stays tight after the transform), handles images without objects, and ends at the model's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfdeploy.data import SyntheticDataset
from sfdeploy.data.augment import PRESETS, preset_transforms


@pytest.fixture(scope="module")
def samples() -> list[tuple[torch.Tensor, dict]]:
    ds = SyntheticDataset(12, seed=2, image_size=96, with_masks=True)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_keeps_boxes_tight_around_masks(preset: str, samples, tight_box) -> None:
    transform = preset_transforms(preset, 64, 64)
    torch.manual_seed(0)
    changed = 0
    for _ in range(4):
        for image, target in samples:
            out_image, out = transform(image, target)
            h, w = out_image.shape[-2:]
            assert max(h, w) == 64 and out_image.dtype == torch.float32
            assert 0.0 <= float(out_image.min()) and float(out_image.max()) <= 1.0
            n = len(out["boxes"])
            assert out["masks"].shape == (n, h, w) and len(out["labels"]) == n == len(out["iscrowd"])
            assert set(out["labels"].tolist()) <= set(target["labels"].tolist())
            for mask, box in zip(out["masks"].numpy(), out["boxes"].numpy()):
                assert mask.any(), "an object without pixels must have been sanitised away"
                np.testing.assert_allclose(tight_box(mask), box, atol=1.0)
            changed += not torch.equal(out["boxes"], target["boxes"] * 64 / 96)
    if preset != "none":
        assert changed > 0


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_handles_images_without_objects(preset: str) -> None:
    image = torch.rand(3, 50, 80)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "iscrowd": torch.zeros(0, dtype=torch.uint8), "masks": torch.zeros(0, 50, 80, dtype=torch.uint8),
              "image_id": torch.tensor(3)}
    out_image, out = preset_transforms(preset, 64, 64)(image, target)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape[0] == 0 and out["image_id"].item() == 3
    assert max(out_image.shape[-2:]) == 64


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown augmentation preset 'heavy'"):
        preset_transforms("heavy", 64, 64)

"""Transforms keep boxes and masks aligned (box == tight bbox of the transformed mask, within 1 px)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfdeploy.data import (Compose, RandomHorizontalFlip, RandomScaleJitter, ResizeShortestEdge, SyntheticDataset,
                           eval_transforms, train_transforms)


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, dict]:
    ds = SyntheticDataset(20, seed=5)
    # the sample with the most objects
    i = max(range(20), key=lambda k: len(ds.annotation(k).boxes))
    image, target = ds[i]
    return image, target


def assert_aligned(image: torch.Tensor, target: dict, tight_box, atol: float) -> None:
    h, w = image.shape[-2:]
    assert target["masks"].shape[-2:] == (h, w)
    for mask, box in zip(target["masks"].numpy(), target["boxes"].numpy()):
        if mask.any():
            np.testing.assert_allclose(tight_box(mask), box, atol=atol)
    assert (target["boxes"][:, 0::2] <= w).all() and (target["boxes"][:, 1::2] <= h).all()


def test_flip_is_exact_and_an_involution(sample, tight_box) -> None:
    image, target = sample
    flip = RandomHorizontalFlip(p=1.0)
    fimage, ftarget = flip(image, target)
    assert torch.equal(fimage, image.flip(-1))
    assert_aligned(fimage, ftarget, tight_box, atol=0)
    assert not torch.equal(ftarget["boxes"], target["boxes"])
    bimage, btarget = flip(fimage, ftarget)
    assert torch.equal(bimage, image) and torch.equal(btarget["boxes"], target["boxes"])
    assert torch.equal(btarget["masks"], target["masks"])
    same_image, same_target = RandomHorizontalFlip(p=0.0)(image, target)
    assert same_image is image and same_target is target


@pytest.mark.parametrize("min_size,max_size,expected", [(100, 1000, (100, 100)), (400, 1000, (400, 400)),
                                                        (300, 150, (150, 150)), (173, 173, (173, 173))])
def test_resize_shortest_edge(sample, tight_box, min_size: int, max_size: int, expected) -> None:
    image, target = sample
    rimage, rtarget = ResizeShortestEdge(min_size, max_size)(image, target)
    assert tuple(rimage.shape) == (3, *expected)
    assert rtarget["labels"] is target["labels"] or torch.equal(rtarget["labels"], target["labels"])
    assert_aligned(rimage, rtarget, tight_box, atol=1.0)


def non_square_sample() -> tuple[torch.Tensor, dict]:
    """60x100 image: a rectangle, a disc and a 1-px diagonal sliver (the worst case for downscaling)."""
    h, w = 60, 100
    yy, xx = np.mgrid[:h, :w]
    masks = np.stack([(xx >= 10) & (xx < 37) & (yy >= 5) & (yy < 21),
                      (xx - 70) ** 2 + (yy - 35) ** 2 <= 15 ** 2,
                      (np.abs(xx - yy - 20) < 1) & (yy >= 30) & (yy < 58)]).astype(np.uint8)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2, 3]),
              "masks": torch.from_numpy(masks), "image_id": torch.tensor(1),
              "iscrowd": torch.zeros(3, dtype=torch.uint8)}
    return torch.rand(3, h, w), target


@pytest.mark.parametrize("min_size,max_size,expected", [(30, 1000, (30, 50)), (17, 1000, (17, 28)),
                                                        (90, 120, (72, 120)), (121, 500, (121, 202))])
def test_resize_non_square(tight_box, min_size: int, max_size: int, expected) -> None:
    image, target = non_square_sample()
    rimage, rtarget = ResizeShortestEdge(min_size, max_size)(image, target)
    assert tuple(rimage.shape[-2:]) == expected
    assert all(m.any() for m in rtarget["masks"])  # no instance loses its mask, however thin
    assert_aligned(rimage, rtarget, tight_box, atol=1.0)
    fimage, ftarget = RandomHorizontalFlip(1.0)(rimage, rtarget)
    assert_aligned(fimage, ftarget, tight_box, atol=1.0)


def test_scale_jitter_is_seedable_and_in_range(sample, tight_box) -> None:
    image, target = sample
    sizes = []
    for seed in range(6):
        jitter = RandomScaleJitter(0.5, 1.5, generator=torch.Generator().manual_seed(seed))
        jimage, jtarget = jitter(image, target)
        again = RandomScaleJitter(0.5, 1.5, generator=torch.Generator().manual_seed(seed))(image, target)[0]
        assert jimage.shape == again.shape
        assert 128 <= jimage.shape[-1] <= 384
        assert_aligned(jimage, jtarget, tight_box, atol=1.0)
        sizes.append(jimage.shape[-1])
    assert len(set(sizes)) > 1


def test_presets_and_empty_targets(tight_box) -> None:
    ds = SyntheticDataset(30, seed=0, transforms=train_transforms(160, 200, flip=True, scale_jitter=(0.8, 1.2)))
    empty = next(i for i in range(30) if len(ds.annotation(i).boxes) == 0)
    image, target = ds[empty]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape[0] == 0
    assert target["masks"].shape[-2:] == image.shape[-2:]
    evaluated = SyntheticDataset(5, seed=0, transforms=eval_transforms(128, 128))
    for i in range(5):
        image, target = evaluated[i]
        assert image.shape == (3, 128, 128)
        assert_aligned(image, target, tight_box, atol=1.0)
    assert isinstance(train_transforms(100, 100, flip=False), Compose)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError):
        RandomScaleJitter(1.5, 0.5)
    with pytest.raises(ValueError):
        ResizeShortestEdge(0, 100)

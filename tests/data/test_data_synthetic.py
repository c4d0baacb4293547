"""The built-in synthetic set: exact masks/boxes, determinism, split disjointness, variety, speed."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

from sfdeploy.data import DataError, SyntheticDataset, build_dataset


@pytest.fixture(scope="module")
def samples() -> list[tuple[torch.Tensor, dict]]:
    ds = SyntheticDataset(60, seed=3)
    return [ds[i] for i in range(len(ds))]


def test_sample_format(samples) -> None:
    image, target = samples[0]
    assert image.shape == (3, 256, 256) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["image_id"].dtype == torch.int64 and target["image_id"].ndim == 0
    assert target["masks"].dtype == torch.uint8 and target["iscrowd"].dtype == torch.uint8
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32


def test_boxes_are_tight_boxes_of_disjoint_visible_masks(samples, tight_box) -> None:
    n_objects = 0
    for _, target in samples:
        masks, boxes, labels = target["masks"].numpy(), target["boxes"].numpy(), target["labels"].numpy()
        assert len(masks) == len(boxes) == len(labels)
        assert ((labels >= 1) & (labels <= 4)).all()
        for mask, box in zip(masks, boxes):
            assert mask.sum() >= 20  # occluded instances below ~20 visible px are dropped
            np.testing.assert_array_equal(tight_box(mask), box)
        if len(masks):
            assert masks.sum(axis=0).max() <= 1  # occlusion: each pixel belongs to at most one instance
        n_objects += len(boxes)
    assert n_objects > 60


def test_objects_have_their_class_colour_where_visible(samples) -> None:
    image, target = samples[1] if len(samples[1][1]["boxes"]) else samples[2]
    for mask, label in zip(target["masks"].bool(), target["labels"]):
        pixels = image[:, mask]  # [3, n]
        dominant = int(pixels.mean(dim=1).argmax())
        assert dominant == {1: 0, 2: 1, 3: 2, 4: 0}[int(label)]  # red, green, blue, yellow (R~G)


def test_deterministic_and_seed_sensitive() -> None:
    a, b = SyntheticDataset(5, seed=7), SyntheticDataset(5, seed=7)
    for i in range(5):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["masks"], tb["masks"])
    assert not torch.equal(a[0][0], SyntheticDataset(5, seed=8)[0][0])


def test_train_and_val_are_disjoint() -> None:
    def digests(split: str) -> set[str]:
        ds = build_dataset("synthetic:40", split=split, seed=0)
        return {hashlib.sha1(ds.load_image(i).tobytes()).hexdigest() for i in range(len(ds))}

    train, val = digests("train"), digests("val")
    assert len(train) == len(val) == 40 and not train & val


def test_annotation_matches_item_without_rendering(tight_box) -> None:
    ds = SyntheticDataset(30, seed=1)
    anns = [ds.annotation(i) for i in range(30)]
    fresh = SyntheticDataset(30, seed=1)
    for i, ann in enumerate(anns):
        _, target = fresh[i]
        assert ann.image_id == int(target["image_id"]) and (ann.width, ann.height) == (256, 256)
        np.testing.assert_array_equal(ann.boxes, target["boxes"].numpy())
        np.testing.assert_array_equal(ann.labels, target["labels"].numpy())
        assert ann.file_name == "" and not ann.iscrowd.any()


def test_variety_zero_object_images_and_sizes() -> None:
    ds = SyntheticDataset(200, seed=0)
    anns = [ds.annotation(i) for i in range(len(ds))]
    counts = np.array([len(a.boxes) for a in anns])
    assert counts.min() == 0 and counts.max() <= 6 and (counts == 0).sum() >= 5
    boxes = np.concatenate([a.boxes for a in anns])
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() < 16 and sides.max() > 96
    assert set(np.concatenate([a.labels for a in anns]).tolist()) == {1, 2, 3, 4}
    empty = int(np.flatnonzero(counts == 0)[0])
    _, target = ds[empty]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 256, 256)


def test_fast_enough() -> None:
    ds = SyntheticDataset(40, seed=2)
    ds[0]
    start = time.perf_counter()
    for i in range(40):
        ds[i]
    per_image = (time.perf_counter() - start) / 40
    assert per_image < 0.05, f"{per_image * 1e3:.1f} ms per image"  # target ~5 ms; loose for busy CI


def test_fingerprint() -> None:
    fp = SyntheticDataset(10, seed=0).fingerprint()
    assert fp == SyntheticDataset(10, seed=0).fingerprint()
    assert len({fp, SyntheticDataset(10, seed=1).fingerprint(), SyntheticDataset(10, split="val").fingerprint(),
                SyntheticDataset(11).fingerprint()}) == 4


def test_without_masks_and_bad_arguments() -> None:
    assert "masks" not in SyntheticDataset(2, with_masks=False)[0][1]
    with pytest.raises(DataError, match="split"):
        SyntheticDataset(2, split="holdout")
    with pytest.raises(DataError, match="no images"):
        SyntheticDataset(0)
    with pytest.raises(IndexError):
        SyntheticDataset(2)[2]

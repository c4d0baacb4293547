"""PASCAL VOC reader on a tiny generated root, malformed inputs, and the real raccoon set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sfdeploy.data import DataError, DataWarning, VocDataset, build_dataset, validate_images


def test_loads_one_based_boxes_as_pixel_edges(voc_root: Path) -> None:
    ds = VocDataset(voc_root, split="train")
    assert len(ds) == 3
    a = ds.annotation(0)
    assert (a.width, a.height, a.file_name) == (50, 40, str(voc_root / "JPEGImages" / "img1.jpg"))
    np.testing.assert_allclose(a.boxes, [[0, 0, 20, 30], [20, 4, 50, 40]])  # (xmin-1, ymin-1, xmax, ymax)
    assert a.iscrowd.tolist() == [0, 0]  # difficult objects are ordinary boxes
    image, target = ds[0]
    assert image.shape == (3, 40, 50) and target["labels"].tolist() == [2, 3]  # bird=1, cat=2, dog=3
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4)


def test_train_and_val_share_class_names(voc_root: Path) -> None:
    train, val = VocDataset(voc_root, split="train"), VocDataset(voc_root, split="val")
    assert train.class_names == val.class_names == ["bird", "cat", "dog"]
    assert val.annotation(0).labels.tolist() == [1]


def test_given_class_names_drop_unknown_objects(voc_root: Path) -> None:
    with pytest.warns(DataWarning, match=r"dropped 1 objects of unknown class \(e.g. cat\)"):
        ds = VocDataset(voc_root, split="train", class_names=["dog"])
    assert ds.annotation(0).labels.tolist() == [1]


def test_bad_boxes_are_clipped_or_dropped(tmp_path: Path, make_voc) -> None:
    root = make_voc(tmp_path, {"train": [("x", 30, 20, [("a", [5, 5, 45, 15], 0), ("a", [8, 8, 7, 12], 0)])]})
    with pytest.warns(DataWarning, match="clipped 1 boxes outside their image; dropped 1 zero-area boxes"):
        ds = VocDataset(root)
    np.testing.assert_allclose(ds.annotation(0).boxes, [[4, 4, 30, 15]])


def test_malformed_xml_names_the_file(voc_root: Path) -> None:
    (voc_root / "Annotations" / "img2.xml").write_text("<annotation><size>")
    with pytest.raises(DataError, match=r"img2\.xml: malformed XML"):
        VocDataset(voc_root)


def test_missing_split_lists_available(voc_root: Path) -> None:
    with pytest.raises(DataError, match=r"test\.txt: split file not found \(available splits: train, val\)"):
        VocDataset(voc_root, split="test")


def test_missing_image_skipped_and_empty_split_rejected(voc_root: Path) -> None:
    (voc_root / "JPEGImages" / "img2.jpg").unlink()
    with pytest.warns(DataWarning, match="skipped 1 images whose file is missing"):
        assert len(VocDataset(voc_root)) == 2
    (voc_root / "ImageSets" / "Main" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match="no images in"):
        VocDataset(voc_root, split="val")


def test_corrupt_jpeg(voc_root: Path) -> None:
    (voc_root / "JPEGImages" / "img1.jpg").write_bytes(b"garbage")
    ds = VocDataset(voc_root)
    with pytest.raises(DataError, match=r"img1\.jpg: cannot decode image"):
        ds[0]
    assert len(validate_images(ds)) == 1


def test_no_masks_in_voc(voc_root: Path) -> None:
    with pytest.raises(DataError, match="no instance masks"):
        build_dataset(str(voc_root), with_masks=True)


def test_raccoon_loads(raccoon_root: Path) -> None:
    train = build_dataset(str(raccoon_root), split="train")
    val = build_dataset(str(raccoon_root), split="val")
    assert (len(train), len(val)) == (160, 40)
    assert train.class_names == val.class_names == ["raccoon"]
    for ds in (train, val):
        for i in range(len(ds)):
            a = ds.annotation(i)
            assert len(a.boxes) >= 1 and (a.labels == 1).all()
            assert (a.boxes[:, :2] >= 0).all()
            assert (a.boxes[:, 2] <= a.width).all() and (a.boxes[:, 3] <= a.height).all()
            assert (a.boxes[:, 2:] > a.boxes[:, :2]).all()
    first = val.annotation(0)
    image, target = val[0]
    assert image.shape == (3, first.height, first.width) and image.dtype == torch.float32
    assert torch.equal(target["boxes"], torch.from_numpy(first.boxes))
    assert train.fingerprint() != val.fingerprint()


def test_all_images_missing_names_the_images_flag(voc_root: Path) -> None:
    for jpg in (voc_root / "JPEGImages").iterdir():
        jpg.unlink()
    with pytest.raises(DataError, match="none of the .* exist in .*--images DIR"):
        VocDataset(voc_root)

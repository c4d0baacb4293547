"""COCO reader: label mapping, crowd handling, masks and every load-time validation path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sfdeploy.data import CocoDataset, DataError, DataWarning, build_dataset, validate_images


def test_loads_boxes_labels_and_keeps_empty_images(coco_path: Path) -> None:
    ds = CocoDataset(coco_path)
    assert len(ds) == 3
    assert ds.class_names == ["cat", "dog"]  # sorted by category id: 3 -> 1, 7 -> 2
    a = ds.annotation(0)
    assert (a.image_id, a.width, a.height, a.file_name) == (11, 64, 48, str(coco_path.parent / "a.png"))
    np.testing.assert_allclose(a.boxes, [[10, 10, 30, 30], [40, 5, 50, 35]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64 and a.iscrowd.dtype == np.uint8
    assert a.labels.tolist() == [1, 2]
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["image_id"].item() == 11 and target["labels"].tolist() == [1, 2]
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_crowd_is_annotated_but_not_a_training_target(coco_path: Path) -> None:
    ds = CocoDataset(coco_path)
    assert ds.annotation(1).iscrowd.tolist() == [1]
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["iscrowd"].shape == (0,)


def test_masks_from_polygons_and_rle(coco_path: Path, tight_box) -> None:
    ds = CocoDataset(coco_path)
    assert ds.has_masks  # auto: the JSON has segmentations
    _, target = ds[0]
    masks = target["masks"]
    assert masks.shape == (2, 48, 64) and masks.dtype == torch.uint8
    for mask, box in zip(masks.numpy(), target["boxes"].numpy()):
        np.testing.assert_allclose(tight_box(mask), box, atol=1)
    crowd = ds.masks(1)
    assert crowd.shape == (1, 40, 40) and crowd[0, :8, :8].all() and crowd.sum() == 64
    assert not CocoDataset(coco_path, with_masks=False)[0][1].keys() & {"masks"}


def test_masks_requested_without_segmentation_is_an_error(tmp_path: Path, coco_data, make_coco) -> None:
    data = coco_data
    for ann in data["annotations"]:
        ann.pop("segmentation")
    path = make_coco(tmp_path, data)
    assert not CocoDataset(path).has_masks
    with pytest.raises(DataError, match="no annotation has a 'segmentation'"):
        CocoDataset(path, with_masks=True)


def test_bad_boxes_and_unknown_categories_give_one_counted_warning(tmp_path: Path, coco_data, make_coco) -> None:
    data = coco_data
    data["annotations"] += [
        {"id": 10, "image_id": 13, "category_id": 3, "bbox": [20, 20, 30, 30], "iscrowd": 0},  # outside 32x32
        {"id": 11, "image_id": 13, "category_id": 3, "bbox": [5, 5, 0, 4], "iscrowd": 0},  # zero width
        {"id": 12, "image_id": 13, "category_id": 3, "bbox": [40, 40, 5, 5], "iscrowd": 0},  # fully outside
        {"id": 13, "image_id": 13, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # unknown category
    ]
    with pytest.warns(DataWarning) as record:
        ds = CocoDataset(make_coco(tmp_path, data))
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("coco.json: ")
    assert "clipped 2 boxes outside their image" in message
    assert "dropped 2 zero-area boxes" in message
    assert "dropped 1 annotations with unknown category id (e.g. 99)" in message
    np.testing.assert_allclose(ds.annotation(2).boxes, [[20, 20, 32, 32]])


def test_missing_image_file_is_skipped_with_warning(tmp_path: Path, make_coco) -> None:
    path = make_coco(tmp_path)
    (tmp_path / "b.jpg").unlink()
    with pytest.warns(DataWarning, match="skipped 1 images whose file is missing"):
        ds = CocoDataset(path)
    assert [ds.annotation(i).image_id for i in range(len(ds))] == [11, 13]


def test_all_images_missing_or_none_listed_is_an_error(tmp_path: Path, coco_data) -> None:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco_data))
    with pytest.raises(DataError, match="no images in .*give the image folder with --images DIR") as info:
        CocoDataset(path)
    assert "images_dir" not in str(info.value)  # name the CLI flag users type, not the Python argument
    empty = coco_data | {"images": [], "annotations": []}
    path.write_text(json.dumps(empty))
    with pytest.raises(DataError, match="no images in"):
        CocoDataset(path)


def test_images_dir(tmp_path: Path, make_coco) -> None:
    path = make_coco(tmp_path / "ann", image_root=tmp_path / "pixels")
    ds = build_dataset(str(path), images_dir=str(tmp_path / "pixels"))
    assert len(ds) == 3 and ds[0][0].shape == (3, 48, 64)


@pytest.mark.parametrize("text,match", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "not a COCO instances file"),
    ('{"images": [], "annotations": []}', "not a COCO instances file"),
])
def test_malformed_json_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        CocoDataset(path)
    assert "broken.json" in str(info.value) and "\n" not in str(info.value)


def test_corrupt_image_raises_data_error_and_validate_images_finds_it(tmp_path: Path, make_coco) -> None:
    path = make_coco(tmp_path)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = CocoDataset(path)
    ds[0]  # intact images still load
    with pytest.raises(DataError, match=r"b\.jpg: cannot decode image"):
        ds[1]
    problems = validate_images(ds)
    assert len(problems) == 1 and "b.jpg" in problems[0]


def test_image_size_disagreeing_with_json_is_an_error(tmp_path: Path, make_coco, make_image) -> None:
    path = make_coco(tmp_path)
    make_image(tmp_path / "a.png", 10, 10)
    with pytest.raises(DataError, match="a.png: image is 10x10 but annotated as 64x48"):
        CocoDataset(path)[0]


def test_fingerprint_tracks_annotations(tmp_path: Path, coco_data, make_coco) -> None:
    first = CocoDataset(make_coco(tmp_path / "one")).fingerprint()
    assert first == CocoDataset(tmp_path / "one" / "coco.json").fingerprint()
    data = coco_data
    data["annotations"][0]["bbox"] = [11, 10, 20, 20]
    assert CocoDataset(make_coco(tmp_path / "two", data)).fingerprint() != first

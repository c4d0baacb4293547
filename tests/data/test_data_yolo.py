"""YOLO data.yaml reader: boxes and polygons, splits, header-only sizes, malformed rows; trains and evaluates."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml

from sfdeploy.data import DataError, YoloDataset, build_dataset


def write_yolo(root: Path, make_image) -> Path:  # type: ignore[no-untyped-def]
    """train: a.png (a cat box, a dog polygon), b.png (no label file: background); val: c.png (a dog polygon)."""
    make_image(root / "images" / "train" / "a.png", 80, 40)
    make_image(root / "images" / "train" / "b.png", 32, 32)
    make_image(root / "images" / "val" / "c.png", 50, 50)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    # cat box centred (20, 20) of 16x20 px; dog triangle (40,10) (72,10) (72,30)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.25 0.5 0.2 0.5\n1 0.5 0.25 0.9 0.25 0.9 0.75\n")
    (root / "labels" / "val" / "c.txt").write_text("1 0.3 0.4 0.7 0.4 0.7 0.6 0.3 0.6\n")  # a box-shaped polygon
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                    "names": {0: "cat", 1: "dog"}}))
    return path


@pytest.fixture
def yolo_yaml(tmp_path: Path, make_image) -> Path:  # type: ignore[no-untyped-def]
    return write_yolo(tmp_path / "yolo", make_image)


def test_boxes_polygons_and_background(yolo_yaml: Path, tight_box) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(Warning, match=r"1 images have no labels \(kept as background images\)"):
        ds = build_dataset(str(yolo_yaml))
    assert isinstance(ds, YoloDataset) and ds.class_names == ["cat", "dog"] and len(ds) == 2 and ds.has_masks
    a = ds.annotation(0)
    assert (a.width, a.height) == (80, 40) and a.labels.tolist() == [1, 2]
    np.testing.assert_allclose(a.boxes, [[12, 10, 28, 30], [40, 10, 72, 30]], atol=1e-4)
    assert len(ds.annotation(1).boxes) == 0
    image, target = ds[0]
    assert image.shape == (3, 40, 80)
    masks = target["masks"].numpy()
    np.testing.assert_allclose(tight_box(masks[0]), [12, 10, 28, 30], atol=1)  # box row: the box is the mask
    np.testing.assert_allclose(tight_box(masks[1]), [40, 10, 72, 30], atol=1)
    assert masks[1].sum() < 0.6 * 32 * 20  # a triangle, not its box
    val = build_dataset(str(yolo_yaml), split="val", with_masks=False)
    assert len(val) == 1 and val.annotation(0).labels.tolist() == [2] and not val.has_masks


def test_loading_reads_headers_not_pixels(yolo_yaml: Path) -> None:
    from PIL import ImageFile

    with mock.patch.object(ImageFile.ImageFile, "load", side_effect=AssertionError("decoded pixels")):
        ds = YoloDataset(yolo_yaml, split="val")
        assert ds.annotation(0).width == 50


@pytest.mark.parametrize("row,match", [
    ("0 0.5 0.5 0.2", "3 coordinates"),
    ("cat 0.5 0.5 0.2 0.2", "expected numbers"),
    ("0.5 0.5 0.5 0.2 0.2", "class index must be an integer"),
])
def test_malformed_rows_name_file_and_line(yolo_yaml: Path, row: str, match: str) -> None:
    (yolo_yaml.parent / "labels" / "val" / "c.txt").write_text(f"1 0.5 0.5 0.4 0.2\n{row}\n")
    with pytest.raises(DataError, match=match) as info:
        YoloDataset(yolo_yaml, split="val")
    assert "c.txt:2: " in str(info.value) and "\n" not in str(info.value)


def test_unknown_class_and_missing_split(yolo_yaml: Path) -> None:
    (yolo_yaml.parent / "labels" / "val" / "c.txt").write_text("1 0.5 0.5 0.4 0.2\n5 0.5 0.5 0.1 0.1\n")
    with pytest.warns(Warning, match=r"dropped 1 rows with a class index outside names \(e\.g\. c\.txt:2\)"):
        ds = YoloDataset(yolo_yaml, split="val")
    assert ds.annotation(0).labels.tolist() == [2]
    with pytest.raises(DataError, match=r"no 'test' split \(it has train, val\)"):
        YoloDataset(yolo_yaml, split="test")


def test_yolo_set_trains_and_evaluates_masks(yolo_yaml: Path, tmp_path: Path, capsys) -> None:
    import sfdeploy.cli as cli
    from sfdeploy.training.metrics_log import read_metrics

    out = tmp_path / "run"
    argv = ["train", "--model", "mask_rcnn", "--backbone", "resnet18", "--fpn-channels", "32", "--image-size", "64",
            "--data", str(yolo_yaml), "--val-data", str(yolo_yaml), "--batch-size", "2", "--workers", "0",
            "--max-steps", "2", "--no-progress", "--out", str(out)]
    with mock.patch.object(cli, "STAGE_MODULES", ("sfdeploy.training.cli",)):
        rc = cli.main(argv)
    assert rc == 0, capsys.readouterr().err
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "eval"]
    assert evals and evals[-1]["metrics"]["images"] == 1 and "segm" in evals[-1]["metrics"]

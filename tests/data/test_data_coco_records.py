"""COCO hardening: malformed values are one-line DataErrors naming file, record and field (CLI exit 2);
an annotation-free set says so; each load-time warning reaches the console once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from sfdeploy.cli import main
from sfdeploy.data import CocoDataset, DataError

REPO = Path(__file__).resolve().parents[2]


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        *parents, last = path
        target = data
        for key in parents:
            target = target[key]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value
    return edit


_DROP = object()
BAD_CORRUPT_RLE = {"size": [40, 40], "counts": "!!garbage"}

# (case, edit, record named in the message, field named in the message)
MALFORMED = [
    ("category without id", _set(("categories", 0, "id"), _DROP), "categories[0]", "'id' is missing"),
    ("string category id", _set(("categories", 0, "id"), "seven"), "categories[0]", "'id' must be an integer"),
    ("list category id", _set(("categories", 0, "id"), [7]), "categories[0]", "'id' must be an integer"),
    ("string image id", _set(("images", 0, "id"), "x"), "images[0]", "'id' must be an integer"),
    ("list image id", _set(("images", 0, "id"), [11]), "images[0]", "'id' must be an integer"),
    ("list category_id", _set(("annotations", 0, "category_id"), [3]), "annotations[0] (id 1)", "'category_id'"),
    ("non-numeric bbox", _set(("annotations", 0, "bbox"), ["a", 1, 2, 3]), "annotations[0] (id 1)", "'bbox'"),
    ("width 'wide'", _set(("images", 0, "width"), "wide"), "images[0] (id 11)", "'width' must be a positive"),
    ("width 0", _set(("images", 0, "width"), 0), "images[0] (id 11)", "'width' must be a positive"),
    ("height < 0", _set(("images", 1, "height"), -4), "images[1] (id 12)", "'height' must be a positive"),
    ("corrupt RLE", _set(("annotations", 2, "segmentation"), BAD_CORRUPT_RLE), "annotation id 3",
     "'segmentation' is a corrupt compressed RLE"),
    ("RLE of another size", _set(("annotations", 2, "segmentation"), {"size": [4, 4], "counts": [16]}),
     "annotation id 3", "'segmentation' RLE size [4, 4] does not match"),
    ("text polygon", _set(("annotations", 0, "segmentation"), [["a"] * 6]), "annotation id 1", "'segmentation'"),
    ("annotation not an object", lambda d: d["annotations"].append(5), "annotations[3]", "must be an object"),
    ("iscrowd 'yes'", _set(("annotations", 0, "iscrowd"), "yes"), "annotations[0] (id 1)", "'iscrowd'"),
    ("area 'big'", _set(("annotations", 0, "area"), "big"), "annotations[0] (id 1)", "'area'"),
]


@pytest.mark.parametrize("case,edit,record,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_value_is_one_line_naming_file_record_and_field(
        tmp_path: Path, make_coco, coco_data, case: str, edit, record: str, field: str) -> None:
    path = make_coco(tmp_path)  # images written from the intact data
    edit(coco_data)
    path.write_text(json.dumps(coco_data))
    with pytest.raises(DataError) as info:
        ds = CocoDataset(path)
        for i in range(len(ds)):  # nothing may be left to fail later, inside a DataLoader worker
            ds[i]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {record}"), message
    assert field in message, message


@pytest.mark.parametrize("case,edit,record,field", MALFORMED[:3] + MALFORMED[6:8] + MALFORMED[10:11],
                         ids=[m[0] for m in MALFORMED[:3] + MALFORMED[6:8] + MALFORMED[10:11]])
def test_cli_exit_2_with_one_line(tmp_path: Path, make_coco, coco_data, capsys, case: str, edit, record: str,
                                  field: str) -> None:
    path = make_coco(tmp_path)
    edit(coco_data)
    path.write_text(json.dumps(coco_data))
    rc = main(["prior", "--model", "retinanet", "--data", str(path), "--no-cache", "--image-size", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("sfdeploy prior: error: ") and record in err[0], err


def test_no_annotations_says_so(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["annotations"] = []
    with pytest.raises(DataError, match="coco.json: the data set has no annotations"):
        CocoDataset(make_coco(tmp_path, coco_data))


def test_all_annotations_dropped_says_so(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["annotations"] = [{"id": 1, "image_id": 11, "category_id": 99, "bbox": [1, 1, 5, 5]}]
    with pytest.warns(Warning), pytest.raises(DataError, match="all 1 annotations were dropped"):
        CocoDataset(make_coco(tmp_path, coco_data))


def test_short_polygons_fall_back_to_the_box_mask(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["annotations"][0]["segmentation"] = [[10, 10, 30, 10]]  # 2 points: no area to rasterise
    with pytest.warns(Warning, match="used the box as mask for 1 annotations"):
        ds = CocoDataset(make_coco(tmp_path, coco_data))
    assert ds.masks(0)[0].sum() == 20 * 20


@pytest.mark.slow
def test_train_prints_each_data_warning_once(tmp_path: Path, make_coco, coco_data) -> None:
    """train opens the set three times (training, priors, --val-data); the user reads each warning once."""
    coco_data["annotations"].append({"id": 9, "image_id": 999, "category_id": 3, "bbox": [1, 1, 4, 4]})
    path = make_coco(tmp_path / "data", coco_data)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from sfdeploy.cli import main; sys.exit(main())", "train",
         "--data", str(path), "--val-data", str(path), "--max-steps", "1", "--batch-size", "1", "--image-size",
         "64", "--workers", "0", "--no-progress", "--out", str(tmp_path / "run"), "--fpn-channels", "32"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "unknown image ids" in line]
    assert lines == ["sfdeploy train: warning: coco.json: dropped 1 annotations of unknown image ids (e.g. 999); "
                     "1 images have no annotations (kept as background images) (e.g. c.png)"], proc.stderr[-2000:]


# -- label-tool quirks: handled, and reported in the one warning line --------------------------------------------
def test_roboflow_placeholder_category_gets_no_class(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["categories"] = [{"id": 0, "name": "pets", "supercategory": "none"},
                               {"id": 3, "name": "cat", "supercategory": "pets"},
                               {"id": 7, "name": "dog", "supercategory": "pets"}]
    with pytest.warns(Warning, match=r"gave no class to 1 placeholder categories without annotations "
                                     r"\(e\.g\. id 0 'pets'\)"):
        ds = CocoDataset(make_coco(tmp_path, coco_data))
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [3, 7]


def test_supercategory_placeholder_with_nonzero_id(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["categories"].append({"id": 1, "name": "animals", "supercategory": "none"})
    for c in coco_data["categories"][:2]:
        c["supercategory"] = "animals"
    with pytest.warns(Warning, match="placeholder"):
        ds = CocoDataset(make_coco(tmp_path, coco_data))
    assert ds.category_ids == [3, 7]


def test_unused_real_category_keeps_its_slot(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["categories"].append({"id": 12, "name": "bird"})  # no boxes yet, but not a placeholder
    ds = CocoDataset(make_coco(tmp_path, coco_data))
    assert ds.class_names == ["cat", "dog", "bird"] and ds.category_ids == [3, 7, 12]


def test_duplicate_image_id_keeps_the_first_entry(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["images"].append({"id": 11, "file_name": "c.png", "width": 32, "height": 32})
    with pytest.warns(Warning, match=r"ignored 1 image entries whose id repeats an earlier one .*\(e\.g\. id 11, "
                                     r"c\.png\)"):
        ds = CocoDataset(make_coco(tmp_path, coco_data))
    assert [ds.annotation(i).image_id for i in range(len(ds))] == [11, 12, 13]
    assert len(ds.annotation(0).boxes) == 2


def test_images_without_annotations_are_counted_as_background(tmp_path: Path, make_coco, coco_data) -> None:
    with pytest.warns(Warning, match=r"1 images have no annotations \(kept as background images\) \(e\.g\. c\.png\)"):
        ds = CocoDataset(make_coco(tmp_path, coco_data))
    assert len(ds) == 3 and len(ds.annotation(2).boxes) == 0


def test_two_categories_with_one_name_stay_two_classes(tmp_path: Path, make_coco, coco_data) -> None:
    coco_data["categories"][1]["name"] = "dog"  # ids 7 and 3 both called "dog" (CVAT exports allow it)
    ds = CocoDataset(make_coco(tmp_path, coco_data))
    assert ds.class_names == ["dog (3)", "dog (7)"] and ds.category_ids == [3, 7]

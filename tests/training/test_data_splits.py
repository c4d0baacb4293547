"""Separate validation data: `--val-images` (COCO-2017 layout: train2017/ and val2017/ folders) and a reproducible
`--val-fraction F --split-seed N` holdout of a single annotation file, in `train` and in `eval`."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sfdeploy.data import CocoDataset, ImageAnnotation, SyntheticDataset
from sfdeploy.data.split import holdout_indices, holdout_split
from sfdeploy.training.metrics_log import read_metrics

TINY = ["--backbone", "resnet18", "--fpn-channels", "32", "--image-size", "64", "--batch-size", "2", "--workers",
        "0", "--no-progress", "--max-steps", "2", "--warmup-steps", "1", "--model", "retinanet"]


def main(argv: list[str]) -> int:
    import sfdeploy.cli as cli

    with mock.patch.object(cli, "STAGE_MODULES", ("sfdeploy.training.cli",)):
        return cli.main(argv)


def write_coco(ann_path: Path, image_dir: Path, names: list[str]) -> Path:
    """One 64x64 image per name, two boxes each (ids 5 and 9), annotations in `ann_path`."""
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data: dict = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]}
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image_dir / name)
        data["images"].append({"id": i + 1, "file_name": name, "width": 64, "height": 64})
        for k, cid in enumerate((5, 9)):
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i + 1, "category_id": cid,
                                        "bbox": [5 + 30 * k, 10, 20, 25]})
    ann_path.write_text(json.dumps(data))
    return ann_path


class _Names:
    """Just enough of a DetectionDataset for holdout_indices: file names in a given order."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.source = "names"

    def __len__(self) -> int:
        return len(self.names)

    def annotation(self, i: int) -> ImageAnnotation:
        return ImageAnnotation.make(i, f"/some/dir/{self.names[i]}", 8, 8)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text("abcdefgh0123456789", min_size=1, max_size=8), min_size=2, max_size=60, unique=True),
       fraction=st.floats(0.01, 0.99), seed=st.integers(0, 10_000), data=st.data())
def test_holdout_is_a_partition_of_the_right_size_independent_of_file_order(names, fraction, seed, data) -> None:
    train, val = holdout_indices(_Names(names), fraction, seed)  # type: ignore[arg-type]
    assert sorted(train + val) == list(range(len(names)))
    assert len(val) == min(max(round(fraction * len(names)), 1), len(names) - 1)
    shuffled = data.draw(st.permutations(names))
    train2, val2 = holdout_indices(_Names(shuffled), fraction, seed)  # type: ignore[arg-type]
    assert {shuffled[i] for i in val2} == {names[i] for i in val}


def test_holdout_depends_on_the_seed() -> None:
    names = _Names([f"{i}.jpg" for i in range(50)])
    assert holdout_indices(names, 0.2, 0)[1] != holdout_indices(names, 0.2, 1)[1]  # type: ignore[arg-type]


def test_holdout_subsets_keep_samples_and_transforms_apart() -> None:
    full = SyntheticDataset(6, image_size=64, with_masks=True)
    flips = []
    train, val = holdout_split(full, 0.5, 3, train_transforms=lambda img, tgt: (flips.append(1) or img, tgt))
    assert len(train) == len(val) == 3 and train.has_masks and val.class_names == full.class_names
    i = train.indices[0]
    np.testing.assert_array_equal(train.annotation(0).boxes, full.annotation(i).boxes)
    image, target = train[0]
    np.testing.assert_array_equal(image.numpy(), full[i][0].numpy())
    assert target["masks"].shape[0] == len(target["boxes"]) and flips == [1]
    val[0]
    assert flips == [1]  # held-out images are never augmented


def test_train_val_fraction_holds_out_images_from_training_and_priors(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SFDEPLOY_CACHE_DIR", str(tmp_path / "cache"))  # a fresh prior estimate, not a cached one
    data = write_coco(tmp_path / "d" / "all.json", tmp_path / "d", [f"img{i}.png" for i in range(8)])
    out = tmp_path / "run"
    rc = main(["train", *TINY, "--data", str(data), "--val-fraction", "0.25", "--split-seed", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "[6 images" in err  # priors estimated on the training part only
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["val_fraction"], config["split_seed"]) == (0.25, 4)
    rows = read_metrics(out / "metrics.jsonl")
    assert next(r for r in rows if r.get("event") == "start")["train_images"] == 6
    evals = [r for r in rows if r.get("event") == "eval"]
    assert evals and evals[-1]["metrics"]["images"] == 2

    from sfdeploy.training.evaluate import evaluate_checkpoint

    held = holdout_split(CocoDataset(data), 0.25, 4)[1]
    metrics = evaluate_checkpoint(out / "last.pt", str(data), val_fraction=0.25, split_seed=4, progress=False)
    assert metrics["images"] == 2 and metrics["data"]["source"] == held.source


def test_train_with_coco2017_layout_val_images(tmp_path: Path, capsys) -> None:
    root = tmp_path / "coco"
    train = write_coco(root / "annotations" / "instances_train2017.json", root / "train2017", ["t0.png", "t1.png"])
    val = write_coco(root / "annotations" / "instances_val2017.json", root / "val2017", ["v0.png", "v1.png", "v2.png"])
    out = tmp_path / "run"
    rc = main(["train", *TINY, "--data", str(train), "--images", str(root / "train2017"), "--val-data", str(val),
               "--val-images", str(root / "val2017"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "eval"]
    assert evals and evals[-1]["metrics"]["images"] == 3


def test_conflicting_split_options_are_user_errors(tmp_path: Path, capsys) -> None:
    rc = main(["train", *TINY, "--data", "synthetic:4", "--val-data", "synthetic:2", "--val-fraction", "0.5",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "either val_data" in capsys.readouterr().err
    rc = main(["train", *TINY, "--data", "synthetic:4", "--val-fraction", "1.5", "--out", str(tmp_path / "o")])
    assert rc == 2 and "val_fraction must be in (0, 1)" in capsys.readouterr().err


def test_one_dataset_yaml_names_both_coco_splits(tmp_path: Path, capsys) -> None:
    root = tmp_path / "coco"
    write_coco(root / "annotations" / "instances_train2017.json", root / "train2017", ["t0.png", "t1.png"])
    write_coco(root / "annotations" / "instances_val2017.json", root / "val2017", ["v0.png", "v1.png", "v2.png"])
    spec = tmp_path / "coco.yaml"
    spec.write_text(yaml.safe_dump({
        "path": "coco",
        "train": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
        "val": {"annotations": "annotations/instances_val2017.json", "images": "val2017"}}))
    from sfdeploy.data import DataError, build_dataset

    assert len(build_dataset(str(spec))) == 2 and len(build_dataset(str(spec), split="val")) == 3
    assert build_dataset(str(spec)).category_ids == [5, 9]
    with pytest.raises(DataError, match=r"no 'test' split with an 'annotations' file \(it has train, val\)"):
        build_dataset(str(spec), split="test")
    out = tmp_path / "run"
    rc = main(["train", *TINY, "--data", str(spec), "--val-data", str(spec), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "eval"]
    assert evals[-1]["metrics"]["images"] == 3

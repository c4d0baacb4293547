"""A COCO export with non-contiguous category ids (3, 7, 12) keeps them end to end: the checkpoint's config, the
exported ONNX metadata, predictions (to_dict, COCO results), `sfdeploy predict --json` and `sfdeploy eval`."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from sfdeploy.checkpoint import load_checkpoint
from sfdeploy.config import ModelConfig
from sfdeploy.data import DataError
from sfdeploy.training.config import TrainConfig

IDS = [3, 7, 12]


def write_coco(root: Path, ids: list[int], images: int = 4) -> Path:
    """`images` 64x64 images, one box of each category per image; a Roboflow-style placeholder category (id 0)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data: dict = {"images": [], "annotations": [],
                  "categories": [{"id": 0, "name": "parts", "supercategory": "none"}]
                  + [{"id": cid, "name": f"part{cid}", "supercategory": "parts"} for cid in ids]}
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
        data["images"].append({"id": 100 + i, "file_name": f"{i}.png", "width": 64, "height": 64})
        for k, cid in enumerate(ids):
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": 100 + i, "category_id": cid,
                                        "bbox": [4 + 18 * k, 8, 14, 30], "area": 420, "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def cli_main(argv: list[str], stages: tuple[str, ...]) -> int:
    import sfdeploy.cli as cli

    with mock.patch.object(cli, "STAGE_MODULES", stages):
        return cli.main(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from sfdeploy.training.trainer import train

    tmp = tmp_path_factory.mktemp("ids")
    data = write_coco(tmp / "data", IDS)
    model = ModelConfig(detector="retinanet", method="sampling_free", backbone="resnet18", fpn_channels=32,
                        min_size=64, max_size=64, score_thresh=0.0)
    cfg = TrainConfig(model=model, data=str(data), out=str(tmp / "run"), max_steps=2, batch_size=2, workers=0,
                      warmup_steps=1, plots=False, tensorboard=False, prior_cache_dir=str(tmp / "cache"))
    with pytest.warns(Warning, match="placeholder categories"):
        train(cfg, progress=False)
    return data, tmp / "run" / "last.pt"


def test_checkpoint_config_carries_the_source_ids(trained) -> None:
    _, ckpt = trained
    config = load_checkpoint(ckpt).config
    assert config.class_names == ["part3", "part7", "part12"]  # the placeholder got no class slot
    assert config.category_ids == IDS
    assert [config.category_id(k) for k in (1, 2, 3)] == IDS


def test_predictions_and_coco_results_use_the_source_ids(trained) -> None:
    from sfdeploy import serving
    data, ckpt = trained
    predictor = serving.load(str(ckpt), backend="torch")
    dets = predictor.predict(str(data.parent / "0.png"), score_thresh=0.0, max_detections=50)
    assert len(dets) > 0
    expected = [IDS[int(label) - 1] for label in dets.labels]
    assert [r["category_id"] for r in dets.to_coco_results(image_id=100)] == expected
    assert [d["category_id"] for d in dets.to_dict(masks=False)["detections"]] == expected
    assert set(expected) <= set(IDS)
    assert predictor.info()["category_ids"] == IDS


def test_predict_cli_json_writes_source_ids(trained, tmp_path: Path) -> None:
    data, ckpt = trained
    out = tmp_path / "results.json"
    rc = cli_main(["predict", str(ckpt), str(data.parent / "1.png"), "--json", str(out), "--threshold", "0"],
                  ("sfdeploy.serving.cli",))
    assert rc == 0
    results = json.loads(out.read_text())
    assert results and {r["category_id"] for r in results} <= set(IDS)
    index = json.loads(out.with_name("results.images.json").read_text())
    assert [c["id"] for c in index["categories"]] == IDS


def test_eval_scores_in_source_ids_and_refuses_other_ids(trained, tmp_path: Path) -> None:
    from sfdeploy.training.evaluate import evaluate_checkpoint

    data, ckpt = trained
    metrics = evaluate_checkpoint(ckpt, str(data), progress=False)
    assert metrics["category_ids"] == {"part3": 3, "part7": 7, "part12": 12}
    assert set(metrics["per_class"]["bbox"]) == {"part3", "part7", "part12"}
    other = write_coco(tmp_path / "other", [1, 2, 3], images=1)
    with pytest.raises(DataError, match=r"predicts category ids \[3, 7, 12\] but instances.json has \[1, 2, 3\]"):
        evaluate_checkpoint(ckpt, str(other), progress=False)


@pytest.mark.slow
def test_onnx_metadata_carries_the_source_ids(trained, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from sfdeploy.export.onnx import export_onnx, read_metadata

    _, ckpt = trained
    out = tmp_path / "model.onnx"
    export_onnx(str(ckpt), out, exporter="torchscript", verify=False)
    meta = read_metadata(out)
    assert json.loads(meta["category_ids"]) == IDS
    assert json.loads(meta["sfdeploy.config"])["category_ids"] == IDS

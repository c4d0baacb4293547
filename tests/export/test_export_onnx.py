"""ONNX export of all four detectors: contract, metadata, checker, parity in ONNX Runtime, zero detections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sfdeploy.config import DETECTORS


@pytest.mark.parametrize("detector", DETECTORS)
def test_torchscript_export_parity(detector, exported):  # type: ignore[no-untyped-def]
    res = exported[detector]
    assert res.exporter == "torchscript"
    assert res.parity is not None and res.parity.passed, res.parity.summary()
    sizes = res.parity.by_size()
    assert len({k.split("x")[0] for k in sizes}) >= 2  # two input sizes
    assert sum(i.n_torch for i in res.parity.images) > 0, "trivial model: no detections at all"
    assert json.loads(res.parity.to_json())["passed"] is True


@pytest.mark.parametrize("detector", DETECTORS)
def test_metadata_and_checker(detector, exported):  # type: ignore[no-untyped-def]
    import onnx

    from export.onnx import read_metadata
    from sfdeploy.config import ModelConfig

    res = exported[detector]
    onnx.checker.check_model(str(res.path), full_check=True)
    meta = read_metadata(res.path)
    cfg = ModelConfig.from_dict(json.loads(meta["sfdeploy.config"]))
    assert cfg.detector == detector and meta["detector"] == detector and meta["method"] == "sampling_free"
    assert json.loads(meta["class_names"]) == cfg.class_names
    assert float(meta["score_thresh"]) == pytest.approx(1e-3)
    assert meta["sfdeploy.exporter"] == "torchscript"
    assert json.loads(meta["sfdeploy.meta"])["step"] > 0
    spec = json.loads(meta["sfdeploy.input"])
    assert spec["name"] == "images" and spec["layout"] == "NCHW" and spec["range"] == [0, 1]
    names = [o["name"] for o in json.loads(meta["sfdeploy.outputs"])]
    m = onnx.load(str(res.path))
    assert [i.name for i in m.graph.input] == ["images"]
    assert [o.name for o in m.graph.output] == names
    assert names[:3] == ["boxes", "scores", "labels"] and (("masks" in names) == (detector == "mask_rcnn"))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[1].dim_value == 3 and dims[2].dim_param and dims[3].dim_param


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_zero_detections(detector, checkpoints, tmp_path):  # type: ignore[no-untyped-def]
    """A threshold nothing reaches: every output has N = 0 with the right trailing shape and dtype."""
    import torch

    from export.onnx import export_onnx
    from export.verify import ort_session
    from sfdeploy.checkpoint import load_model

    model, ckpt = load_model(checkpoints[detector])
    cfg = ckpt.config.replace(score_thresh=0.999)
    if cfg.is_two_stage:
        model.roi_heads.score_thresh = 0.999
    else:
        model.score_thresh = 0.999
    res = export_onnx(model, tmp_path / "none.onnx", config=cfg, meta=ckpt.meta, exporter="torchscript",
                      sizes=(160,))
    assert res.parity.passed
    sess = ort_session(res.path)
    for hw in [(160, 160), (200, 136)]:
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": np.zeros((1, 3, *hw), np.float32)})))
        assert outs["boxes"].shape == (0, 4) and outs["boxes"].dtype == np.float32
        assert outs["scores"].shape == (0,) and outs["labels"].shape == (0,) and outs["labels"].dtype == np.int64
        if detector == "mask_rcnn":
            assert outs["masks"].shape == (0, 1, *hw)
        with torch.no_grad():
            assert model([torch.zeros(3, *hw)])[0]["boxes"].shape[0] == 0


def test_parity_failure_is_reported(exported, checkpoints):  # type: ignore[no-untyped-def]
    """A graph from different weights fails the check with a readable report."""
    import torch

    from export.verify import verify_onnx
    from sfdeploy.checkpoint import load_model

    model, ckpt = load_model(checkpoints["fcos"])
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias += 1.0
    report = verify_onnx(exported["fcos"].path, model, ckpt.config, sizes=(160,))
    assert not report.passed
    assert "FAIL" in report.summary() and report.to_dict()["passed"] is False


def test_adapters_restore_torchvision(checkpoints):  # type: ignore[no-untyped-def]
    import torchvision.models.detection._utils as det_utils
    import torchvision.ops.boxes as box_ops

    from export.adapters import export_patches
    from sfdeploy.checkpoint import load_model

    model, _ = load_model(checkpoints["faster_rcnn"])
    before = (box_ops.batched_nms, det_utils._topk_min)
    with pytest.raises(RuntimeError):
        with export_patches(model, nms="multiclass", dynamo=True):
            assert box_ops.batched_nms is not before[0]
            assert "filter_proposals" in model.rpn.__dict__
            raise RuntimeError("boom")
    assert (box_ops.batched_nms, det_utils._topk_min) == before
    assert "filter_proposals" not in model.rpn.__dict__ and "postprocess_detections" not in model.roi_heads.__dict__


def test_multiclass_nms_matches_torchvision():  # type: ignore[no-untyped-def]
    """The export-time batched_nms (per-class NMS with the exact cap) keeps what torchvision keeps."""
    import torch
    from torchvision.ops import batched_nms

    from export.adapters import _call_site, _multiclass_batched_nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3000, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(3000, 2, generator=g) * 40], 1)
    scores = torch.rand(3000, generator=g)
    idxs = torch.randint(0, 5, (3000,), generator=g)
    ref = batched_nms(boxes, scores, idxs, 0.5)[:100]
    with _call_site(5, 100):
        got = _multiclass_batched_nms(boxes, scores, idxs, 0.5)[:100]
    assert torch.equal(ref, got)


@pytest.mark.slow
def test_simplify_keeps_parity(exported, checkpoints, tmp_path):  # type: ignore[no-untyped-def]
    import shutil

    from export.onnx import read_metadata, simplify_onnx
    from export.verify import verify_onnx
    from sfdeploy.checkpoint import load_model

    path = tmp_path / "slim.onnx"
    shutil.copyfile(exported["retinanet"].path, path)
    simplify_onnx(path)
    assert read_metadata(path)["detector"] == "retinanet"
    model, ckpt = load_model(checkpoints["retinanet"])
    assert verify_onnx(path, model, ckpt.config, sizes=(160,)).passed

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

    from sfdeploy.export.onnx import read_metadata
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

    from sfdeploy.export.onnx import export_onnx
    from sfdeploy.export.verify import ort_session
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

    from sfdeploy.export.verify import verify_onnx
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

    from sfdeploy.export.adapters import export_patches
    from sfdeploy.checkpoint import load_model

    import torchvision.models.detection.transform as transform_mod

    model, _ = load_model(checkpoints["faster_rcnn"])
    import torchvision.ops.poolers as poolers_mod

    T = transform_mod.GeneralizedRCNNTransform
    before = (box_ops.batched_nms, det_utils._topk_min, transform_mod._resize_image_and_masks, T.batch_images,
              poolers_mod._multiscale_roi_align, det_utils.BoxCoder.decode)
    with pytest.raises(RuntimeError):
        with export_patches(model, nms="multiclass", dynamo=True):
            assert box_ops.batched_nms is not before[0]
            assert transform_mod._resize_image_and_masks is not before[2] and T.batch_images is not before[3]
            assert poolers_mod._multiscale_roi_align is not before[4] and det_utils.BoxCoder.decode is not before[5]
            assert "filter_proposals" in model.rpn.__dict__
            raise RuntimeError("boom")
    assert (box_ops.batched_nms, det_utils._topk_min, transform_mod._resize_image_and_masks, T.batch_images,
            poolers_mod._multiscale_roi_align, det_utils.BoxCoder.decode) == before
    clip, decode = box_ops.clip_boxes_to_image, det_utils.BoxCoder.decode
    with export_patches(model, nms="offset", dynamo=False):  # the TorchScript exporter gets the zero-row rewrites
        assert box_ops.clip_boxes_to_image is not clip and det_utils.BoxCoder.decode is not decode
    assert (box_ops.clip_boxes_to_image, det_utils.BoxCoder.decode) == (clip, decode)
    assert "filter_proposals" not in model.rpn.__dict__ and "postprocess_detections" not in model.roi_heads.__dict__


@pytest.mark.parametrize("hw", [(100, 300), (300, 100), (97, 97), (480, 640), (1000, 31)])
@pytest.mark.parametrize("min_max", [(128, 128), (800, 1333)])
def test_symbolic_transform_adapters_match_torchvision(hw, min_max):  # type: ignore[no-untyped-def]
    """The dynamo-only resize / padding rewrites compute exactly what torchvision computes in eager mode."""
    import torch
    import torchvision.models.detection.transform as transform_mod

    from sfdeploy.export.adapters import _symbolic_batch_images, _symbolic_resize

    img = torch.rand(3, *hw, generator=torch.Generator().manual_seed(0))
    ref, _ = transform_mod._resize_image_and_masks(img, min_max[0], min_max[1])
    got, _ = _symbolic_resize(transform_mod._resize_image_and_masks)(img, min_max[0], min_max[1])
    assert got.shape == ref.shape and torch.equal(got, ref)
    t = transform_mod.GeneralizedRCNNTransform(min_max[0], min_max[1], [0.0] * 3, [1.0] * 3)
    other = torch.rand(3, hw[1], hw[0])
    assert torch.equal(_symbolic_batch_images(t, [ref, other]), t.batch_images([ref, other]))


def test_symbolic_multiscale_roi_align_matches_torchvision():  # type: ignore[no-untyped-def]
    import torch
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops import poolers as poolers_mod

    from sfdeploy.export.adapters import _symbolic_multiscale_roi_align

    g = torch.Generator().manual_seed(0)
    feats = {k: torch.rand(1, 4, 256 // 2**i, 192 // 2**i, generator=g) for i, k in enumerate(["0", "1", "2", "3"])}
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = [torch.cat([xy, xy + 2 + torch.rand(300, 2, generator=g) * 900], 1)]  # small to large: every level
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ref = pool(feats, boxes, [(1024, 768)])
    assert len(set(pool.map_levels(boxes).tolist())) == 4
    got = _symbolic_multiscale_roi_align(list(feats.values()), boxes, pool.output_size, 2, pool.scales,
                                         pool.map_levels)
    assert torch.equal(got, ref) and poolers_mod._multiscale_roi_align is not _symbolic_multiscale_roi_align


@pytest.mark.parametrize("hw", [(160, 120), (97, 211)])
def test_loop_free_mask_paste_matches_torchvision(hw):  # type: ignore[no-untyped-def]
    """Boxes partly outside the image, sub-pixel and large boxes: same pasted masks as torchvision's loop."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from sfdeploy.export.adapters import paste_masks_vectorised

    g = torch.Generator().manual_seed(1)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([hw[1], hw[0]]) - 15
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 150 + 0.2], 1)
    masks = torch.rand(40, 1, 28, 28, generator=g)
    ref = paste_masks_in_image(masks, boxes, hw)
    got = paste_masks_vectorised(masks, boxes, hw)
    assert got.shape == ref.shape == (40, 1, *hw)
    assert torch.allclose(got, ref, atol=1e-4) and (ref > 0).any()
    assert paste_masks_vectorised(masks[:0], boxes[:0], hw).shape == (0, 1, *hw)


def test_branch_free_decode_matches_torchvision():  # type: ignore[no-untyped-def]
    import torch
    from torchvision.models.detection._utils import BoxCoder

    from sfdeploy.export.zero_rows import decode_fixed_columns as _branch_free_decode

    g = torch.Generator().manual_seed(0)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    xy = torch.rand(50, 2, generator=g) * 100
    proposals = [torch.cat([xy[:30], xy[:30] + 20], 1), torch.cat([xy[30:], xy[30:] + 5], 1)]
    codes = torch.randn(50, 5 * 4, generator=g)
    assert torch.equal(_branch_free_decode(coder, codes, proposals), coder.decode(codes, proposals))
    assert _branch_free_decode(coder, codes[:0], [proposals[0][:0]]).shape == (0, 5, 4)


def test_multiclass_nms_matches_torchvision():  # type: ignore[no-untyped-def]
    """The export-time batched_nms (per-class NMS with the exact cap) keeps what torchvision keeps."""
    import torch
    from torchvision.ops import batched_nms

    from sfdeploy.export.adapters import _call_site, _multiclass_batched_nms

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

    from sfdeploy.export.onnx import read_metadata, simplify_onnx
    from sfdeploy.export.verify import verify_onnx
    from sfdeploy.checkpoint import load_model

    path = tmp_path / "slim.onnx"
    shutil.copyfile(exported["retinanet"].path, path)
    simplify_onnx(path)
    assert read_metadata(path)["detector"] == "retinanet"
    model, ckpt = load_model(checkpoints["retinanet"])
    assert verify_onnx(path, model, ckpt.config, sizes=(160,)).passed

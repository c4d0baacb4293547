"""Zero candidates (a pyramid level, an image, or an RPN with no proposal) run in ONNX Runtime: empty, not an error.

The bug: torchvision's box clipping / decoding reshaped with a target ONNX Runtime folds to `[0, -1]` once the graph
carries shape information (every int8 graph: the quantizer runs shape inference), and Reshape(0 rows, [0, -1])
fails. The raccoon int8 RetinaNet failed on 3 of 40 val images; served, that was an HTTP 500."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SIZES = [(160, 160), (200, 136)]


def _export_without_candidates(checkpoints, detector, out):  # type: ignore[no-untyped-def]
    """The tiny detector with a threshold nothing reaches (two-stage: an RPN that keeps no proposal)."""
    from sfdeploy.checkpoint import load_model
    from sfdeploy.export.onnx import export_onnx

    model, ckpt = load_model(checkpoints[detector])
    cfg = ckpt.config.replace(score_thresh=0.999)
    if cfg.is_two_stage:
        model.roi_heads.score_thresh = 0.999
        model.rpn.score_thresh = 1.1  # objectness is a probability: no proposal survives
    else:
        model.score_thresh = 0.999
    res = export_onnx(model, out, config=cfg, meta=ckpt.meta, exporter="torchscript", sizes=(160,))
    assert res.parity.passed, res.parity.summary()
    return model, res.path


def _assert_empty_like_pytorch(path, model):  # type: ignore[no-untyped-def]
    import torch

    from sfdeploy.export.verify import ort_session

    sess = ort_session(path)  # the deployed session: all graph optimisations (where the Reshape was folded)
    names = [o.name for o in sess.get_outputs()]
    for i, hw in enumerate(SIZES):
        image = np.random.default_rng(i).random((3, *hw), dtype=np.float32)
        outs = dict(zip(names, sess.run(None, {"images": image[None]})))
        with torch.no_grad():
            ref = model([torch.from_numpy(image)])[0]
        assert ref["boxes"].shape[0] == 0
        assert outs["boxes"].shape == (0, 4) and outs["scores"].shape == (0,) and outs["labels"].shape == (0,)


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_int8_graph_without_candidates_runs_and_serves(detector, checkpoints, tmp_path):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient
    from PIL import Image

    from sfdeploy.export.quantize import quantize_int8
    from sfdeploy.serving import load
    from sfdeploy.serving.server import create_app

    model, fp32 = _export_without_candidates(checkpoints, detector, tmp_path / "none.onnx")
    int8 = quantize_int8(fp32, tmp_path / "none.int8.onnx", "synthetic:8", calib_images=4).path
    _assert_empty_like_pytorch(int8, model)
    buf = io.BytesIO()
    Image.fromarray(np.full((120, 90, 3), 128, np.uint8)).save(buf, format="PNG")
    client = TestClient(create_app({"none": load(int8, backend="onnxruntime")}))
    r = client.post("/v1/detect", files={"image": ("a.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["detections"] == []


@pytest.mark.parametrize("detector", ["faster_rcnn"])
def test_two_stage_without_proposals_runs(detector, checkpoints, tmp_path):  # type: ignore[no-untyped-def]
    """Zero RoIs reach the box decoding and clipping; the graph with inferred shapes (as the int8 path saves it)."""
    import onnx

    model, fp32 = _export_without_candidates(checkpoints, detector, tmp_path / "none.onnx")
    inferred = tmp_path / "none.shapes.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(fp32))), str(inferred))
    _assert_empty_like_pytorch(fp32, model)
    _assert_empty_like_pytorch(inferred, model)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 6), k=st.integers(1, 3), rank3=st.booleans(), h=st.integers(1, 300), w=st.integers(1, 300),
       seed=st.integers(0, 2**16))
def test_elementwise_clip_matches_torchvision(n, k, rank3, h, w, seed):  # type: ignore[no-untyped-def]
    import torch
    from torchvision.ops.boxes import clip_boxes_to_image

    from sfdeploy.export.zero_rows import clip_boxes_elementwise

    g = torch.Generator().manual_seed(seed)
    shape = (n, k, 4) if rank3 else (n, 4 * k)
    boxes = torch.randn(shape, generator=g) * 200 + 100
    assert torch.equal(clip_boxes_elementwise(boxes, (h, w)), clip_boxes_to_image(boxes, (h, w)))

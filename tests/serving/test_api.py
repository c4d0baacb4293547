"""serving.load / Predictor.predict / Detections / processing / viz, and torch-vs-ONNX Runtime parity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sfdeploy import serving
from sfdeploy import processing
from sfdeploy.errors import UserError
from sfdeploy.viz import draw_detections

from serving_helpers import synthetic_image, write_jpeg


def match(a, b, box_tol=1e-2, score_tol=1e-4, min_fraction=0.9):
    """Detections of `a` scored clearly above the top-k cut-off (ties there may be kept in either order) have a
    partner in `b`: same label, box within box_tol px, score within score_tol. Barely-trained test models have
    near-tied scores, where NMS may keep a different one of two overlapping boxes in ORT than in torch, so
    `min_fraction` of them must match (the top detection always). The sorted score lists must agree too."""
    assert abs(len(a) - len(b)) <= max(2, len(a) // 10), (len(a), len(b))
    n = min(len(a), len(b))
    np.testing.assert_allclose(np.sort(a.scores)[::-1][:n], np.sort(b.scores)[::-1][:n], atol=score_tol)
    cutoff = float(min(a.scores.min(), b.scores.min())) if n else 0.0
    pairs, used, missing = [], set(), []
    comparable = np.flatnonzero(a.scores > cutoff + score_tol)
    for i in comparable:
        cand = [j for j in range(len(b)) if j not in used and b.labels[j] == a.labels[i]
                and abs(float(b.scores[j]) - float(a.scores[i])) <= score_tol
                and np.abs(b.boxes[j] - a.boxes[i]).max() <= box_tol]
        if not cand:
            missing.append(int(i))
            continue
        used.add(cand[0])
        pairs.append((int(i), cand[0]))
    if len(comparable):
        assert 0 not in missing, "the top detection differs"
        assert len(pairs) >= min_fraction * len(comparable), f"unmatched {missing} of {len(comparable)}"
    return pairs


# -- load ------------------------------------------------------------------------------------------------
def test_load_dispatch_and_errors(artefacts, tmp_path):
    ckpt, onnx_path = artefacts.get("retinanet")
    pt = serving.load(ckpt)
    po = serving.load(onnx_path)
    assert (pt.backend, po.backend) == ("torch", "onnxruntime")
    assert pt.class_names == po.class_names == ["circle", "square", "triangle", "star"]
    assert po.score_thresh == pt.score_thresh == pt.config.effective_score_thresh
    assert po.metadata["meta"]["metrics"]["bbox"]["AP"] == pytest.approx(0.0123)
    assert po.providers[-1] == "CPUExecutionProvider"
    assert serving.load(onnx_path, backend="onnxruntime", providers=["CPUExecutionProvider"]).backend == "onnxruntime"
    with pytest.raises(UserError, match="unknown artefact type"):
        serving.load(tmp_path / "model.bin")
    with pytest.raises(UserError, match="unknown backend"):
        serving.load(onnx_path, backend="tflite")
    with pytest.raises(UserError, match="runs .xml files"):  # openvino is a backend now, for IRs only
        serving.load(onnx_path, backend="openvino")
    with pytest.raises(UserError, match="cannot run"):
        serving.load(ckpt, backend="onnxruntime")
    with pytest.raises(FileNotFoundError):
        serving.load(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="not a loadable ONNX"):
        serving.load(bad)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(UserError):  # no tensorrt / CUDA on CPU machines; or the sidecar is missing
        serving.load(engine)


def test_provider_preference():
    from sfdeploy.serving.backends.onnxruntime_backend import choose_providers

    avail = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers(avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # TensorRT is opt-in
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CUDAExecutionProvider",
                                                                                    "CPUExecutionProvider"]
    assert choose_providers(avail, device="cpu") == ["CPUExecutionProvider"]
    assert choose_providers(avail, providers=["CUDAExecutionProvider"]) == ["CUDAExecutionProvider"]
    with pytest.raises(UserError):
        choose_providers(["CPUExecutionProvider"], providers=["CUDAExecutionProvider"])


# -- predict inputs and coordinates ------------------------------------------------------------------------
def test_predict_input_types(artefacts, tmp_path):
    predictor = serving.load(artefacts.get("retinanet")[1])
    image = synthetic_image(0)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    ref = predictor.predict(image)
    assert isinstance(ref, serving.Detections) and len(ref) > 0
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    for source in (str(path), path, Image.fromarray(image), tensor, tensor[None], path.read_bytes()):
        d = predictor.predict(source)
        np.testing.assert_allclose(d.boxes, ref.boxes, atol=1e-3)
        np.testing.assert_allclose(d.scores, ref.scores, atol=1e-5)
    batch = predictor.predict([image, str(path), Image.fromarray(image)])
    assert isinstance(batch, list) and len(batch) == 3
    assert all(len(d) == len(ref) for d in batch)
    limited = predictor.predict(image, max_detections=2, score_thresh=0.0)
    assert len(limited) == 2 and limited.scores[0] >= limited.scores[1]
    assert ref.class_names == [predictor.class_names[k - 1] for k in ref.labels]
    assert ref.masks is None and ref.image_size == (256, 256)


def test_boxes_in_original_coordinates(artefacts):
    ckpt, _ = artefacts.get("faster_rcnn")
    predictor = serving.load(ckpt)
    image = np.ascontiguousarray(synthetic_image(1)[:, :176])  # non-square 256 x 176
    dets = predictor.predict(image, score_thresh=0.0)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    with torch.inference_mode():
        raw = predictor.model([tensor])[0]  # torchvision contract: boxes in input-image pixels
    assert dets.image_size == (256, 176)
    np.testing.assert_allclose(dets.boxes, raw["boxes"].numpy(), atol=1e-4)
    assert dets.boxes[:, 2].max() <= 176 and dets.boxes[:, 3].max() <= 256

    # a huge image is downscaled before the backend and its boxes mapped back up
    huge = np.asarray(Image.fromarray(image).resize((176 * 12, 256 * 12), Image.Resampling.NEAREST))
    predictor.max_side = 1024
    big = predictor.predict(huge, score_thresh=0.0)
    small_input = np.asarray(Image.fromarray(huge).resize((704, 1024), Image.Resampling.BILINEAR))
    predictor.max_side = None
    small = predictor.predict(small_input, score_thresh=0.0)
    assert big.image_size == (3072, 2112)
    np.testing.assert_allclose(big.boxes, small.boxes * 3.0, atol=1e-2)
    assert big.boxes[:, 2].max() > 1024 * 0.5  # in huge-image pixels, not the downscaled ones


# -- torch vs ONNX Runtime ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["retinanet", pytest.param("faster_rcnn", marks=pytest.mark.xfail(
    reason="a 4-step model's RPN objectness has exact ties that top-k breaks differently in PyTorch and ONNX "
           "Runtime, so different proposals survive (with export.export_onnx too); trained weights pass parity "
           "(tests/export, docs/EXPORT.md)", strict=False))])
def test_torch_and_onnxruntime_agree(artefacts, name):
    ckpt, onnx_path = artefacts.get(name)
    pt, po = serving.load(ckpt), serving.load(onnx_path)
    for image in (synthetic_image(2), np.ascontiguousarray(synthetic_image(3)[20:220, :150])):
        a, b = pt.predict(image), po.predict(image)
        assert len(a) > 0
        match(a, b)


def test_mask_rcnn_masks_agree(artefacts):
    ckpt, onnx_path = artefacts.get("mask_rcnn")
    pt, po = serving.load(ckpt), serving.load(onnx_path)
    image = np.ascontiguousarray(synthetic_image(0)[:, :200])
    # top 8: below them this 4-step model has near-tied scores that ORT and torch order differently
    a, b = pt.predict(image, max_detections=8), po.predict(image, max_detections=8)
    assert a.masks is not None and a.masks.shape == (len(a), 256, 200) and a.masks.dtype == np.bool_
    pairs = match(a, b)
    assert pairs
    for i, j in pairs:
        inter = np.logical_and(a.masks[i], b.masks[j]).sum()
        union = np.logical_or(a.masks[i], b.masks[j]).sum()
        assert union == 0 or inter / union > 0.99
    assert pt.predict(image, masks=False).masks is None


# -- Detections / RLE / COCO -------------------------------------------------------------------------------
def test_rle_and_coco_results_round_trip(artefacts):
    from pycocotools import mask as mask_utils

    predictor = serving.load(artefacts.get("mask_rcnn")[0])
    dets = predictor.predict(synthetic_image(0), max_detections=10)
    assert len(dets) > 0
    rles = dets.rle()
    decoded = processing.rle_to_masks(rles)
    np.testing.assert_array_equal(decoded, dets.masks)
    results = dets.to_coco_results(image_id=7)
    assert len(results) == len(dets)
    r = results[0]
    assert r["image_id"] == 7 and r["category_id"] == int(dets.labels[0])
    x, y, w, h = r["bbox"]
    np.testing.assert_allclose([x, y, x + w, y + h], dets.boxes[0], atol=1e-2)
    seg = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
    np.testing.assert_array_equal(mask_utils.decode(seg).astype(bool), dets.masks[0])
    body = dets.to_dict()
    assert body["image_size"] == [256, 256] and "mask" in body["detections"][0]
    import json

    json.dumps(body)  # JSON-ready


# -- processing errors ------------------------------------------------------------------------------------
def test_load_image_errors(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(processing.InvalidImageError, match="empty"):
        processing.load_image(empty)
    with pytest.raises(processing.InvalidImageError, match="not an image"):
        processing.load_image(b"hello, this is text")
    jpg = write_jpeg(tmp_path / "full.jpg", synthetic_image(0))
    data = jpg.read_bytes()
    with pytest.raises(processing.InvalidImageError, match="decode"):
        processing.load_image(data[: len(data) // 2])
    # decompression bomb: a tiny PNG header claiming a huge canvas
    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, format="PNG")
    with pytest.raises(processing.ImageTooLargeError):
        processing.load_image(buf.getvalue(), max_pixels=10_000_000)
    with pytest.raises(processing.ImageTooLargeError):
        processing.load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)
    with pytest.raises(processing.InvalidImageError, match="shape"):
        processing.load_image(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(FileNotFoundError):
        processing.load_image(tmp_path / "nope.png")


def test_exif_orientation_and_modes(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    Image.fromarray(image).save(path, exif=exif.tobytes())
    loaded = processing.load_image(path)
    assert loaded.shape == (60, 40, 3)
    assert processing.load_image(np.zeros((8, 9), np.uint8)).shape == (8, 9, 3)
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 255))
    assert processing.load_image(rgba)[0, 0].tolist() == [10, 20, 30]


def test_viz_draws():
    image = synthetic_image(0)
    masks = np.zeros((1, 256, 256), bool)
    masks[0, 50:100, 60:120] = True
    dets = serving.Detections(boxes=np.array([[60, 50, 120, 100]], np.float32), scores=np.array([0.9], np.float32),
                              labels=np.array([2]), class_names=["square"], masks=masks, image_size=(256, 256))
    drawn = draw_detections(image, dets)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, image)
    assert np.array_equal(draw_detections(image, dets, score_thresh=0.95), image)

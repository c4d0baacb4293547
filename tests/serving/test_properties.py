"""Property-based tests (hypothesis) of decode -> preprocess -> postprocess: any size up to the cap, any aspect
ratio, any mode PIL writes, truncated or corrupted bytes give detections in image coordinates or a 4xx-class
error (InvalidImageError / ImageTooLargeError), never another exception. Plus the box-local mask maths against
the dense reference."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from sfdeploy import masks as box_masks
from sfdeploy import processing

from serving_helpers import FakePredictor

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PREDICTORS = {True: FakePredictor(masks=True, size=64), False: FakePredictor(masks=False, size=64)}
# mode -> formats that can store it
MODES = {"1": ["PNG", "BMP"], "L": ["PNG", "JPEG", "BMP"], "P": ["PNG", "GIF"], "RGB": ["PNG", "JPEG", "WEBP"],
         "RGBA": ["PNG", "WEBP"], "LA": ["PNG"], "I;16": ["PNG", "TIFF"], "I": ["TIFF"], "F": ["TIFF"],
         "CMYK": ["JPEG", "TIFF"], "YCbCr": ["JPEG"]}


def make_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-2**31, 2**31 - 1, (h, w), dtype=np.int32))
    if mode == "F":
        arr = rng.normal(0, 1e3, (h, w)).astype(np.float32)
        arr.flat[rng.integers(0, arr.size, 3)] = [np.nan, np.inf, -np.inf]  # TIFF stores them; decode must cope
        return Image.fromarray(arr)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def check_detections(dets, h: int, w: int, masks: bool) -> None:  # type: ignore[no-untyped-def]
    assert dets.image_size == (h, w)
    assert dets.boxes.dtype == np.float32 and dets.boxes.shape == (len(dets), 4)
    assert (dets.boxes >= 0).all() and (dets.boxes[:, 0::2] <= w).all() and (dets.boxes[:, 1::2] <= h).all()
    assert (dets.boxes[:, 2] >= dets.boxes[:, 0]).all() and (dets.boxes[:, 3] >= dets.boxes[:, 1]).all()
    if masks:
        assert dets.masks is not None and dets.masks.shape == (len(dets), h, w)
    body = json.loads(json.dumps(dets.to_dict()))
    assert body["image_size"] == [h, w]
    for item in body["detections"]:
        if masks:
            assert item["mask"]["size"] == [h, w]


# (width, height): ordinary, and thin in either direction (up to 1:20000)
_thin = st.tuples(st.integers(1, 8), st.integers(200, 20000))
sizes = st.one_of(st.tuples(st.integers(1, 700), st.integers(1, 700)), _thin, _thin.map(lambda s: (s[1], s[0])))


@SETTINGS
@given(size=sizes, mode=st.sampled_from(sorted(MODES)), data=st.data(), masks=st.booleans(),
       cap=st.one_of(st.just(40_000_000), st.integers(1, 500_000)), seed=st.integers(0, 2**16))
def test_any_image_gives_detections_or_a_4xx_error(size, mode, data, masks, cap, seed):
    w, h = size
    fmt = data.draw(st.sampled_from(MODES[mode]), label="format")
    assume(not (fmt == "GIF" and mode != "P") and not (fmt == "WEBP" and max(w, h) > 16383))
    assume(not (fmt == "JPEG" and max(w, h) > 65500))
    encoded = encode(make_image(mode, w, h, seed), fmt)
    predictor = PREDICTORS[masks]
    try:
        rgb = processing.load_image(encoded, max_pixels=cap)
    except processing.ImageTooLargeError:
        assert w * h > cap
        return
    assert w * h <= cap and rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    check_detections(predictor.predict_image(rgb, score_thresh=0.3), h, w, masks)


@SETTINGS
@given(size=sizes, cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
       fmt=st.sampled_from(["PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP"]))
def test_damaged_files_give_detections_or_a_4xx_error(size, cut, flips, fmt):
    w, h = size
    assume(not (fmt == "WEBP" and max(w, h) > 16383))
    data = bytearray(encode(make_image("P" if fmt == "GIF" else "RGB", w, h, 1), fmt))
    data = data[: max(0, int(len(data) * cut))] if cut < 1 else data
    for where, value in flips:
        if data:
            data[min(len(data) - 1, int(where * len(data)))] = value
    try:
        rgb = processing.load_image(bytes(data), max_pixels=400_000)
    except processing.InvalidImageError:
        return
    check_detections(PREDICTORS[True].predict_image(rgb), rgb.shape[0], rgb.shape[1], True)


# -- box-local masks against the dense reference ----------------------------------------------------------
@SETTINGS
@given(H=st.integers(1, 60), W=st.integers(1, 60), data=st.data())
def test_crop_rle_equals_dense_rle(H, W, data):
    from pycocotools import mask as mask_utils

    h, w = data.draw(st.integers(0, H)), data.draw(st.integers(0, W))
    y0, x0 = data.draw(st.integers(0, H - h)), data.draw(st.integers(0, W - w))
    crop = np.asarray(data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w)), bool).reshape(h, w)
    dense = np.zeros((H, W), bool)
    dense[y0:y0 + h, x0:x0 + w] = crop
    ref = mask_utils.encode(np.asfortranarray(dense[:, :, None].astype(np.uint8)))[0]
    got = box_masks.crop_to_rle(crop, x0, y0, (H, W))
    assert got == {"size": [H, W], "counts": ref["counts"].decode("ascii")}
    np.testing.assert_array_equal(processing.rle_to_masks([got])[0], dense)


@SETTINGS
@given(h=st.integers(1, 24), w=st.integers(1, 24), H=st.integers(1, 200), W=st.integers(1, 200),
       seed=st.integers(0, 2**16), blob=st.booleans())
def test_box_local_masks_equal_the_dense_resize(h, w, H, W, seed, blob):
    """The crop path gives exactly what bilinear-resizing the whole map to (H, W) and thresholding gives."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0, 1, (h, w)).astype(np.float32)
    if blob:  # mostly background, one region above the threshold
        prob *= 0.5
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        prob[r0:r0 + rng.integers(1, h + 1), c0:c0 + rng.integers(1, w + 1)] += 0.3
    ref = processing.masks_to_original(prob[None, None], (H, W))[0]
    bm = box_masks.probs_to_box_masks(prob[None, None], (h, w), (H, W))
    np.testing.assert_array_equal(bm[0], ref)
    assert bm.nbytes <= H * W and (bm.nbytes == 0) == (not ref.any())  # a crop, never more than the image


@pytest.mark.parametrize("shape", [(1, 1), (10, 10000), (10000, 10), (1, 400), (400, 1), (2049, 3)])
def test_prepare_bounds_the_aspect_ratio(shape):
    h, w = shape
    prepared = processing.prepare(np.zeros((h, w, 3), np.uint8), work_size=(64, 64))
    ph, pw = prepared.tensor.shape[2:]
    assert max(ph, pw) <= processing.MAX_ASPECT * min(ph, pw)
    assert prepared.input_size[0] <= ph and prepared.input_size[1] <= pw

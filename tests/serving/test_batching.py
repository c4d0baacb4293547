"""Server-side request batching (serving/batcher.py) against the ASGI app, and the letterbox it relies on."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sfdeploy import processing, serving
from sfdeploy.serving.server import create_app

from serving_helpers import synthetic_image


@pytest.fixture(scope="module")
def batched_onnx(artefacts, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The tiny RetinaNet exported with --batch dynamic (parity-checked)."""
    from sfdeploy.export.onnx import export_onnx

    ckpt, _ = artefacts.get("retinanet")
    return export_onnx(ckpt, tmp_path_factory.mktemp("batched") / "retinanet_b.onnx", batch="dynamic").path


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _images() -> list[bytes]:
    a, b = synthetic_image(0), synthetic_image(1)
    return [png(a), png(np.ascontiguousarray(b[:, :150])), png(np.ascontiguousarray(a[:90])), png(b[::2, ::2].copy()),
            png(synthetic_image(2)), png(synthetic_image(3))]


def _record_batches(predictor):  # type: ignore[no-untyped-def]
    sizes: list[int] = []
    infer = predictor.infer_batch
    predictor.infer_batch = lambda tensors, max_batch=8: sizes.append(len(tensors)) or infer(tensors, max_batch)
    return sizes


async def _post_all(app, bodies: list[bytes]) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as client:
        return await asyncio.gather(*[client.post("/v1/detect",
                                                  files={"image": ("a.png", b, "image/png")}) for b in bodies])


def test_concurrent_requests_batched_with_sequential_results(batched_onnx):  # type: ignore[no-untyped-def]
    predictor = serving.load(batched_onnx)
    bodies = _images()
    sequential = [predictor.predict(processing.load_image(b)) for b in bodies]
    sizes = _record_batches(predictor)
    app = create_app({"b": predictor}, batch_window_ms=300, max_batch=4)
    responses = asyncio.run(_post_all(app, bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert max(sizes) > 1 and max(sizes) <= 4 and sum(sizes) == len(bodies)  # batched, never over max_batch
    assert app.state.metrics.registry.get_sample_value("sfdeploy_batch_size_count", {"model": "b"}) == len(sizes)
    assert app.state.metrics.registry.get_sample_value("sfdeploy_batch_size_sum", {"model": "b"}) == len(bodies)
    for r, want in zip(responses, sequential):
        got = r.json()
        assert got["image_size"] == list(want.image_size)
        assert [d["label"] for d in got["detections"]] == [int(k) for k in want.labels]
        np.testing.assert_allclose([d["box"] for d in got["detections"]] or np.zeros((0, 4)), want.boxes, atol=0.02)
        np.testing.assert_allclose([d["score"] for d in got["detections"]], want.scores, atol=1e-5)


def test_bad_image_in_a_batch_gets_its_4xx_others_succeed(batched_onnx):  # type: ignore[no-untyped-def]
    predictor = serving.load(batched_onnx)
    sizes = _record_batches(predictor)
    bodies = _images()[:3] + [b"not an image at all"] + [png(np.zeros((1, 1, 3), np.uint8))[:20]]
    app = create_app({"b": predictor}, batch_window_ms=300, max_batch=8)
    responses = asyncio.run(_post_all(app, bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 400]
    assert all(len(r.json()["detections"]) > 0 for r in responses[:3])
    assert "image" in responses[3].json()["error"] and sizes == [3]


def test_inference_failure_stays_with_its_image(batched_onnx):  # type: ignore[no-untyped-def]
    """A batch that fails is rerun image by image: the image that breaks the backend gets 500, the others 200."""
    predictor = serving.load(batched_onnx)
    real = predictor._infer_batch

    def fragile(tensor):  # type: ignore[no-untyped-def]
        if (tensor.reshape(len(tensor), -1).max(1) == 0).any():  # a black image "crashes" the backend
            raise RuntimeError("backend bug")
        return real(tensor)

    predictor._infer_batch = fragile
    sizes = _record_batches(predictor)
    bodies = _images()[:3] + [png(np.zeros((64, 64, 3), np.uint8))]
    app = create_app({"b": predictor}, batch_window_ms=300, max_batch=8)
    responses = asyncio.run(_post_all(app, bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 500]
    assert responses[3].json() == {"error": "inference failed on a 64x64 image (RuntimeError)"}
    assert sizes[0] == 4 and sorted(sizes[1:]) == [1, 1, 1, 1]


@pytest.mark.parametrize("kind", ["batched", "batch-1"])
def test_full_queue_gets_503_with_retry_after(batched_onnx, artefacts, kind):  # type: ignore[no-untyped-def]
    predictor = serving.load(batched_onnx if kind == "batched" else artefacts.get("retinanet")[1])
    gate, inside = threading.Event(), threading.Event()
    method = "_infer_batch" if predictor.batched else "_infer"
    infer = getattr(predictor, method)

    def blocked(tensor):  # type: ignore[no-untyped-def]
        inside.set()
        gate.wait(30)
        return infer(tensor)

    setattr(predictor, method, blocked)
    app = create_app({"m": predictor}, max_queue=2, batch_window_ms=1, max_batch=4)
    body = _images()[0]

    async def scenario():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c:
            first = [asyncio.create_task(c.post("/v1/detect", files={"image": ("a.png", body, "image/png")}))
                     for _ in range(2)]
            while not inside.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            full = await c.post("/v1/detect", files={"image": ("a.png", body, "image/png")})
            metrics = (await c.get("/metrics")).text
            gate.set()
            return full, await asyncio.gather(*first), metrics

    full, first, metrics = asyncio.run(scenario())
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert full.json()["error"] == "model 'm' has 2 requests queued (limit 2); retry in 1 s"
    assert [r.status_code for r in first] == [200, 200]
    assert 'sfdeploy_queue_depth{model="m"} 2.0' in metrics  # the two waiting; the refused one is not counted
    assert "503" in app.openapi()["paths"]["/v1/detect"]["post"]["responses"]  # documented for clients


def test_batch_1_graph_not_batched(artefacts):  # type: ignore[no-untyped-def]
    """A batch-1 graph keeps today's path: one image per inference, results as before."""
    predictor = serving.load(artefacts.get("retinanet")[1])
    assert not predictor.batched
    sizes = _record_batches(predictor)
    app = create_app({"m": predictor}, batch_window_ms=300, max_batch=8)
    assert not app.state.batchers
    responses = asyncio.run(_post_all(app, _images()[:3]))
    assert [r.status_code for r in responses] == [200] * 3 and sizes == []


def test_serve_cli_batching_flags_errors(capsys):  # type: ignore[no-untyped-def]
    from sfdeploy.cli import main

    for flags, needle in ((["--max-batch", "0"], "--max-batch must be >= 1"),
                          (["--batch-window-ms", "-1"], "--batch-window-ms must be in 0..1000"),
                          (["--max-queue", "0"], "--max-queue must be >= 1")):
        assert main(["serve", "missing.onnx", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 900), w=st.integers(1, 900), side=st.sampled_from([64, 128, 320]))
def test_letterbox_fits_any_image(h, w, side):  # type: ignore[no-untyped-def]
    """Any image size: the canvas shape, content top-left inside it, black padding, a scale that maps back."""
    canvas = processing.letterbox_canvas(side, side)
    image = np.full((h, w, 3), 255, np.uint8)
    p = processing.letterbox(image, canvas, (side, side))
    ih, iw = p.input_size
    assert p.tensor.shape == (1, 3, *canvas) and 1 <= ih <= canvas[0] and 1 <= iw <= canvas[1]
    assert max(ih, iw) == side  # the working size of a min_size = max_size = side model
    assert p.tensor[0, :, :ih, :iw].min() == 1.0 and p.tensor[0, :, ih:, :].max(initial=0) == 0
    sx, sy = p.scale_xy
    assert abs(iw * sx - w) < 1e-6 * w + 1e-9 and abs(ih * sy - h) < 1e-6 * h + 1e-9


class _SlowFake:
    """A batched predictor stand-in: each inference waits until `gate` is set, answers each tensor's value."""

    batched = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[float]] = []

    def infer_batch(self, tensors, max_batch=8):  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        self.batches.append([float(t.flat[0]) for t in tensors])
        return [{"v": float(t.flat[0])} for t in tensors]


def test_cancelled_request_is_skipped_and_the_worker_keeps_serving():  # type: ignore[no-untyped-def]
    """A request cancelled while queued (client gone, timeout) must not kill the model's worker: the others in its
    batch and every later request still get their answer."""
    from sfdeploy.serving.batcher import Batcher

    fake = _SlowFake()
    b = Batcher(fake, window_ms=50, max_batch=8)
    try:
        first = b.submit(np.full((1, 3, 4, 4), 0.0, np.float32))  # the worker blocks on it: the rest queue
        time.sleep(0.2)
        gone, kept = (b.submit(np.full((1, 3, 4, 4), v, np.float32)) for v in (1.0, 2.0))
        assert gone.cancel()
        fake.gate.set()
        assert first.result(timeout=10) == {"v": 0.0}
        assert kept.result(timeout=10) == {"v": 2.0}
        assert b.submit(np.full((1, 3, 4, 4), 3.0, np.float32)).result(timeout=10) == {"v": 3.0}
        assert [1.0] not in fake.batches and all(1.0 not in batch for batch in fake.batches)  # never run
    finally:
        b.close()


def test_failing_on_batch_callback_does_not_stop_the_worker():  # type: ignore[no-untyped-def]
    from sfdeploy.serving.batcher import Batcher

    fake = _SlowFake()
    fake.gate.set()

    def broken(images: int, seconds: float) -> None:
        raise ValueError("metrics bug")

    b = Batcher(fake, window_ms=1, max_batch=4, on_batch=broken)
    try:
        for v in (1.0, 2.0):
            assert b.submit(np.full((1, 3, 4, 4), v, np.float32)).result(timeout=10) == {"v": v}
    finally:
        b.close()


def test_inference_histogram_leaves_out_the_batch_queue_wait(batched_onnx):  # type: ignore[no-untyped-def]
    """sfdeploy_inference_duration_seconds is the predictor call: a batched request that waited out a long batch
    window (and behind the worker) observes its batch's inference time, the request histogram the whole wait."""
    predictor = serving.load(batched_onnx)
    infer = predictor.infer_batch
    inferred: list[float] = []

    def timed(tensors, max_batch=8):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return infer(tensors, max_batch)
        finally:
            inferred.extend([time.perf_counter() - t0] * len(tensors))

    predictor.infer_batch = timed
    app = create_app({"b": predictor}, batch_window_ms=1000, max_batch=8)
    bodies = _images()[:3]
    assert all(r.status_code == 200 for r in asyncio.run(_post_all(app, bodies)))
    reg = app.state.metrics.registry
    assert reg.get_sample_value("sfdeploy_inference_duration_seconds_count", {"model": "b"}) == len(bodies)
    observed = reg.get_sample_value("sfdeploy_inference_duration_seconds_sum", {"model": "b"})
    assert observed == pytest.approx(sum(inferred), rel=0.05, abs=0.01)  # the inference, not the 1 s window
    assert reg.get_sample_value("sfdeploy_request_duration_seconds_sum",
                                {"route": "/v1/detect", "model": "b"}) >= 1.0  # the first one waited the window


def test_request_cancelled_in_the_batch_window_does_not_hang_the_model(batched_onnx):  # type: ignore[no-untyped-def]
    """The review's reproduction over HTTP: a client gives up while its image waits in the batch window; the next
    request to that model must still be answered (the old worker died and every later request hung)."""
    predictor = serving.load(batched_onnx)
    app = create_app({"b": predictor}, batch_window_ms=1000, max_batch=8)
    batcher = app.state.batchers["b"]
    submitted: list[object] = []
    submit = batcher.submit
    batcher.submit = lambda tensor: submitted.append(tensor) or submit(tensor)
    body = _images()[0]

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            post = lambda: client.post("/v1/detect", files={"image": ("a.png", body, "image/png")})  # noqa: E731
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(post(), 0.5)  # cancelled inside the 1 s window
            assert len(submitted) == 1  # it did reach the batcher
            await asyncio.sleep(1.0)  # the window closes: the worker meets the cancelled request
            return await asyncio.wait_for(post(), 20)

    try:
        assert asyncio.run(scenario()).status_code == 200
    finally:
        batcher.close()

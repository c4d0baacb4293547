"""The HTTP service on a real loopback port, exercised with httpx (incl. a bounded concurrent load)."""

from __future__ import annotations

import base64
import io
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sfdeploy import serving
from sfdeploy.serving.server import create_app

from serving_helpers import synthetic_image

MAX_BYTES = 2_000_000
MAX_PIXELS = 4_000_000


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(artefacts):
    import uvicorn

    models = {"sf": serving.load(artefacts.get("retinanet")[1]), "masks": serving.load(artefacts.get("mask_rcnn")[1])}
    app = create_app(models, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_health_models_openapi(server):
    assert server.get("/healthz").json() == {"status": "ok", "models": ["sf", "masks"]}
    models = server.get("/v1/models").json()
    assert models["default"] == "sf"
    first = models["models"][0]
    assert first["name"] == "sf" and first["backend"] == "onnxruntime" and first["detector"] == "retinanet"
    assert first["method"] == "sampling_free" and first["class_names"][0] == "circle"
    assert first["metrics"]["bbox"]["AP"] == pytest.approx(0.0123) and "score_thresh" in first
    schema = server.get("/openapi.json").json()
    assert "/v1/detect" in schema["paths"]
    content = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


def test_detect_multipart_and_base64(server):
    data = jpeg_bytes(synthetic_image(0)[:, :200])
    r = server.post("/v1/detect", files={"image": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "sf" and body["image_size"] == [256, 200] and body["detections"]
    det = body["detections"][0]
    assert set(det) == {"box", "score", "label", "class_name", "category_id"}
    r2 = server.post("/v1/detect", json={"image_base64": base64.b64encode(data).decode()})
    assert r2.status_code == 200 and r2.json()["detections"] == body["detections"]
    r3 = server.post("/v1/detect", params={"model": "masks", "masks": "true", "max_detections": 3,
                                           "threshold": 0.0}, files={"image": ("a.jpg", data, "image/jpeg")})
    assert r3.status_code == 200, r3.text
    dets = r3.json()["detections"]
    assert len(dets) == 3 and dets[0]["mask"]["size"] == [256, 200] and isinstance(dets[0]["mask"]["counts"], str)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")  # 25 Mpx, a few KB
    return buf.getvalue()


@pytest.mark.parametrize("case,status", [
    ("text", 400), ("truncated", 400), ("empty", 400), ("bomb", 413), ("too_many_bytes", 413),
    ("wrong_field", 422), ("text_field", 422), ("json_wrong_key", 422), ("bad_base64", 400), ("bad_json", 400),
    ("no_content_type", 415), ("unknown_model", 404), ("bad_threshold", 422),
])
def test_bad_input_is_4xx_json(server, case, status):
    good = jpeg_bytes(synthetic_image(0))
    requests = {
        "text": dict(files={"image": ("a.jpg", b"this is not an image", "image/jpeg")}),
        "truncated": dict(files={"image": ("a.jpg", good[: len(good) // 2], "image/jpeg")}),
        "empty": dict(files={"image": ("a.jpg", b"", "image/jpeg")}),
        "bomb": dict(files={"image": ("a.png", _bomb(), "image/png")}),
        "too_many_bytes": dict(files={"image": ("a.jpg", b"\xff" * (MAX_BYTES + 100_000), "image/jpeg")}),
        "wrong_field": dict(files={"file": ("a.jpg", good, "image/jpeg")}),
        "text_field": dict(data={"image": "abc"}, files={"other": ("x", b"1")}),
        "json_wrong_key": dict(json={"image": base64.b64encode(good).decode()}),
        "bad_base64": dict(json={"image_base64": "!!!not base64!!!"}),
        "bad_json": dict(content=b"{not json", headers={"content-type": "application/json"}),
        "no_content_type": dict(content=good),
        "unknown_model": dict(params={"model": "nope"}, files={"image": ("a.jpg", good, "image/jpeg")}),
        "bad_threshold": dict(params={"threshold": "2.5"}, files={"image": ("a.jpg", good, "image/jpeg")}),
    }
    r = server.post("/v1/detect", **requests[case])
    assert r.status_code == status, (case, r.status_code, r.text)
    assert isinstance(r.json().get("error"), str) and r.json()["error"]
    assert server.get("/healthz").status_code == 200  # the worker survived


def test_concurrent_load(server, record_property):
    images = [jpeg_bytes(synthetic_image(i % 4)) for i in range(4)]
    for data in images * 3:  # warm-up (allocator pools, thread pool)
        server.post("/v1/detect", files={"image": ("a.jpg", data, "image/jpeg")})
    rss_before = rss_mb()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        t0 = time.perf_counter()
        try:
            r = server.post("/v1/detect", files={"image": ("a.jpg", images[k % 4], "image/jpeg")})
            ok = r.status_code == 200 and "detections" in r.json()
            err = None if ok else f"{r.status_code} {r.text[:100]}"
        except Exception as exc:  # noqa: BLE001
            err = repr(exc)
        with lock:
            latencies.append(time.perf_counter() - t0)
            if err:
                errors.append(err)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(200)))
    wall = time.perf_counter() - t0
    growth = rss_mb() - rss_before
    rps = 200 / wall
    p90 = float(np.percentile(latencies, 90)) * 1000
    print(f"\nHTTP load: 200 requests, 8 workers: {rps:.1f} req/s, median {statistics.median(latencies) * 1000:.1f} ms,"
          f" p90 {p90:.1f} ms, RSS growth {growth:.1f} MB")
    record_property("requests_per_s", rps)
    record_property("p90_ms", p90)
    assert not errors, errors[:3]
    assert len(latencies) == 200
    assert growth < 150, f"RSS grew by {growth:.0f} MB"

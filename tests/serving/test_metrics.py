"""/metrics (Prometheus text format, parsed with prometheus-client's own parser), /readyz, /healthz."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sfdeploy import serving
from sfdeploy.serving.server import create_app

from serving_helpers import synthetic_image

pytest.importorskip("prometheus_client")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(0)).save(buf, format="PNG")
    return buf.getvalue()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _get(samples, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def client(artefacts):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    app = create_app({"sf": serving.load(artefacts.get("retinanet")[1])})
    with TestClient(app) as c:
        yield c


def test_metrics_count_requests_errors_and_inference(client):  # type: ignore[no-untyped-def]
    before = _samples(client.get("/metrics").text)
    r = client.post("/v1/detect", files={"image": ("a.png", _png(), "image/png")})
    assert r.status_code == 200
    assert client.post("/v1/detect", files={"image": ("a.png", b"not an image", "image/png")}).status_code == 400
    assert client.post("/v1/detect?model=nope", files={"image": ("a.png", _png(), "image/png")}).status_code == 404
    assert client.get("/no/such/path").status_code == 404
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    after = _samples(resp.text)

    def delta(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert delta("sfdeploy_requests_total", route="/v1/detect", method="POST", status="200") == 1
    assert delta("sfdeploy_requests_total", route="/v1/detect", method="POST", status="400") == 1
    assert delta("sfdeploy_request_errors_total", route="/v1/detect", status="404") == 1
    assert delta("sfdeploy_request_errors_total", route="other", status="404") == 1  # unknown paths: one label
    # the bad image never reached the model: one inference observed, two requests of model "sf" timed
    assert delta("sfdeploy_inference_duration_seconds_count", model="sf") == 1
    assert delta("sfdeploy_inference_duration_seconds_sum", model="sf") > 0
    assert delta("sfdeploy_request_duration_seconds_count", route="/v1/detect", model="sf") == 2
    assert delta("sfdeploy_request_duration_seconds_count", route="/v1/detect", model="unknown") == 1
    assert _get(after, "sfdeploy_queue_depth", model="sf") == 0  # nothing in flight any more
    assert _get(after, "sfdeploy_models_loaded") == 1


def test_queue_depth_counts_requests_in_flight(artefacts):  # type: ignore[no-untyped-def]
    """While a detect request is inside the app the gauge reads 1, and 0 after it (checked from inside the model)."""
    from fastapi.testclient import TestClient

    pred = serving.load(artefacts.get("retinanet")[1])
    app = create_app({"sf": pred})
    seen: list[float] = []
    real = pred.predict_image

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(app.state.metrics.queue.labels(model="sf")._value.get())
        return real(*args, **kwargs)

    pred.predict_image = spy  # type: ignore[method-assign]
    with TestClient(app) as c:
        assert c.post("/v1/detect", files={"image": ("a.png", _png(), "image/png")}).status_code == 200
        assert seen == [1.0] and app.state.metrics.queue.labels(model="sf")._value.get() == 0


def test_healthz_and_readyz(artefacts):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    app = create_app({"sf": serving.load(artefacts.get("retinanet")[1])})
    with TestClient(app) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready", "models": ["sf"]}
    # shutdown (the lifespan's end) makes it not ready: a draining server gets no new traffic
    assert app.state.metrics.ready is False
    r = TestClient(app).get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not ready"


def test_two_apps_have_separate_registries(artefacts):  # type: ignore[no-untyped-def]
    pred = serving.load(artefacts.get("retinanet")[1])
    a, b = create_app({"sf": pred}), create_app({"sf": pred})
    assert a.state.metrics.registry is not b.state.metrics.registry
    assert np.isclose(a.state.metrics.queue.labels(model="sf")._value.get(), 0)


def test_openapi_lists_readyz(client):  # type: ignore[no-untyped-def]
    paths = client.get("/openapi.json").json()["paths"]
    assert "/readyz" in paths and "/v1/detect" in paths and "/metrics" not in paths

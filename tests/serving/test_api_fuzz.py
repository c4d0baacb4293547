"""API fuzzing from the service's own OpenAPI schema (schemathesis, in process against the ASGI app, offline):
no request the schema allows, or nearly allows, gets a 5xx, and every answer matches the documented status
codes, content types and response schemas. Real images are checked against the schema too (random bytes rarely
decode)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)
from starlette.testclient import TestClient

from sfdeploy.serving.server import create_app

from serving_helpers import FakePredictor

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
APP = create_app({"fake": FakePredictor(masks=True, size=64), "boxes": FakePredictor(masks=False, size=64)},
                 max_bytes=10_000_000, max_pixels=2_000_000)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_fuzz(case):
    case.call_and_validate(checks=CHECKS)


def test_schema_documents_the_real_shapes():
    doc = TestClient(APP).get("/openapi.json").json()
    detect = doc["paths"]["/v1/detect"]["post"]["responses"]
    assert detect["200"]["content"]["application/json"]["schema"] != {}
    for code in ("400", "404", "408", "413", "415", "422", "500"):
        ref = detect[code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def _png(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@settings(max_examples=25, deadline=None)
@given(w=st.integers(1, 1500), h=st.integers(1, 1500), seed=st.integers(0, 999), masks=st.booleans(),
       model=st.sampled_from(["fake", "boxes"]), as_json=st.booleans(),
       threshold=st.one_of(st.none(), st.floats(0, 1)))
def test_real_images_answer_the_documented_200(w, h, seed, masks, model, as_json, threshold):
    data = _png(w, h, seed)
    operation = schema["/v1/detect"]["POST"]
    query = {"masks": str(masks).lower(), "model": model} | ({} if threshold is None else {"threshold": threshold})
    if as_json:
        case = operation.Case(query=query, body={"image_base64": base64.encodebytes(data).decode()},
                              media_type="application/json")
    else:
        case = operation.Case(query=query, body={"image": data}, media_type="multipart/form-data")
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_size"] == [h, w] and body["model"] == model
    assert all(("mask" in d) == (masks and model == "fake") for d in body["detections"])

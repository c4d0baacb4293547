"""The HTTP API's documented shapes (pydantic), so /openapi.json says what the service really answers.

The fuzz tests (tests/serving/test_api_fuzz.py) check every response against this schema: change a response
here and in serving/server.py together.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one line saying what was wrong with the request."""

    error: str


class MaskRLE(BaseModel):
    """COCO compressed RLE of one instance mask over the whole image."""

    size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    counts: str


class Detection(BaseModel):
    box: list[float] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in image pixels")
    score: float
    label: int = Field(description="1..C")
    category_id: int | None = Field(None, description="the training annotations' own category id of the label")
    class_name: str
    mask: MaskRLE | None = Field(None, description="only with masks=true on a Mask R-CNN model")


class DetectResponse(BaseModel):
    image_size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    detections: list[Detection]
    model: str
    time_ms: float


class HealthResponse(BaseModel):
    status: str
    models: list[str]


class ModelInfo(BaseModel):
    name: str
    detector: str
    method: str
    backbone: str
    backend: str
    device: str
    source: str = Field(description="artefact file name (no server path)")
    class_names: list[str]
    category_ids: list[int] | None = Field(None, description="the data's category id per label (None: the labels)")
    score_thresh: float
    nms_thresh: float
    detections_per_img: int
    has_masks: bool
    min_size: int
    max_size: int
    metrics: dict[str, Any]
    step: int | None = None
    exporter: str | None = None
    version: str | None = None
    precision: str | None = Field(None, description="openvino backend: f32 | bf16 | int8")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries documenting ErrorBody for `codes`."""
    what = {400: "not an image, truncated, empty, bad base64/JSON or multipart (e.g. two 'image' parts)",
            404: "unknown model", 408: "request body not received in time", 413: "too many bytes or pixels",
            415: "unsupported content type", 422: "wrong field names or query values",
            500: "the backend failed on a valid image (logged)",
            503: "too many requests queued for the model (--max-queue); retry after Retry-After seconds"}
    return {code: {"model": ErrorBody, "description": what.get(code, "error")} for code in codes}

"""HTTP service (FastAPI + uvicorn): /healthz, /readyz, /metrics, /v1/models, /v1/detect.

Every bad input is answered with a 4xx JSON body {"error": "..."}: non-image bytes, truncated files, empty
uploads, decompression bombs and over-size images (413), over-size bodies (413), wrong field names or content
types (422/415), unknown model (404), a body not received within `body_timeout` (408), two 'image' parts (400).
Decoding and inference run in worker threads (never on the event loop); a per-model semaphore bounds concurrent
inferences; batched graphs collect concurrent requests into one inference (serving/batcher.py). At most `max_queue`
detect requests per model wait or run; more get 503 with Retry-After. The documented response shapes live in
serving/api_schema.py; limits and timeouts in docs/SERVING.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sfdeploy import limits, processing

from .api_schema import DetectResponse, HealthResponse, ModelsResponse, error_responses
from .batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_MS, Batcher
from .predictor import Predictor

DEFAULT_MAX_BYTES = limits.MAX_IMAGE_BYTES  # shared with the demo (sfdeploy.limits)
DEFAULT_MAX_PIXELS = limits.MAX_IMAGE_PIXELS
DEFAULT_CONCURRENCY = 1  # inferences in flight per model (each already uses all cores)
DEFAULT_BODY_TIMEOUT = 30.0  # s to receive a whole request body (slow uploads get 408)
DEFAULT_MAX_QUEUE = 64  # detect requests per model waiting or running; more get 503
RETRY_AFTER_S = 1

log = logging.getLogger("sfdeploy.serving")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_DETECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string", "format": "binary"}}},
            },
            "application/json": {
                "schema": {"type": "object", "required": ["image_base64"],
                           "properties": {"image_base64": {"type": "string",
                                                           "description": "base64 of the encoded image file"}}},
            },
        },
    },
}


def create_app(models: dict[str, Predictor], max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, concurrency: int = DEFAULT_CONCURRENCY,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, batch_window_ms: float = DEFAULT_WINDOW_MS,
               max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = DEFAULT_MAX_QUEUE) -> FastAPI:
    """An ASGI app serving `models` (name -> Predictor; the first is the default). Batched graphs batch
    concurrent requests (up to `max_batch` images within `batch_window_ms`); `max_queue` bounds each model's queue."""
    if not models:
        raise ValueError("create_app needs at least one model")
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    from sfdeploy import __version__

    app = FastAPI(title="sfdeploy detection service", version=__version__,
                  description="Sampling-Free object detectors over PyTorch / ONNX Runtime / TensorRT.")
    default_model = next(iter(models))
    limiters: dict[str, anyio.CapacityLimiter] = {}

    def limiter(name: str) -> anyio.CapacityLimiter:
        if name not in limiters:  # created lazily: needs the running event loop
            limiters[name] = anyio.CapacityLimiter(max(1, concurrency))
        return limiters[name]

    batchers = {name: Batcher(p, window_ms=batch_window_ms, max_batch=max_batch,
                              on_batch=lambda n, s, name=name: app.state.metrics.observe_batch(name, n, s))
                for name, p in models.items() if p.batched and max_batch > 1}
    pending = dict.fromkeys(models, 0)  # detect requests per model past body reading (event-loop only)
    app.state.batchers = batchers

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(models)}

    @app.get("/v1/models", response_model=ModelsResponse)
    async def list_models() -> dict[str, Any]:
        return {"default": default_model,
                "models": [{"name": name, **p.info()} for name, p in models.items()]}

    @app.post("/v1/detect", openapi_extra=_DETECT_BODY, response_model=DetectResponse,
              response_model_exclude_none=True,
              responses=error_responses(400, 404, 408, 413, 415, 422, 500, 503),
              summary="Detect objects in one image (multipart field 'image' or JSON 'image_base64')")
    async def detect(
        request: Request,
        threshold: float | None = Query(None, ge=0.0, le=1.0, description="score threshold (default: model's)"),
        max_detections: int | None = Query(None, ge=0, le=10000),
        masks: bool = Query(False, description="include COCO RLE instance masks (Mask R-CNN)"),
        model: str | None = Query(None, description="model name (default: the first loaded)"),
    ) -> JSONResponse:
        name = model or default_model
        if name not in models:
            raise ApiError(404, f"unknown model {name!r}; loaded: {', '.join(models)}")
        predictor = models[name]
        data = await _read_image_bytes(request, max_bytes, body_timeout)
        if pending[name] >= max_queue:
            raise ApiError(503, f"model {name!r} has {pending[name]} requests queued (limit {max_queue}); "
                                f"retry in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        pending[name] += 1
        params = {"score_thresh": threshold, "max_detections": max_detections, "masks": masks}
        try:
            t0 = time.perf_counter()
            if name in batchers:
                body = await detect_batched(name, data, params, t0)
            else:
                body = await anyio.to_thread.run_sync(lambda: detect_one(name, data, params, t0),
                                                      limiter=limiter(name))
        finally:
            pending[name] -= 1
        return JSONResponse(body)

    def decode(data: bytes) -> Any:
        try:
            return processing.load_image(data, max_pixels=max_pixels, name="image")
        except processing.ImageTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except processing.InvalidImageError as exc:
            raise ApiError(400, str(exc)) from None

    def inference_failed(name: str, image: Any, exc: Exception) -> ApiError:
        """A backend bug: logged, answered with a clean JSON 500 that keeps the connection usable."""
        log.error("model %s failed on a %dx%d image", name, image.shape[1], image.shape[0], exc_info=exc)
        return ApiError(500, f"inference failed on a {image.shape[1]}x{image.shape[0]} image "
                             f"({type(exc).__name__})")

    def answer(name: str, dets: Any, masks: bool, t0: float) -> dict[str, Any]:
        body = dets.to_dict(masks=masks)
        body["model"] = name
        body["time_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        return body

    def detect_one(name: str, data: bytes, params: dict[str, Any], t0: float) -> dict[str, Any]:
        image = decode(data)
        try:
            t_infer = time.perf_counter()
            dets = models[name].predict_image(image, **params)
            app.state.metrics.observe_inference(name, time.perf_counter() - t_infer)
            return answer(name, dets, params["masks"], t0)
        except Exception as exc:
            raise inference_failed(name, image, exc) from None

    async def detect_batched(name: str, data: bytes, params: dict[str, Any], t0: float) -> dict[str, Any]:
        """Decode and letterbox in a worker thread, wait for the batch on the event loop, finish in a thread."""
        predictor = models[name]

        def prepare() -> tuple[Any, Any]:
            image = decode(data)
            return image, predictor.prepare_image(image)

        image, prepared = await anyio.to_thread.run_sync(prepare)
        try:  # the inference histogram is fed by the batcher's on_batch (inference alone, not the queue wait)
            raw = await asyncio.wrap_future(batchers[name].submit(prepared.tensor))
        except Exception as exc:
            raise inference_failed(name, image, exc) from None

        def finish() -> dict[str, Any]:
            try:
                return answer(name, predictor.finish(raw, prepared, **params), params["masks"], t0)
            except Exception as exc:
                raise inference_failed(name, image, exc) from None

        return await anyio.to_thread.run_sync(finish)

    def close_batchers() -> None:
        for b in batchers.values():
            b.close()

    app.router.on_shutdown.append(close_batchers)

    from .metrics import finalize_routes, install  # /metrics, /readyz (serving/metrics.py)

    finalize_routes(app, install(app, models, default_model))
    return app


async def _read_body(request: Request, max_bytes: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {max_bytes} bytes")
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
    chunks: list[bytes] = []
    total = 0
    with anyio.move_on_after(timeout) as scope:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise ApiError(408, f"request body not received within {timeout:g} s")
    body = b"".join(chunks)
    request._body = body  # lets request.form() / request.json() reuse it
    return body


async def _read_image_bytes(request: Request, max_bytes: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # multipart overhead (boundaries, headers) is small; allow it on top of the image limit
    body = await _read_body(request, max_bytes + 64 * 1024, timeout)
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=4, max_fields=16)
        except Exception as exc:  # malformed multipart
            raise ApiError(400, f"malformed multipart body: {exc}") from None
        try:
            parts = form.getlist("image")
            if len(parts) > 1:
                raise ApiError(400, f"multipart body has {len(parts)} 'image' parts; send exactly one")
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                fields = sorted(form.keys())
                what = "is a text field, not a file" if isinstance(upload, str) else "is missing"
                raise ApiError(422, f"multipart field 'image' {what}; got fields {fields}")
            data = await upload.read()
        finally:
            await form.close()
    elif ctype == "application/json":
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "body is not valid JSON") from None
        if not isinstance(payload, dict) or "image_base64" not in payload:
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise ApiError(422, f"JSON body needs the key 'image_base64'; got {keys}")
        encoded = payload["image_base64"]
        if not isinstance(encoded, str):
            raise ApiError(422, "'image_base64' must be a string")
        if "," in encoded[:100] and encoded.startswith("data:"):
            encoded = encoded.split(",", 1)[1]  # data URL
        encoded = "".join(encoded.split())  # GNU base64 wraps at 76 columns; MIME allows CR LF
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "'image_base64' is not valid base64") from None
    else:
        raise ApiError(415, f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with "
                            "a file field 'image', or application/json with 'image_base64'")
    if len(data) > max_bytes:
        raise ApiError(413, f"image of {len(data)} bytes is over the limit of {max_bytes} bytes")
    if not data:
        raise ApiError(400, "empty image (0 bytes)")
    return data


def load_models(artefacts: list[str], names: list[str] | None = None, backend: str = "auto",
                device: str | None = None, **kwargs: Any) -> dict[str, Predictor]:
    """Artefact paths -> {name: Predictor}; names default to the file stems (made unique)."""
    from pathlib import Path

    from sfdeploy.errors import UserError

    from . import load

    names = list(names or [])
    if len(names) > len(artefacts):
        raise UserError(f"{len(names)} --name values for {len(artefacts)} artefacts")
    out: dict[str, Predictor] = {}
    for i, path in enumerate(artefacts):
        name = names[i] if i < len(names) else Path(path).stem
        base, k = name, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out[name] = load(path, backend=backend, device=device, **kwargs)
    return out


def serve(artefacts: list[str], host: str = "127.0.0.1", port: int = 8000, names: list[str] | None = None,
          backend: str = "auto", device: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
          max_pixels: int = DEFAULT_MAX_PIXELS, log_level: str = "info",
          body_timeout: float = DEFAULT_BODY_TIMEOUT, header_timeout: float | None = None,
          keep_alive: int | None = None, **batching: Any) -> None:
    """Load the artefacts and run the service with uvicorn until interrupted (timeouts: serving/http_timeouts.py;
    `batching`: create_app's batch_window_ms, max_batch, max_queue)."""
    import uvicorn

    from .http_timeouts import DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEP_ALIVE, uvicorn_config

    models = load_models(artefacts, names, backend=backend, device=device)
    for p in models.values():
        p.warmup(size=min(p.config.max_size, 320))
    app = create_app(models, max_bytes=max_bytes, max_pixels=max_pixels, body_timeout=body_timeout, **batching)
    config = uvicorn_config(app, host=host, port=port, log_level=log_level,
                            header_timeout=DEFAULT_HEADER_TIMEOUT if header_timeout is None else header_timeout,
                            keep_alive=DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive)
    uvicorn.Server(config).run()

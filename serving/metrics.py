"""Service metrics in Prometheus format (prometheus-client) and the readiness probe, kept out of server.py.

`install(app, models, default_model)` adds:
- `GET /metrics`: `sfdeploy_requests_total{route,method,status}`, `sfdeploy_request_errors_total{route,status}`
  (status >= 400), `sfdeploy_request_duration_seconds{route,model}` (histogram; model only on /v1/detect),
  `sfdeploy_inference_duration_seconds{model}` (histogram of the predictor call alone, fed by `observe_inference`;
  a batched request observes its batch's inference, never its wait in the batcher's queue or window),
  `sfdeploy_queue_depth{model}` (detect requests of that model waiting or running), `sfdeploy_models_loaded`,
  `sfdeploy_batch_size{model}` (histogram of images per inference of request batching, serving/batcher.py).
- `GET /readyz`: 200 while every model is loaded (create_app only receives loaded, warmed predictors), 503 once
  shutdown has begun (`/healthz`, liveness, stays in server.py).
Each app gets its own CollectorRegistry (several apps in one process, as in the tests, do not collide). Route and
model labels are closed sets (known routes / loaded models, else "other" / "unknown"): a client cannot grow the
label space.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds; CPU detector inference is 20 ms .. several s
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DETECT_ROUTE = "/v1/detect"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics:
    def __init__(self, models: list[str], default_model: str) -> None:
        self.registry = CollectorRegistry()
        self.models = set(models)
        self.default_model = default_model
        self.routes: set[str] = set()
        self.ready = True  # create_app receives loaded models: ready until shutdown starts
        r = self.registry
        self.requests = Counter("sfdeploy_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.errors = Counter("sfdeploy_request_errors", "HTTP responses with status >= 400", ["route", "status"],
                              registry=r)
        self.latency = Histogram("sfdeploy_request_duration_seconds", "HTTP request latency", ["route", "model"],
                                 buckets=BUCKETS, registry=r)
        self.inference = Histogram("sfdeploy_inference_duration_seconds", "predictor call (inference) time",
                                   ["model"], buckets=BUCKETS, registry=r)
        self.queue = Gauge("sfdeploy_queue_depth", "detect requests waiting or running", ["model"], registry=r)
        self.batch = Histogram("sfdeploy_batch_size", "images per batched inference (request batching)", ["model"],
                               buckets=BATCH_BUCKETS, registry=r)
        loaded = Gauge("sfdeploy_models_loaded", "models loaded", registry=r)
        loaded.set(len(models))
        for m in models:  # series exist from the start (a scrape sees 0, not nothing)
            self.queue.labels(model=m)
            self.inference.labels(model=m)

    def observe_inference(self, model: str, seconds: float) -> None:
        self.inference.labels(model=model if model in self.models else "unknown").observe(seconds)

    def observe_batch(self, model: str, images: int, seconds: float) -> None:
        """One batched inference of `images` requests that took `seconds`: each request's inference time is the
        batch's (the time it waited for the batch to fill or for the worker is queueing, not inference)."""
        label = model if model in self.models else "unknown"
        self.batch.labels(model=label).observe(images)
        inference = self.inference.labels(model=label)
        for _ in range(images):
            inference.observe(seconds)

    def model_of(self, scope: dict[str, Any]) -> str:
        if scope["path"] != DETECT_ROUTE:
            return ""
        asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("model", [""])[-1]
        name = asked or self.default_model
        return name if name in self.models else "unknown"

    def route_of(self, scope: dict[str, Any]) -> str:
        return scope["path"] if scope["path"] in self.routes else "other"


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response (errors included) and times it."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        route, model = m.route_of(scope), m.model_of(scope)
        status = 500  # an exception that escapes every handler becomes a 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        queue = m.queue.labels(model=model) if model else None
        if queue is not None:
            queue.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            if queue is not None:
                queue.dec()
            m.latency.labels(route=route, model=model).observe(time.perf_counter() - t0)
            m.requests.labels(route=route, method=scope.get("method", ""), status=str(status)).inc()
            if status >= 400:
                m.errors.labels(route=route, status=str(status)).inc()


def install(app: Any, models: dict[str, Any], default_model: str) -> ServiceMetrics:
    """Add /metrics, /readyz and the middleware to a FastAPI `app`; returns the metrics (app.state.metrics)."""
    metrics = ServiceMetrics(list(models), default_model)
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", responses={503: {"description": "not ready: no model loaded, or shutting down",
                                         "content": {"application/json": {}}}})
    async def readyz() -> JSONResponse:
        ok = metrics.ready and bool(models)
        return JSONResponse({"status": "ready" if ok else "not ready", "models": list(models)},
                            status_code=200 if ok else 503)

    def _not_ready() -> None:  # draining: a load balancer stops sending before the process exits
        metrics.ready = False

    def _ready() -> None:  # (re)started: an app object served again after a shutdown is ready again
        metrics.ready = True

    app.router.on_startup.append(_ready)
    app.router.on_shutdown.append(_not_ready)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics


def finalize_routes(app: Any, metrics: ServiceMetrics) -> None:
    """Label the app's own routes by their path (call after every route is added)."""
    metrics.routes = {getattr(r, "path", "") for r in app.routes} - {""}
